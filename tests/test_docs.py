"""The docs name only what the code has: commands, options, SELFGUARD_* variables, stand-ins, exit statuses.

Every truth is read from the code, so the check follows the code as commands
and variables are added: the `selfguard` parsers as main() builds them, the
pytest plugin's options, the variables the package and the native library
read, and the bootstrap's list of stand-ins.
"""

from __future__ import annotations

import argparse
import ast
import re
from pathlib import Path
from typing import Any

from selfguard import _config, pytest_plugin

from helpers import commands_of, options_of, selfguard_parser

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", ROOT / "sitecustomize_example" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# Long options that docs name on their own (outside a `selfguard ...` command) but that
# belong to another tool. Anything else named so must be an option of selfguard or its plugin.
OTHER_TOOLS_OPTIONS = {"--no-compile": "pip install", "--no-cache-dir": "pip install"}
NUMBERS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8}


def plugin_options() -> set[str]:
    """The pytest plugin's command-line options, from its own pytest_addoption."""
    names: set[str] = set()

    class Recorder:
        def getgroup(self, *args: Any, **kwargs: Any) -> Recorder:
            return self

        def addoption(self, *option_names: str, **kwargs: Any) -> None:
            names.update(option_names)

        def addini(self, *args: Any, **kwargs: Any) -> None:
            pass

    pytest_plugin.pytest_addoption(Recorder())  # type: ignore[arg-type]
    return names


def benchmark_options() -> set[str]:
    """The options the scripts in benchmarks/ take, read from their add_argument() calls."""
    names: set[str] = set()
    for path in (ROOT / "benchmarks").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
                constants = [arg.value for arg in node.args if isinstance(arg, ast.Constant)]
                names.update(value for value in constants if str(value).startswith("-"))
    return names


def variables() -> set[str]:
    """SELFGUARD and every SELFGUARD_* the code reads: the options', names written in the package, setup.py, the C."""
    found = {"SELFGUARD", *(_config.env_name(option) for option in _config.Options._fields)}
    package = ROOT / "selfguard"
    for path in (*package.rglob("*.py"), ROOT / "setup.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and re.fullmatch(r"SELFGUARD_[A-Z_]+", str(node.value)):
                found.add(node.value)
    for path in package.rglob("*.c"):
        found.update(re.findall(r'"(SELFGUARD_[A-Z_]+)"', path.read_text()))
    return found


def stand_ins() -> dict[str, tuple[str, ...]]:
    """Class ("socket.socket") -> the methods the bootstrap puts stand-ins on, read from its source."""
    tree = ast.parse((ROOT / "selfguard" / "_bootstrap" / "sitecustomize.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "_SELFGUARD_DEFERRED" for t in node.targets):
            deferred = ast.literal_eval(node.value)
            return {f"{module}.{cls}": tuple(methods) for module, (cls, methods) in deferred.items()}
    raise AssertionError("the bootstrap's _SELFGUARD_DEFERRED was not found")


def code_of(text: str) -> tuple[list[str], list[str]]:
    """The fenced blocks' lines and the inline code spans of a Markdown text."""
    lines = [line for block in re.findall(r"```[^\n]*\n(.*?)```", text, re.S) for line in block.splitlines()]
    prose = re.sub(r"```[^\n]*\n.*?```", "", text, flags=re.S)
    return lines, re.findall(r"`([^`\n]+)`", prose)


# `selfguard` where a shell would run it: at the start of a line or span (after a path
# such as .venv/bin/, or VAR=value words), or after ; && || | ( $(.
INVOCATION = re.compile(r"(?:^|[;&|(]\s*|\$\(\s*)(?:[A-Z_]+=\S*\s+)*(?:\S*/)?selfguard((?:[ \t]+[^\s;&|)`#]+)*)")


def invocations(snippet: str) -> list[list[str]]:
    """The words after each `selfguard` a shell would run in *snippet*, placeholders' brackets dropped."""
    found = []
    for match in INVOCATION.finditer(snippet.strip()):
        words = [word.strip("[]").rstrip(".,") for word in match.group(1).split()]
        found.append([word for word in words if word and word != "..."])
    return found


def named_in_docs() -> list[tuple[str, str]]:
    """(document, code snippet) for every fenced line and inline span of every document."""
    snippets = []
    for doc in DOCS:
        lines, spans = code_of(doc.read_text())
        snippets += [(doc.relative_to(ROOT).as_posix(), snippet) for snippet in (*lines, *spans)]
    return snippets


def unknown_in_invocation(words: list[str], top: set[str], commands: dict[str, argparse.ArgumentParser]) -> list[str]:
    """What in `selfguard WORDS` the parser does not have: a command, or an option of it."""
    unknown, command = [], None
    for word in words:
        if word == "--" or (command == "run" and not word.startswith("-")):
            break  # CMD and its own arguments follow
        if word.startswith("-"):
            option = word.split("=")[0]
            known = top | options_of(commands[command or "repro"])  # no command: repro's options, as main() does
            if option not in known:
                unknown.append(f"option {option} of {command or 'selfguard'}")
        elif command is None:
            if word.isupper() or not re.fullmatch(r"[a-z][a-z-]*", word):
                break  # a placeholder (COMMAND) or not a command word at all
            command = word
            if word not in commands:
                unknown.append(f"command {word}")
                break
    return unknown


def test_every_selfguard_command_and_option_in_the_docs_exists(monkeypatch):
    """`selfguard WORD --option` in a doc: WORD is a command of the parser, each option one of that command's."""
    parser = selfguard_parser(monkeypatch)
    commands = commands_of(parser)
    assert {"repro", "doctor", "run"} <= set(commands)
    top = options_of(parser)
    wrong = [
        f"{doc}: {problem} in {snippet!r}"
        for doc, snippet in named_in_docs()
        for words in invocations(snippet)
        for problem in unknown_in_invocation(words, top, commands)
    ]
    assert [] == wrong, "\n".join(wrong)


def test_every_option_named_on_its_own_exists(monkeypatch):
    """A long option named alone (`--apply`) is selfguard's, its pytest plugin's, a benchmark's or a known tool's."""
    parser = selfguard_parser(monkeypatch)
    known = options_of(parser) | plugin_options() | benchmark_options() | set(OTHER_TOOLS_OPTIONS)
    for command in commands_of(parser).values():
        known |= options_of(command)
    wrong = []
    for doc, snippet in named_in_docs():
        match = re.fullmatch(r"(--[a-z][a-z0-9-]*)(?:[ =]\S+)?", snippet.strip())
        if match and match.group(1) not in known:
            wrong.append(f"{doc}: {snippet!r}")
    assert [] == wrong, "\n".join(wrong)


def test_every_variable_named_in_the_docs_is_read_by_the_code():
    """Each SELFGUARD_* a doc names is one the code reads."""
    known = variables()
    wrong = sorted(
        f"{doc.relative_to(ROOT)}: {name}"
        for doc in DOCS
        for name in set(re.findall(r"\bSELFGUARD_[A-Z_]*[A-Z]", doc.read_text()))
        if name not in known
    )
    assert [] == wrong, "\n".join(wrong)


def test_the_stand_ins_the_docs_name_are_the_bootstraps():
    """ "N stand-ins on `cls` (`a`, `b`)" in a doc: N and the methods listed are the bootstrap's for that class."""
    deferred = stand_ins()
    wrong, seen = [], 0
    for doc in DOCS:
        text = re.sub(r"\s+", " ", doc.read_text())
        where = doc.relative_to(ROOT)
        for number, cls, listed in re.findall(r"\b(\w+) (?:small )?stand-ins on `([\w.]+)`(?: \(([^)]*)\))?", text):
            seen += 1
            methods = deferred.get(cls)
            if methods is None:
                wrong.append(f"{where}: stand-ins on {cls}, which the bootstrap does not patch")
                continue
            if NUMBERS.get(number, len(methods)) != len(methods):
                wrong.append(f"{where}: {number} stand-ins on {cls}; the bootstrap has {len(methods)}: {methods}")
            named = re.findall(r"`(\w+)`", listed)
            if listed and sorted(named) != sorted(methods):
                wrong.append(f"{where}: stand-ins on {cls} listed as {named}; the bootstrap's are {methods}")
    assert seen, "no doc says which stand-ins the bootstrap puts on: the check checks nothing"
    assert [] == wrong, "\n".join(wrong)


def exit_statuses(parser: argparse.ArgumentParser) -> set[int]:
    """The statuses a command's --help lists under "exit status:"."""
    text = "\n".join(filter(None, (parser.description, parser.epilog)))
    listing = text.split("exit status:", 1)[-1] if "exit status:" in text else ""
    return {int(status) for status in re.findall(r"^\s+(\d+)\s", listing, re.M)}


def test_the_exit_status_table_agrees_with_each_commands_help(monkeypatch):
    """docs/operations.md's table has a meaning for each status a command's --help lists, and none it does not."""
    commands = commands_of(selfguard_parser(monkeypatch))
    text = (ROOT / "docs" / "operations.md").read_text()
    header, _, *rows = [line for line in text.splitlines() if line.startswith("| ")][:20]
    columns = [cell.strip() for cell in header.strip("|").split("|")]
    assert "status" == columns[0]
    wrong = []
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        if not re.fullmatch(r"[\d /]+", cells[0]):
            break  # the table is over
        for status in map(int, re.findall(r"\d+", cells[0])):
            for name, cell in zip(columns[1:], cells[1:]):
                listed = status in exit_statuses(commands[name]) or "CMD's own" in cell
                if listed != (cell != "—"):
                    wrong.append(f"status {status} of {name}: table says {cell!r}, --help lists {listed}")
    assert [] == wrong, "\n".join(wrong)


def test_the_check_catches_a_misspelt_command_and_option(monkeypatch):
    """The invocation check can fail: a misspelt command, a misspelt option, an option of another command."""
    parser = selfguard_parser(monkeypatch)
    commands, top = commands_of(parser), options_of(parser)

    def problems(snippet: str) -> list[str]:
        return [problem for words in invocations(snippet) for problem in unknown_in_invocation(words, top, commands)]

    assert ["command doctr"] == problems("selfguard doctr --apply")
    assert ["option --max-atempts of repro"] == problems(".venv/bin/selfguard repro --max-atempts 5")
    assert ["option --native of doctor"] == problems("sudo true && SELFGUARD=0 selfguard doctor --native")
    assert [] == problems("selfguard run --native -- python -m pytest --json")  # CMD's options are CMD's
    assert [] == problems("pip install --force-reinstall --no-deps selfguard")  # not a selfguard command line


# A duration or cost in ms or µs. docs/costs.md is the one page that quotes measured ones;
# the others link to it, so two pages can't disagree.
FIGURE = re.compile(r"(?<![\w.])(\d+(?:[.,]\d+)?)\s?(ms|µs)\b")


def test_measured_costs_are_quoted_only_in_costs_md():
    """Only docs/costs.md quotes figures in ms or µs; elsewhere only the code's constants (retry budget, grace)."""
    from selfguard._commands.watch import GRACE
    from selfguard._connect import MIN_RETRY_BUDGET

    constants = {f"{MIN_RETRY_BUDGET * 1000:g} ms", f"{GRACE * 1000:g} ms"}
    wrong = [
        f"{doc.relative_to(ROOT)}: {value} {unit}"
        for doc in DOCS
        if doc.name != "costs.md"
        for value, unit in FIGURE.findall(doc.read_text())
        if f"{value} {unit}" not in constants
    ]
    assert [] == wrong, "\n".join(wrong)
