"""Builds selfguard's native guard, an LD_PRELOAD library (selfguard/_preload/preload.c), with the package.

Everything else is declared in setup.cfg. The library is optional: where no C
compiler is found the build warns and the package installs without it, and
`selfguard run --native` then says what is missing. SELFGUARD_REQUIRE_NATIVE=1 in
the build's environment makes that a build error instead (pip shows a build's
output only when it fails). It is not a Python extension
module: it uses no Python symbol, and is installed under a plain name
(selfguard/_preload/libselfguard_preload.so) that any process can preload.

So the wheel fits every CPython: `python -m build` tags it py3-none-PLATFORM, the
platform read from the library it carries (its machine, and the newest glibc
symbol version it needs: manylinux_2_17_x86_64 here, which auditwheel confirms in
.ci/run), or py3-none-any when no library was built (a wheel with nothing native
in it). Cross-building works the same way: CC=aarch64-linux-gnu-gcc
LDSHARED='aarch64-linux-gnu-gcc -shared' python -m build --wheel.
"""

import os
import re

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

try:
    from setuptools.command.bdist_wheel import bdist_wheel  # setuptools >= 70.1
except ImportError:  # older setuptools: the wheel package's (pyproject.toml requires it)
    try:
        from wheel.bdist_wheel import bdist_wheel
    except ImportError:  # `setup.py build_ext` with neither: no wheel to tag
        bdist_wheel = None

PRELOAD = "selfguard._preload.libselfguard_preload"
COMPAT = "selfguard/_preload/glibc_compat.h"
# Where a wheel built without the library says why; selfguard run --native reads it.
NOT_BUILT = "selfguard/_preload/not-built.txt"
# glibc before 2.34 has dlsym in libdl.so.2; glibc_compat.h binds the old version of it,
# so libdl.so.2 must be a dependency (a stub on newer glibc). Not there (musl): -ldl.
OLD_LIBDL = ["-Wl,--no-as-needed", "-l:libdl.so.2"]
# manylinux's oldest glibc on aarch64, and the oldest x86_64 glibc with clock_gettime in libc.
GLIBC_FLOOR = (2, 17)
MACHINES = {62: "x86_64", 183: "aarch64"}  # ELF e_machine


class BuildPreload(build_ext):  # type: ignore[misc]
    def get_ext_filename(self, fullname: str) -> str:
        # Called with the dotted name, or (by get_ext_fullpath) with its last part only.
        if fullname in (PRELOAD, PRELOAD.rpartition(".")[2]):
            return os.path.join(*fullname.split(".")) + ".so"  # no ABI tag: no Python inside
        return str(super().get_ext_filename(fullname))

    def get_export_symbols(self, ext: Extension) -> list:
        return [] if ext.name == PRELOAD else list(super().get_export_symbols(ext))  # no PyInit_ function

    def build_extension(self, ext: Extension) -> None:
        if ext.name != PRELOAD:
            return super().build_extension(ext)
        self.force = True  # one small file: never link objects of an earlier build for another CC or machine
        note = os.path.join(self.build_lib, NOT_BUILT)
        for stale in (note, self.get_ext_fullpath(ext.name)):  # from an earlier build in the same directory
            if os.path.exists(stale):
                os.remove(stale)
        try:
            try:
                super().build_extension(ext)
            except Exception:
                if not set(OLD_LIBDL) <= set(ext.extra_link_args):
                    raise
                # Not glibc (musl has no libdl.so.2), or a linker without -l:NAME.
                ext.extra_link_args = [arg for arg in ext.extra_link_args if arg not in OLD_LIBDL] + ["-ldl"]
                super().build_extension(ext)
        except Exception as exc:
            if os.environ.get("SELFGUARD_REQUIRE_NATIVE", "").strip().lower() in ("1", "true", "on", "yes"):
                # pip shows a build's output only when it fails: this makes it fail, and say why.
                raise SystemExit(
                    f"error: SELFGUARD_REQUIRE_NATIVE is set, and selfguard's native guard could not be built "
                    f"(a C compiler is needed: cc, gcc or clang): {type(exc).__name__}: {exc}"
                ) from exc
            # optional=True: setuptools warns and goes on. Leave the reason in the package,
            # where `selfguard run --native` finds it (pip shows build output only with -v).
            os.makedirs(os.path.dirname(note), exist_ok=True)
            with open(note, "w") as f:
                f.write(f"{type(exc).__name__}: {exc}\n")
            raise


def _platform_of(library: str) -> str:
    """The wheel platform tag that *library* truly needs: its machine, and manylinux_2_Y for the glibc it needs."""
    with open(library, "rb") as f:
        data = f.read()
    machine = MACHINES.get(int.from_bytes(data[18:20], "little" if data[5] == 1 else "big"))
    if machine is None:
        raise SystemExit(f"{library}: a machine this setup.py has no wheel tag for")
    if b"libc.so.6" not in data:  # not glibc (musl): a plain tag, for this kind of system only
        return f"linux_{machine}"
    needed = max([GLIBC_FLOOR] + [(2, int(minor)) for minor in re.findall(rb"GLIBC_2\.(\d+)", data)])
    tag = f"manylinux_{needed[0]}_{needed[1]}_{machine}"
    # The legacy alias lets pip before 20.3 (Python 3.9.0 came with pip 20.2) install it too.
    return f"{tag}.manylinux2014_{machine}" if needed == (2, 17) else tag


commands = {"build_ext": BuildPreload}
if bdist_wheel is not None:

    class Wheel(bdist_wheel):  # type: ignore[misc,valid-type]
        def get_tag(self) -> tuple:
            library = self.get_finalized_command("build_ext").get_ext_fullpath(PRELOAD)
            if not os.path.isfile(library):
                return ("py3", "none", "any")  # nothing native inside: says so in its name
            return ("py3", "none", _platform_of(library))

    commands["bdist_wheel"] = Wheel


setup(
    ext_modules=[
        Extension(
            PRELOAD,
            sources=["selfguard/_preload/preload.c"],
            depends=[COMPAT],
            extra_compile_args=["-std=gnu11", "-O2", "-fvisibility=hidden", "-Wall", "-include", COMPAT],
            extra_link_args=["-pthread", *OLD_LIBDL],
            optional=True,
        ),
        # The C accelerator of the Python guard (selfguard/_accel.py): on the stable ABI, so
        # one build serves every CPython >= 3.9. Optional like the library above: without a
        # compiler the pure-Python wrappers run, with the same outcomes. Other Pythons than
        # CPython don't look for an .abi3.so, so the wheel stays py3-none.
        Extension(
            "selfguard._speedups",
            sources=["selfguard/_speedups.c"],
            define_macros=[("Py_LIMITED_API", "0x03090000")],
            py_limited_api=True,
            extra_compile_args=["-std=gnu11", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
            optional=True,
        ),
    ],
    cmdclass=commands,
)
