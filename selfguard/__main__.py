"""The `selfguard` command: `python -m selfguard` shows the bug and the guard on this machine."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="selfguard",
        description="Show a real TCP self-connect on this machine, unguarded and then guarded by selfguard.",
    )
    parser.parse_args(argv)
    from ._demo import main as demo

    try:
        return demo()
    except BrokenPipeError:
        # `selfguard | head`: the reader went away; say nothing more.
        sys.stdout = None
        return 0


if __name__ == "__main__":
    sys.exit(main())
