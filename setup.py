"""Builds selfguard's native guard, an LD_PRELOAD library (selfguard/_preload/preload.c), with the package.

Everything else is declared in setup.cfg. The library is optional: where no C
compiler is found the build warns and the package installs without it, and
`selfguard run --native` then says what is missing. It is not a Python extension
module: it uses no Python symbol, and is installed under a plain name
(selfguard/_preload/libselfguard_preload.so) that any process can preload.
"""

import os

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

PRELOAD = "selfguard._preload.libselfguard_preload"


class BuildPreload(build_ext):  # type: ignore[misc]
    def get_ext_filename(self, fullname: str) -> str:
        # Called with the dotted name, or (by get_ext_fullpath) with its last part only.
        if fullname in (PRELOAD, PRELOAD.rpartition(".")[2]):
            return os.path.join(*fullname.split(".")) + ".so"  # no ABI tag: no Python inside
        return str(super().get_ext_filename(fullname))

    def get_export_symbols(self, ext: Extension) -> list:
        return [] if ext.name == PRELOAD else list(super().get_export_symbols(ext))  # no PyInit_ function


setup(
    ext_modules=[
        Extension(
            PRELOAD,
            sources=["selfguard/_preload/preload.c"],
            extra_compile_args=["-std=gnu11", "-O2", "-fvisibility=hidden", "-Wall"],
            extra_link_args=["-pthread"],
            libraries=["dl"],  # dlsym: in libc itself since glibc 2.34, in libdl before
            optional=True,
        )
    ],
    cmdclass={"build_ext": BuildPreload},
)
