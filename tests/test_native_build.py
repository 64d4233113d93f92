"""Building the native guard: with a C compiler the package ships it; without one it installs anyway, and says so.

The library is a setuptools extension marked optional (setup.py), installed under a plain
name (no Python ABI tag: it uses nothing from Python). Where no C compiler exists, the
build warns and the package installs without it; `selfguard run --native` then warns,
says what is missing and runs the command (`--require-native` exits 3).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import selfguard
from selfguard import _native

from helpers import clean_environ, require
from native_helpers import require_library

ROOT = Path(selfguard.__file__).resolve().parent.parent
EXPORTS = {
    "connect", "getsockopt", "sendto", "sendmsg", "bind", "close", "socket", "socketpair", "accept", "accept4",
    "dup", "dup2", "dup3", "fcntl", "fcntl64", "selfguard_native_stats", "selfguard_native_counter_names",
    "selfguard_native_settings", "selfguard_native_reset_stats", "selfguard_native_fd_flags", "selfguard_native_parse",
    "selfguard_native_version", "selfguard_native_claim_warning",
}  # fmt: skip


def source_copy(tmp_path: Path) -> Path:
    """The project's sources, without anything built, in tmp_path/src."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.py", "setup.cfg", "pyproject.toml", "README.md", "CHANGELOG.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "selfguard", src / "selfguard", ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    return src


def build_ext(src: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--build-lib", "out", "--build-temp", "tmp"],
        cwd=src,
        env=clean_environ(**env),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_installed_package_has_the_library():
    """This environment was installed with a compiler: the library is there, under its plain name."""
    assert _native.LIBRARY.endswith("selfguard/_preload/libselfguard_preload.so")
    assert _native.library_path() == require_library()


def test_the_build_makes_a_preloadable_library_that_needs_nothing_from_python(tmp_path: Path):
    """A shared object exporting the interposed calls and the counters; no Python symbol, no ABI tag."""
    require(shutil.which("cc") is not None or shutil.which("gcc") is not None, "needs a C compiler")
    require(shutil.which("nm") is not None, "needs nm (binutils, installed with gcc)")
    src = source_copy(tmp_path)
    done = build_ext(src)
    assert 0 == done.returncode, done.stderr
    built = sorted((src / "out").rglob("*.so"))
    # Beside it, the Python guard's accelerator: an extension module on the stable ABI.
    out = src / "out" / "selfguard"
    assert [out / "_preload" / "libselfguard_preload.so", out / "_speedups.abi3.so"] == built
    defined = subprocess.run(["nm", "-D", "--defined-only", str(built[0])], capture_output=True, text=True, check=True)
    names = {line.split()[-1] for line in defined.stdout.splitlines() if " T " in line}
    assert EXPORTS == names
    undefined = subprocess.run(["nm", "-D", "--undefined-only", str(built[0])], capture_output=True, text=True)
    assert not [line for line in undefined.stdout.splitlines() if line.split()[-1].startswith("Py")]


def test_without_a_compiler_the_build_succeeds_without_the_library(tmp_path: Path):
    """CC names no compiler: build_ext warns, exits 0, and makes no library."""
    src = source_copy(tmp_path)
    done = build_ext(src, CC="/nonexistent/cc")
    assert 0 == done.returncode, done.stderr
    assert [] == list((src / "out").rglob("*.so"))
    assert "libselfguard_preload" in done.stdout + done.stderr  # the build says which extension it skipped


def test_without_a_compiler_pip_installs_and_native_says_what_is_missing(tmp_path: Path):
    """A fresh venv, pip install with no compiler: the package works; `run --native` warns and runs, with the reason."""
    src = source_copy(tmp_path)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    done = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", str(src)],
        env=clean_environ(CC="/nonexistent/cc"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert 0 == done.returncode, done.stderr
    installed = subprocess.run(
        [str(python), "-c", "import selfguard._native as n, os; print(n.LIBRARY, os.path.exists(n.LIBRARY))"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert installed.stdout.strip().endswith("libselfguard_preload.so False"), installed.stderr
    ran = subprocess.run(
        [str(python), "-m", "selfguard", "run", "--native", "--", "true"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=clean_environ(),
    )
    assert 0 == ran.returncode
    assert "selfguard run: WARNING: --native: running true WITHOUT the native guard" in ran.stderr
    assert "the native guard is not in this selfguard" in ran.stderr and "its build failed" in ran.stderr
    strict = subprocess.run(
        [str(python), "-m", "selfguard", "run", "--require-native", "--", "true"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=clean_environ(),
    )
    assert 3 == strict.returncode
    assert f"from the directory {src}" in strict.stderr  # installed from a clone: the hint says so
    assert f"-m pip install --force-reinstall --no-deps --no-cache-dir {src}" in strict.stderr
    guarded = subprocess.run(
        [str(python), "-m", "selfguard", "run", "--", "true"], capture_output=True, timeout=60, cwd=tmp_path
    )
    assert 0 == guarded.returncode  # everything else works as ever
