"""`selfguard completion bash`: the script, loaded into a real bash, completes commands and options from the parser."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from helpers import commands_of, require, selfguard_parser

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
    ("line", "expected"),
    [
        ("selfguard doctor --d", ["--dry-run"]),
        ("selfguard doctor --p", ["--persist", "--pid", "--port"]),
        ("selfguard repro --max-", ["--max-attempts", "--max-seconds"]),
        ("selfguard run --n", ["--native"]),
        ("selfguard completion ", ["--help", "-h", "bash"]),
    ],
)
def test_each_commands_options_are_completed(line, expected):
    """After a command, its own options (and a positional's fixed values)."""
    assert expected == complete(line)


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
