"""The sans-I/O protocol core."""

from __future__ import annotations

__all__: list[str] = []
