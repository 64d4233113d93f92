"""`python -m selfguard`: the `selfguard` command (selfguard._commands.main)."""

import sys

from ._commands.main import main

if __name__ == "__main__":
    sys.exit(main())
