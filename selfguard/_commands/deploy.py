"""`selfguard sitecustomize install|status|remove [--python PY] [--dir DIR]`: deploy the bootstrap into an interpreter.

By default the bootstrap goes where the interpreter runs it at every start whatever
else is there: its own directory in site-packages (selfguard-bootstrap/, with the
file compiled for that interpreter), put first on sys.path by a one-line .pth file
(site runs .pth files before it imports sitecustomize). Nothing named sitecustomize
is written into site-packages: a user's own sitecustomize, or a distribution's
earlier on sys.path (Debian's /usr/lib/python3.X/sitecustomize.py, which every
Debian venv finds before its site-packages), stays where it is, and the bootstrap
runs it afterwards. The files are not selfguard's distribution's: pip would remove
them at every upgrade or reinstall (an uninstall of the old version), and a fleet
would lose its guard silently. They stay until `remove`; left after an uninstall,
the bootstrap finds no selfguard and does nothing, silently.

--dir DIR writes DIR/sitecustomize.py instead, for services that put DIR on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from .cli import EXIT_CANNOT_RUN, EXIT_FOUND, EXIT_OK, EXIT_USAGE, CannotRun

if TYPE_CHECKING:
    from .cli import Commands

BOOTSTRAP = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "_bootstrap", "sitecustomize.py")
DIRECTORY = "selfguard-bootstrap"  # not importable as a package (the hyphen); holds sitecustomize.py only
PTH = "selfguard-bootstrap.pth"
MARK = "selfguard's sitecustomize"  # the bootstrap's first line says it: tells ours from a user's

# Asked of the target interpreter (which may be any Python: 3.6 syntax, no f-strings).
QUERY = """\
import importlib.util, json, sys, sysconfig
spec = importlib.util.find_spec("selfguard")
boot = sys.modules.get("_selfguard_sitecustomize")
print(json.dumps({
    "executable": sys.executable,
    "version": list(sys.version_info[:3]),
    "cache_tag": sys.implementation.cache_tag,
    "purelib": sysconfig.get_paths()["purelib"],
    "venv": sys.prefix != getattr(sys, "base_prefix", sys.prefix),
    "selfguard": spec.origin if spec else None,
    "running": getattr(boot, "__file__", None),
}))
"""

DESCRIPTION = f"""\
Deploy selfguard's sitecustomize into a Python interpreter, so that every process
it starts installs the guard at its first connect, as `selfguard run` does for
one command. `install` copies it into the interpreter's site-packages, in a
directory of its own put first on sys.path by {PTH}, and
compiles it for that interpreter; a sitecustomize already there (yours, or your
distribution's) is left as it is and still runs, after selfguard's. `status`
shows where it is deployed and whether the interpreter runs it; `remove` takes
it away. Upgrading or reinstalling selfguard keeps it deployed; run `remove`
before `pip uninstall selfguard` (a bootstrap left behind does nothing, silently).

--python PY chooses the interpreter (default: the one running this command).
--dir DIR deploys DIR/sitecustomize.py instead, for services that put DIR first
on PYTHONPATH.

exit status:
  {EXIT_OK}  installed, removed; status: deployed, and the interpreter runs it
  {EXIT_FOUND}  status: not deployed, or deployed but not run (says why)
  {EXIT_USAGE}  usage error
  {EXIT_CANNOT_RUN}  could not run: PY does not run, is older than 3.9, has no selfguard
     (install it there first, or --force), a sitecustomize.py in DIR is not
     selfguard's, or no right to write"""


@dataclass
class Target:
    """The interpreter asked, and where the bootstrap goes for it."""

    python: str
    facts: dict[str, Any]
    directory: Optional[str]  # --dir

    @property
    def site(self) -> str:
        return str(self.facts["purelib"])

    @property
    def file(self) -> str:
        return os.path.join(self.directory or os.path.join(self.site, DIRECTORY), "sitecustomize.py")

    @property
    def pth(self) -> Optional[str]:
        return None if self.directory else os.path.join(self.site, PTH)

    def compiled(self) -> str:
        folder, name = os.path.split(self.file)
        return os.path.join(folder, "__pycache__", f"{name[:-3]}.{self.facts['cache_tag']}.pyc")


def _environment() -> dict[str, str]:
    # The interpreter as its services start it: not under a caller's `selfguard run` or SELFGUARD=0.
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SELFGUARD", "PYTHONNOUSERSITE")}


def ask(python: str, directory: Optional[str] = None) -> Target:
    """Run *python* once and learn where its site-packages are, whether it has selfguard and runs the bootstrap."""
    env = _environment()
    if directory:
        env["PYTHONPATH"] = directory
    try:
        done = subprocess.run(
            [python, "-c", QUERY], env=env, cwd="/", capture_output=True, text=True, timeout=60, check=False
        )
        facts = json.loads(done.stdout.strip().splitlines()[-1])
    except (OSError, ValueError, IndexError, subprocess.SubprocessError) as exc:
        said = locals().get("done")
        detail = said.stderr.strip().splitlines()[-1:] if said is not None and said.stderr.strip() else [str(exc)]
        raise CannotRun(f"cannot ask {python} where its site-packages are: {detail[0]}") from exc
    return Target(python, facts, os.path.abspath(directory) if directory else None)


def _is_ours(path: str) -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return MARK in f.read(400)
    except OSError:
        return False


def install(target: Target, force: bool) -> int:
    version = tuple(target.facts["version"])
    if version < (3, 9):
        raise CannotRun(f"{target.python} is Python {'.'.join(map(str, version))}; selfguard needs 3.9 or later")
    if target.facts["selfguard"] is None and not force:
        from .. import _origin

        raise CannotRun(
            f"selfguard is not installed for {target.python}: the bootstrap would guard nothing there. Install it "
            f"first ({_origin.install_command(target.python)}), or deploy anyway with --force"
        )
    if os.path.exists(target.file) and not _is_ours(target.file):
        raise CannotRun(
            f"{target.file} is not selfguard's sitecustomize; it is left as it is. Deploy into another directory "
            "first on PYTHONPATH (the bootstrap runs yours afterwards), or without --dir"
        )
    try:
        os.makedirs(os.path.dirname(target.file), exist_ok=True)
        temporary = target.file + ".selfguard-tmp"
        shutil.copyfile(BOOTSTRAP, temporary)
        os.replace(temporary, target.file)
        # Compiled by the interpreter that will run it: without a .pyc, an interpreter that cannot write one
        # (read-only site-packages, PYTHONDONTWRITEBYTECODE) compiles it at every start (~2 ms).
        done = subprocess.run(
            [target.python, "-m", "py_compile", target.file], capture_output=True, text=True, timeout=60, check=False
        )
        if done.returncode != 0:
            raise CannotRun(f"{target.python} -m py_compile {target.file} failed: {done.stderr.strip()}")
        if target.pth:
            with open(target.pth + ".selfguard-tmp", "w", encoding="utf-8") as f:
                # site runs a .pth line that starts with "import" before it imports sitecustomize.
                f.write(f"import sys; sys.path.insert(0, {os.path.dirname(target.file)!r})\n")
            os.replace(target.pth + ".selfguard-tmp", target.pth)
    except OSError as exc:
        raise CannotRun(f"cannot write the bootstrap: {exc}") from exc
    print(f"deployed: {target.file} (compiled: {target.compiled()})")
    if target.pth:
        print(f"put first on sys.path by: {target.pth}")
    else:
        print(f"services find it with PYTHONPATH={os.path.dirname(target.file)} (an existing PYTHONPATH after it)")
    return EXIT_OK


def remove(target: Target) -> int:
    removed = []
    try:
        if target.pth and os.path.exists(target.pth):
            os.remove(target.pth)
            removed.append(target.pth)
        if os.path.exists(target.file):
            if not _is_ours(target.file):
                raise CannotRun(f"{target.file} is not selfguard's sitecustomize; it is left as it is")
            os.remove(target.file)
            removed.append(target.file)
        cache = os.path.join(os.path.dirname(target.file), "__pycache__")
        if os.path.isdir(cache):
            for name in os.listdir(cache):
                if name.startswith("sitecustomize.") and name.endswith(".pyc"):
                    os.remove(os.path.join(cache, name))
                    removed.append(os.path.join(cache, name))
        # Our own directory goes, if empty; of a --dir, only the __pycache__ py_compile made.
        for folder in (cache,) if target.directory else (cache, os.path.dirname(target.file)):
            if os.path.isdir(folder) and not os.listdir(folder):
                os.rmdir(folder)
    except OSError as exc:
        raise CannotRun(f"cannot remove the bootstrap: {exc}") from exc
    print("\n".join(f"removed: {path}" for path in removed) if removed else f"not deployed for {target.python}")
    return EXIT_OK


def status(target: Target, as_json: bool) -> int:
    deployed = os.path.exists(target.file) and _is_ours(target.file)
    current = False
    if deployed:
        with open(target.file, "rb") as mine, open(BOOTSTRAP, "rb") as packaged:
            current = mine.read() == packaged.read()
    compiled = os.path.exists(target.compiled())
    running = target.facts["running"]
    runs = running is not None and os.path.realpath(running) == os.path.realpath(target.file)
    report = {
        "python": target.facts["executable"],
        "version": ".".join(map(str, target.facts["version"])),
        "file": target.file,
        "deployed": deployed,
        "current": current,
        "compiled": compiled,
        "pth": target.pth if target.pth and os.path.exists(target.pth) else None,
        "runs_at_start": runs,
        "running_copy": running,
        "selfguard": target.facts["selfguard"],
    }
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        print(f"interpreter: {report['python']} (Python {report['version']})")
        if not deployed:
            print(f"not deployed ({target.file} absent{'' if not os.path.exists(target.file) else ', not ours'})")
        else:
            print(f"deployed: {target.file}" + ("" if current else " (another version than this selfguard's)"))
            print(
                f"compiled: {target.compiled() if compiled else 'no (it is compiled at every start it cannot cache)'}"
            )
        if running and not runs:
            print(f"runs at start: another copy, {running}")
        else:
            print(f"runs at start: {'yes' if runs else 'no'}")
        print(f"selfguard there: {report['selfguard'] or 'NOT INSTALLED: the bootstrap guards nothing'}")
    return EXIT_OK if (runs or (running and deployed)) and target.facts["selfguard"] else EXIT_FOUND


def register(commands: Commands) -> None:
    """Add the `sitecustomize` command to the `selfguard` parser's subcommands."""
    parser = commands.add_parser(
        "sitecustomize",
        help="deploy the guard's sitecustomize into an interpreter (install), show it (status), remove it",
        description=DESCRIPTION,
    )
    parser.add_argument("action", choices=("install", "status", "remove"))
    parser.add_argument("--python", metavar="PY", default=sys.executable, help="the interpreter (default: %(default)s)")
    parser.add_argument("--dir", metavar="DIR", help="deploy DIR/sitecustomize.py, for PYTHONPATH=DIR")
    parser.add_argument("--force", action="store_true", help="install even where PY has no selfguard")
    parser.add_argument("--json", action="store_true", help="status: print a JSON object")

    def handle(args: argparse.Namespace) -> int:
        python = os.path.abspath(args.python) if os.sep in args.python else shutil.which(args.python) or args.python
        target = ask(python, args.dir)
        if args.action == "install":
            return install(target, args.force)
        if args.action == "remove":
            return remove(target)
        return status(target, args.json)

    parser.set_defaults(func=handle)
