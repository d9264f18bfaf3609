"""PSTP/2: private, authenticated, encrypted access to your own devices."""

from __future__ import annotations

__all__: list[str] = []
