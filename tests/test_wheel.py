"""The wheel: `python -m build` makes one that carries the native guard and installs on any CPython >= 3.9.

The library uses nothing from Python, so the wheel is tagged py3-none-manylinux_2_17_ARCH
(setup.py reads the tag off the library it carries; auditwheel confirms it). Installed
into a fresh environment with no C compiler on PATH, `selfguard run --native` guards
curl there. From an sdist without a compiler, pip installs a py3-none-any wheel without
the library, `--native` warns and runs the command, `--require-native` refuses, and
SELFGUARD_REQUIRE_NATIVE=1 turns the missing compiler into a build error pip shows.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from test_native_build import source_copy
from test_native_clients import ATTEMPTS, CURL_LOOP, PORT, check, curl_outcome
from test_old_interpreters import old_python

from helpers import clean_environ, require
from native_helpers import SOURCES, in_namespace, require_namespaces

LIBRARY = "selfguard/_preload/libselfguard_preload.so"
OTHER_PYTHONS = ["3.9", "3.13"]  # the oldest supported, and the newest here


def build(src: Path, out: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    require(shutil.which("cc") is not None or shutil.which("gcc") is not None, "needs a C compiler")
    done = subprocess.run(
        [sys.executable, "-m", "build", "-o", str(out), *args, str(src)],
        env=clean_environ(**env),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert 0 == done.returncode, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sdist and the wheel, from `python -m build` as the README says."""
    tmp = tmp_path_factory.mktemp("wheel")
    out = tmp / "dist"
    build(source_copy(tmp), out)
    return out


def the(pattern: str, directory: Path) -> Path:
    found = sorted(directory.glob(pattern))
    assert 1 == len(found), (pattern, sorted(p.name for p in directory.iterdir()))
    return found[0]


def no_compiler_path(tmp_path: Path, venv: Path, *tools: str) -> str:
    """A PATH with the venv's bin and links to *tools* only: no cc, gcc or clang on it."""
    tools_dir = tmp_path / "tools"
    tools_dir.mkdir(exist_ok=True)
    for tool in tools:
        found = shutil.which(tool)
        require(found is not None, f"needs {tool}")
        assert found is not None
        if not (tools_dir / tool).exists():
            (tools_dir / tool).symlink_to(found)
    path = f"{venv / 'bin'}{os.pathsep}{tools_dir}"
    assert not any(shutil.which(cc, path=path) for cc in ("cc", "gcc", "clang", "x86_64-linux-gnu-gcc"))
    return path


def venv_with(tmp_path: Path, requirement: Path, python: str = sys.executable, **env: str) -> tuple[Path, str]:
    """A fresh venv, *requirement* pip-installed into it with no compiler on PATH; returns it and pip's output."""
    venv = tmp_path / "venv"
    subprocess.run([python, "-m", "venv", str(venv)], check=True, timeout=300)
    path = no_compiler_path(tmp_path, venv, "sh", "curl")
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--no-cache-dir", str(requirement)],
        env=clean_environ(PATH=path, **env),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert 0 == done.returncode, done.stdout[-3000:] + done.stderr[-3000:]
    return venv, done.stdout + done.stderr


def test_the_wheel_fits_every_cpython_with_glibc_2_17_and_carries_the_library(dist: Path):
    """py3-none (no Python inside the library), manylinux_2_17 as auditwheel reads the library's symbol versions."""
    wheel = the("*.whl", dist)
    assert re.fullmatch(r"selfguard-.+-py3-none-manylinux_2_17_x86_64\.manylinux2014_x86_64\.whl", wheel.name)
    with zipfile.ZipFile(wheel) as archive:
        assert LIBRARY in archive.namelist()
        assert "selfguard/_speedups.abi3.so" in archive.namelist()  # CPython's; other Pythons don't look for it
        assert "Root-Is-Purelib: false" in archive.read(f"{wheel.name.split('-py3')[0]}.dist-info/WHEEL").decode()
    shown = subprocess.run(
        [sys.executable, "-m", "auditwheel", "show", str(wheel)], capture_output=True, text=True, timeout=120
    )
    assert 0 == shown.returncode, shown.stderr
    # At most glibc 2.17: the tag the wheel carries holds (the library may need older symbols only).
    consistent = r'consistent with the following platform tag:\s+"manylinux_2_(5|12|17)_x86_64"'
    assert re.search(consistent, shown.stdout), shown.stdout


def test_from_the_wheel_without_a_compiler_native_guards_curl(dist: Path, tmp_path: Path):
    """Installed without any compiler on PATH, `selfguard run --native` guards a loop of curl processes."""
    require_namespaces()
    venv, _ = venv_with(tmp_path, the("*.whl", dist))
    path = no_compiler_path(tmp_path, venv, "sh", "curl")
    report = tmp_path / "native-report.jsonl"
    argv = ["sh", "-c", CURL_LOOP, "sh", str(ATTEMPTS), str(PORT)]
    unguarded = in_namespace(argv, env=clean_environ(PATH=path))
    guarded_argv = [str(venv / "bin" / "selfguard"), "run", "--require-native", "--", *argv]
    guarded = in_namespace(guarded_argv, env=clean_environ(PATH=path, SELFGUARD_NATIVE_REPORT=str(report)))
    assert 0 == guarded["rc"], guarded["stderr"]
    native = [json.loads(line) for line in report.read_text().splitlines()] if report.exists() else []
    check("curl, from the wheel", curl_outcome(unguarded), curl_outcome(guarded), native)


@pytest.mark.parametrize("version", OTHER_PYTHONS)
def test_the_same_wheel_installs_on_other_pythons(dist: Path, tmp_path: Path, version: str):
    """One wheel for every CPython >= 3.9: the oldest and the newest here install it and preload its library."""
    python = old_python(version)
    require(python is not None, f"no Python {version} interpreter (python{version} on PATH, or pyenv's)")
    assert python is not None
    venv, _ = venv_with(tmp_path, the("*.whl", dist), python=python)
    done = subprocess.run(
        [str(venv / "bin" / "selfguard"), "run", "--require-native", "--", "sh", "-c", 'echo "$LD_PRELOAD"'],
        env=clean_environ(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert 0 == done.returncode, done.stderr
    assert done.stdout.strip().endswith(LIBRARY), done.stdout
    # The C accelerator, built once on the stable ABI by this interpreter, loads there too.
    assert "True" == accelerated(venv), "the C accelerator did not load"


def accelerated(venv: Path) -> str:
    """Whether the Python guard's C accelerator loads in *venv* ("True"), or why not."""
    code = "import selfguard._accel as a; print(a.speedups is not None or a.why_not)"
    python = str(venv / "bin" / "python")
    # From the venv's directory: `python -c` puts the working directory first on sys.path,
    # and this test's is the source tree, where an in-place build may lie.
    done = subprocess.run([python, "-c", code], env=clean_environ(), capture_output=True, text=True, cwd=venv)
    return (done.stdout + done.stderr).strip()


def test_from_the_sdist_without_a_compiler_native_warns_and_runs(dist: Path, tmp_path: Path):
    """No compiler: pip installs a py3-none-any wheel (its name is in pip's output), the reason stays in the package."""
    venv, said = venv_with(tmp_path, the("*.tar.gz", dist))
    assert re.search(r"filename=selfguard-[^ ]+-py3-none-any\.whl", said), said
    selfguard = str(venv / "bin" / "selfguard")
    env = clean_environ(PATH=no_compiler_path(tmp_path, venv, "sh", "curl"))
    argv = ["sh", "-c", "echo ran"]
    done = subprocess.run([selfguard, "run", "--native", "--", *argv], env=env, capture_output=True, text=True)
    assert ("ran\n", 0) == (done.stdout, done.returncode), done.stderr
    assert done.stderr.startswith("selfguard run: WARNING: --native: running sh WITHOUT the native guard")
    assert "its build failed" in done.stderr and "No C compiler is here" in done.stderr, done.stderr
    assert f"{venv}/bin/python -m pip install --force-reinstall --no-deps --no-cache-dir" in done.stderr
    assert 1 == len(done.stderr.splitlines())
    strict = subprocess.run([selfguard, "run", "--require-native", "--", *argv], env=env, capture_output=True)
    assert (b"", 3) == (strict.stdout, strict.returncode)
    # The Python guard runs its pure-Python wrappers.
    assert accelerated(venv).startswith("not loaded: "), accelerated(venv)
    assert strict.stderr.startswith(b"selfguard run: --require-native: not running sh: the native guard is not in")


def test_selfguard_require_native_makes_a_missing_compiler_a_build_error(dist: Path, tmp_path: Path):
    """SELFGUARD_REQUIRE_NATIVE=1: pip fails, and shows why (it hides a build's output unless the build fails)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--no-cache-dir", str(the("*.tar.gz", dist))],
        env=clean_environ(PATH=no_compiler_path(tmp_path, venv, "sh"), SELFGUARD_REQUIRE_NATIVE="1"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert 0 != done.returncode
    said = "SELFGUARD_REQUIRE_NATIVE is set, and selfguard's native guard could not be built"
    assert said in done.stdout + done.stderr


def test_an_aarch64_wheel_cross_built_here_is_manylinux_and_guards_under_qemu(tmp_path: Path):
    """CC=aarch64-linux-gnu-gcc: a manylinux_2_17_aarch64 wheel whose library stops a self-connect under qemu-user."""
    cross = shutil.which("aarch64-linux-gnu-gcc")
    require(cross is not None, "needs gcc-aarch64-linux-gnu (apt)")
    require(shutil.which("qemu-aarch64") is not None, "needs qemu-user (apt)")
    require(os.path.isdir("/usr/aarch64-linux-gnu/lib"), "needs the aarch64 C library (libc6-dev-arm64-cross)")
    require_namespaces()
    out = tmp_path / "dist"
    build(source_copy(tmp_path), out, "--wheel", CC="aarch64-linux-gnu-gcc", LDSHARED="aarch64-linux-gnu-gcc -shared")
    wheel = the("*.whl", out)
    assert wheel.name.endswith("-py3-none-manylinux_2_17_aarch64.manylinux2014_aarch64.whl")
    shown = subprocess.run([sys.executable, "-m", "auditwheel", "show", str(wheel)], capture_output=True, text=True)
    assert '"manylinux_2_17_aarch64"' in shown.stdout, shown.stdout + shown.stderr
    # pip on an aarch64 host with Python 3.9 and pip's oldest manylinux2014 support would install it:
    target = tmp_path / "aarch64-site"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--only-binary=:all:",
         "--platform", "manylinux2014_aarch64", "--python-version", "3.9", "--implementation", "cp",
         "--target", str(target), str(wheel)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert 0 == done.returncode, done.stderr
    assert (target / LIBRARY).is_file()
    with zipfile.ZipFile(wheel) as archive:
        archive.extract(LIBRARY, tmp_path)
    client = tmp_path / "client-aarch64"
    subprocess.run([str(cross), "-O2", "-o", str(client), str(SOURCES / "client.c")], check=True, timeout=120)
    qemu = ["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu"]
    argv = [str(client), "blocking", "127.0.0.1", str(PORT), "20"]
    unguarded = in_namespace([*qemu, *argv])
    guarded = in_namespace([*qemu, "-E", f"LD_PRELOAD={tmp_path / LIBRARY}", *argv])
    seen = [json.loads(run["stdout"]) for run in (unguarded, guarded)]
    print(f"aarch64 under qemu: unguarded {seen[0]}, server {unguarded['server']}; guarded {seen[1]}")
    assert seen[0]["own_bytes"] >= 1 and "errno 98" == unguarded["server"]
    assert (0, 20) == (seen[1]["own_bytes"], seen[1]["refused"]) and "bound" == guarded["server"]


WITHOUT_PROMETHEUS = (
    "import sys\n"
    "sys.modules['prometheus_client'] = None  # as if not installed\n"
    "try:\n    from selfguard.contrib import prometheus\n"
    "except ModuleNotFoundError as exc:\n    print(str(exc).split(': ', 1)[1])\n"
)
ORIGIN = "from selfguard import _origin\nprint(_origin.origin().describe())\nprint(_origin.reinstall_command())"


def test_fix_it_hints_say_what_works_from_where_selfguard_was_installed(dist: Path, tmp_path: Path):
    """From a wheel file, `pip install 'selfguard[prometheus]'` would look for a published selfguard: the hint
    names prometheus_client instead, and running it works. From an index (no direct_url.json), the extra itself."""
    wheel = the("*.whl", dist)
    venv, _ = venv_with(tmp_path, wheel)
    python = str(venv / "bin" / "python")

    def ask(code: str) -> list[str]:
        done = subprocess.run([python, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert 0 == done.returncode, done.stderr
        return done.stdout.splitlines()

    hint = ask(WITHOUT_PROMETHEUS)[0]
    assert f"{python} -m pip install 'prometheus_client>=0.12'" == hint
    described, reinstall = ask(ORIGIN)
    assert f"from the file {wheel}" == described
    assert reinstall.startswith("build a wheel that carries it") and "--no-cache-dir THAT.whl" in reinstall
    done = subprocess.run(["sh", "-c", hint], capture_output=True, text=True, timeout=300)  # the hint, as given
    assert 0 == done.returncode, done.stderr
    ask("from selfguard.contrib import prometheus")
    # An index install: pip records no direct_url.json.
    (direct_url,) = (venv / "lib").glob("python3.*/site-packages/selfguard-*.dist-info/direct_url.json")
    direct_url.unlink()
    assert [f"{python} -m pip install 'selfguard[prometheus]'"] == ask(WITHOUT_PROMETHEUS)
    described, reinstall = ask(ORIGIN)
    assert "from a package index" == described
    assert re.fullmatch(
        rf"{re.escape(python)} -m pip install --force-reinstall --no-deps --no-cache-dir selfguard==\S+", reinstall
    )
