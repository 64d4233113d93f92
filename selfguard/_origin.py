"""Where this selfguard was installed from, and the pip command that works from there (for fix-it messages).

A hint that says `pip install selfguard` fails for anyone who installed from a clone,
a wheel file or a git URL: pip then looks for a published package, or a different
one. pip records where a package came from in its dist-info (direct_url.json, PEP
610); nothing there means an index. Only error paths import this module.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from dataclasses import dataclass
from typing import Optional
from urllib.parse import unquote, urlparse

NAME = "selfguard"


@dataclass(frozen=True)
class Origin:
    """What pip recorded: kind is index, editable, directory, archive, vcs, or source (not installed at all)."""

    kind: str
    where: str  # a path or URL for pip, or the index's package name

    def describe(self) -> str:
        return {
            "index": "from a package index",
            "editable": f"editable, from the clone {self.where}",
            "directory": f"from the directory {self.where}",
            "archive": f"from the file {self.where}",
            "vcs": f"from {self.where}",
            "source": f"not installed: imported from the source tree {self.where}",
        }[self.kind]


def _path_of(url: str) -> str:
    parsed = urlparse(url)
    return unquote(parsed.path) if parsed.scheme == "file" else url


def origin() -> Origin:
    """Where selfguard was installed from, as pip recorded it."""
    from importlib import metadata

    package_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the directory holding selfguard/
    try:
        dist = metadata.distribution(NAME)
        recorded = json.loads(dist.read_text("direct_url.json") or "null")
    except metadata.PackageNotFoundError:
        return Origin("source", package_dir)
    except ValueError:
        recorded = None
    if not isinstance(recorded, dict) or "url" not in recorded:
        recorded = {}
    dir_info = recorded.get("dir_info") or {}
    url = str(recorded.get("url", ""))
    if dir_info.get("editable"):
        here = os.path.realpath(_path_of(url)) == os.path.realpath(package_dir)
        return Origin("editable", _path_of(url)) if here else Origin("source", package_dir)
    installed = os.path.realpath(str(dist.locate_file(os.path.join(NAME, "__init__.py"))))
    if installed != os.path.realpath(os.path.join(package_dir, NAME, "__init__.py")):
        return Origin("source", package_dir)  # another selfguard's metadata: this one comes from a tree on sys.path
    if not url:
        if os.path.exists(str(dist.locate_file("setup.py"))):
            return Origin("source", package_dir)  # a clone's own selfguard.egg-info (left by a build)
        return Origin("index", NAME)
    if "vcs_info" in recorded:
        vcs = recorded["vcs_info"]
        commit = vcs.get("commit_id") or vcs.get("requested_revision")
        return Origin("vcs", f"{vcs.get('vcs', 'git')}+{url}" + (f"@{commit}" if commit else ""))
    if "archive_info" in recorded:
        return Origin("archive", _path_of(url))
    return Origin("directory", _path_of(url))


def pip() -> str:
    """pip as this interpreter runs it: the hint installs into the environment that imported selfguard."""
    return f"{shlex.quote(sys.executable or 'python3')} -m pip"


def reinstall_command(found: Optional[Origin] = None) -> str:
    """The command that reinstalls (so rebuilds) selfguard from where it came from, without touching its dependencies.

    --no-cache-dir: pip keeps a wheel it built from an sdist, and would install that
    one again, built without a compiler as it was.
    """
    found = found or origin()
    again = f"{pip()} install --force-reinstall --no-deps --no-cache-dir"
    if found.kind == "index":
        from ._version import __version__

        return f"{again} {shlex.quote(f'{NAME}=={__version__}')}"
    if found.kind == "editable":
        return f"{pip()} install --no-deps -e {shlex.quote(found.where)}"
    if found.kind == "archive" and found.where.endswith(".whl"):
        # A wheel is installed as built: a new one must carry the library.
        return (
            f"build a wheel that carries it where a C compiler is (python -m build, in a clone), then {again} THAT.whl"
        )
    if found.kind == "source":
        return f"{pip()} install {shlex.quote(found.where)}  (or build it in place: python setup.py build_ext -i)"
    return f"{again} {shlex.quote(found.where)}"


def install_command(python: str) -> str:
    """The command that installs this selfguard, from where it came from, for the interpreter *python*."""
    found = origin()
    pip = f"{shlex.quote(python)} -m pip install"
    if found.kind == "index":
        from ._version import __version__

        return f"{pip} {shlex.quote(f'{NAME}=={__version__}')}"
    if found.kind in ("editable", "directory", "source", "archive"):
        return f"{pip} {shlex.quote(found.where)}"
    return f"{pip} {shlex.quote(found.where)}"


def extra_command(extra: str) -> str:
    """The command that adds what selfguard[EXTRA] brings, from where selfguard was installed.

    From an index, the extra itself; from anywhere else, its requirements as the
    installed metadata lists them, which pip finds on the index without selfguard.
    """
    found = origin()
    if found.kind == "index":
        return f"{pip()} install {shlex.quote(f'{NAME}[{extra}]')}"
    requirements = _extra_requirements(extra)
    if found.kind in ("editable", "directory", "source") and not requirements:
        return f"{pip()} install {shlex.quote(f'{found.where}[{extra}]')}"
    return f"{pip()} install " + " ".join(shlex.quote(r) for r in requirements or [f"{NAME}[{extra}]"])


def _extra_requirements(extra: str) -> list[str]:
    from importlib import metadata

    try:
        requires = metadata.requires(NAME) or []
    except metadata.PackageNotFoundError:
        return []
    found = []
    for requirement in requires:
        spec, _, marker = requirement.partition(";")
        if marker.replace(" ", "").replace("'", '"') == f'extra=="{extra}"':
            found.append(spec.strip().replace(" ", ""))
    return found
