"""`selfguard completion bash`: the script, loaded into a real bash, completes commands and options from the parser."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from helpers import commands_of, options_of, require, selfguard_parser

# Source the script, then ask the completion function as bash's `complete` would.
ASK = """
source <("$SELFGUARD_PYTHON" -m selfguard completion bash) || exit 9
COMP_WORDS=($LINE); COMP_CWORD=${#COMP_WORDS[@]}
[[ $LINE == *" " ]] && { COMP_WORDS+=(""); COMP_CWORD=${#COMP_WORDS[@]}; }
COMP_CWORD=$((COMP_CWORD - 1))
_selfguard
printf '%s\\n' "${COMPREPLY[@]}"
"""


def complete(line: str) -> list[str]:
    """What bash offers for the last word of *line* (a trailing space: a new, empty word)."""
    require(shutil.which("bash") is not None, "needs bash")
    done = subprocess.run(
        ["bash", "-c", ASK],
        env={"PATH": "/usr/bin:/bin", "LINE": line, "SELFGUARD_PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert 0 == done.returncode, done.stderr
    return sorted(filter(None, done.stdout.splitlines()))


def test_the_commands_are_completed(monkeypatch):
    """`selfguard <TAB>` offers every command main() registers, and the top-level options."""
    commands = set(commands_of(selfguard_parser(monkeypatch)))
    assert {"repro", "doctor", "run", "completion"} <= commands
    assert sorted({"-h", "--help", "--version", *commands}) == complete("selfguard ")
    assert ["doctor"] == complete("selfguard do")


@pytest.mark.parametrize(
    ("command", "prefix"), [("doctor", "--d"), ("doctor", "--p"), ("repro", "--max-"), ("run", "--n"), ("run", "--")]
)
def test_each_commands_options_are_completed(monkeypatch, command, prefix):
    """After a command, its own options that start with what was typed, as its parser has them."""
    options = options_of(commands_of(selfguard_parser(monkeypatch))[command])
    expected = sorted(option for option in options if option.startswith(prefix))
    assert expected, f"{command} has no option starting {prefix}: the case checks nothing"
    assert expected == complete(f"selfguard {command} {prefix}")


def test_a_positionals_fixed_values_are_completed():
    """`selfguard completion <TAB>` offers the shells it writes for."""
    assert ["--help", "-h", "bash"] == complete("selfguard completion ")


def test_after_run_the_command_line_is_cmds():
    """`selfguard run --native -- ba<TAB>` completes a command name (bash among them), not selfguard's options."""
    offered = complete("selfguard run --native -- ba")
    assert "bash" in offered and not any(word.startswith("-") for word in offered)


def test_an_unknown_shell_is_a_usage_error():
    """Only bash is offered; another shell is argparse's usage error, status 2."""
    done = subprocess.run(
        [sys.executable, "-m", "selfguard", "completion", "fish"], capture_output=True, text=True, timeout=60
    )
    assert 2 == done.returncode
    assert "invalid choice: 'fish'" in done.stderr
