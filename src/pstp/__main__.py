"""``python -m pstp``: the command-line interface."""

from __future__ import annotations

import sys

from pstp.cli.main import main

__all__: list[str] = []

if __name__ == "__main__":
    sys.exit(main())
