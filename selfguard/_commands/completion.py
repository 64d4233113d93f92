"""`selfguard completion bash`: a bash completion script, written from the parser itself, so it never falls behind."""

from __future__ import annotations

import argparse
import shlex
from typing import TYPE_CHECKING

from .cli import EXIT_OK, TOP_LEVEL_OPTIONS

if TYPE_CHECKING:
    from .cli import Commands

DESCRIPTION = """\
Print a bash completion script for `selfguard`: its commands, and each command's
options. Load it in the current shell, or install it for every new one:

  source <(selfguard completion bash)
  selfguard completion bash > ~/.local/share/bash-completion/completions/selfguard

zsh can use it after `autoload -U bashcompinit && bashcompinit`. The script is
written from this selfguard's parser: write it again after an upgrade.

exit status:
  0  printed
  2  usage error"""

# bash, filled in per command below. After `run`'s options, the words are a
# command line of its own: complete a command name, then files.
TEMPLATE = """\
# bash completion for selfguard, written by `selfguard completion bash`
_selfguard() {{
    local cur=${{COMP_WORDS[COMP_CWORD]}} prev=${{COMP_WORDS[COMP_CWORD-1]}}
    local command="" start=-1 i word words
    for ((i = 1; i < COMP_CWORD; i++)); do
        word=${{COMP_WORDS[i]}}
        if [[ -z $command ]]; then
            [[ $word != -* ]] && command=$word
        elif [[ $command == run && $start -lt 0 ]]; then
            if [[ $word == -- ]]; then start=$((i + 1)); elif [[ $word != -* ]]; then start=$i; fi
        fi
    done
    if ((start >= 0)); then
        # run's CMD: a command name, then whatever that command takes (files).
        if ((COMP_CWORD == start)); then COMPREPLY=($(compgen -c -- "$cur")); else
            compopt -o default 2>/dev/null; COMPREPLY=(); fi
        return
    fi
    case " {takes_value} " in
        *" $command:$prev "*) compopt -o default 2>/dev/null; COMPREPLY=(); return ;;
    esac
    case $command in
{cases}
        *) words="" ;;
    esac
    COMPREPLY=($(compgen -W "$words" -- "$cur"))
    if [[ $command == run && $cur != -* ]]; then COMPREPLY+=($(compgen -c -- "$cur")); fi
}}
complete -F _selfguard selfguard
"""


def script(commands: dict[str, argparse.ArgumentParser]) -> str:
    """The bash completion script for a `selfguard` whose commands are *commands*."""
    cases = ['        "") words={} ;;'.format(shlex.quote(" ".join([*commands, *TOP_LEVEL_OPTIONS])))]
    takes_value = []
    for name, parser in commands.items():
        # Options, and the values a positional takes from a fixed list (`completion bash`).
        options = [option for action in parser._actions for option in action.option_strings]
        options += [
            str(choice) for action in parser._actions if not action.option_strings for choice in action.choices or ()
        ]
        cases.append(f"        {shlex.quote(name)}) words={shlex.quote(' '.join(options))} ;;")
        takes_value += [
            f"{name}:{option}"
            for action in parser._actions
            if action.option_strings and action.nargs != 0
            for option in action.option_strings
        ]
    return TEMPLATE.format(cases="\n".join(cases), takes_value=" ".join(takes_value))


def register(commands: Commands) -> None:
    """Add the `completion` command to the `selfguard` parser's subcommands."""
    parser = commands.add_parser(
        "completion",
        help="print a bash completion script for selfguard",
        description=DESCRIPTION,
    )
    parser.add_argument("shell", choices=["bash"], help="the shell to complete in (bash)")

    def handle(args: argparse.Namespace) -> int:
        # Every command is registered by the time one runs: the script lists them all.
        print(script(dict(commands.choices)), end="")
        return EXIT_OK

    parser.set_defaults(func=handle)
