"""Cryptographic primitives: the only importer of `cryptography`."""

from __future__ import annotations

__all__: list[str] = []
