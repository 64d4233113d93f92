"""The native guard built strictly: no warning under -Wextra -Wconversion, and no finding from UBSan and ASan.

The sanitized library is preloaded after libasan (ASan wants its runtime first), into
the differential program (every C-level case, whose outcomes must still be the
unguarded ones) and into the edge cases that retry (vfork, SO_SNDTIMEO). Any undefined
behaviour (a signed overflow in the deadline arithmetic, a misaligned read) or memory
error stops the program with a report: -fno-sanitize-recover=all.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from selfguard import _native
from selfguard.testing import free_port

from helpers import clean_environ, require, require_forcing
from native_helpers import compile_c, in_namespace, require_library, require_namespaces

SOURCE = Path(_native.__file__).parent / "_preload" / "preload.c"
STRICT = ["-std=gnu11", "-O2", "-fvisibility=hidden", "-Wall", "-Wextra", "-Wconversion", "-Werror"]
SANITIZE = ["-fsanitize=undefined,address", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-g", "-O1"]
RESERVED = "40100,40111,40113,40201"  # as tests/test_native_differential.py


def compiler() -> str:
    found = shutil.which(os.environ.get("CC", "") or "cc") or shutil.which("gcc")
    require(found is not None, "needs a C compiler (cc or gcc)")
    assert found is not None
    return found


def build(out: Path, *flags: str) -> Path:
    library = out / "libselfguard_preload.so"
    done = subprocess.run(
        [compiler(), *flags, "-shared", "-fPIC", "-pthread", "-o", str(library), str(SOURCE), "-ldl"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert 0 == done.returncode, done.stderr
    assert "" == done.stderr  # not one warning
    return library


def test_the_library_builds_without_a_warning_under_wextra_and_wconversion(tmp_path: Path):
    """-Wall -Wextra -Wconversion -Werror: every narrowing is written out."""
    require_library()
    build(tmp_path, *STRICT)


@pytest.fixture(scope="module")
def sanitized(tmp_path_factory: pytest.TempPathFactory) -> str:
    """LD_PRELOAD for the library built with UBSan and ASan (libasan first)."""
    require_library()
    out = tmp_path_factory.mktemp("native-sanitized")
    library = build(out, *[flag for flag in STRICT if not flag.startswith("-O")], *SANITIZE)
    asan = subprocess.run([compiler(), "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    require(os.path.isabs(asan) and os.path.exists(asan), "needs libasan (gcc's sanitizer runtime)")
    return f"{asan}:{library}"


SANITIZER_ENV = {
    "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=0:exitcode=86",
    "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1:exitcode=87",
}


def test_the_differential_holds_under_ubsan_and_asan(sanitized: str, tmp_path: Path):
    """Every C-level outcome as without the library, and no sanitizer report."""
    require_namespaces()
    program = compile_c("differential", tmp_path)
    plain = in_namespace([str(program)], port_range=(32768, 60999), reserved=RESERVED, env=clean_environ())
    env = clean_environ(LD_PRELOAD=sanitized, **SANITIZER_ENV)
    guarded = in_namespace([str(program)], port_range=(32768, 60999), reserved=RESERVED, env=env, timeout=600)
    assert 0 == guarded["rc"], guarded["stderr"][-3000:]
    assert "runtime error" not in guarded["stderr"] and "ERROR: AddressSanitizer" not in guarded["stderr"]
    differences = [(a, b) for a, b in zip(plain["stdout"].splitlines(), guarded["stdout"].splitlines()) if a != b]
    assert [] == differences
    assert len(plain["stdout"].splitlines()) == len(guarded["stdout"].splitlines()) >= 1600


@pytest.mark.parametrize("case", ["vfork", "sndtimeo"])
def test_the_retries_run_clean_under_ubsan_and_asan(sanitized: str, tmp_path: Path, case: str):
    """Self-connects found, reset and retried, from a vfork()ed parent and with SO_SNDTIMEO: no report."""
    require_forcing()
    program = compile_c("edges", tmp_path, "-pthread")
    done = subprocess.run(
        [str(program), case, str(free_port())],
        env=clean_environ(LD_PRELOAD=sanitized, SELFGUARD_RETRIES="2", **SANITIZER_ENV),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert (0, "") == (done.returncode, done.stderr)
    assert '"refused": ' in done.stdout
