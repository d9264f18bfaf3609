"""The external vectors in tests/vectors/ are there, unchanged, and each is documented."""

from __future__ import annotations

import hashlib

from tests.helpers import EXTERNAL_VECTORS


def test_every_external_vector_matches_its_recorded_digest() -> None:
    """SHA256SUMS lists every data file, and every file still has its digest."""
    sums = {}
    for line in (EXTERNAL_VECTORS / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        sums[name] = digest
    files = {
        str(p.relative_to(EXTERNAL_VECTORS))
        for p in EXTERNAL_VECTORS.glob("*/*")
        if p.parent.name != "LICENSES"
    }
    assert files == set(sums)
    for name, digest in sums.items():
        assert hashlib.sha256((EXTERNAL_VECTORS / name).read_bytes()).hexdigest() == digest, name


def test_every_external_vector_has_its_source_and_licence_in_the_readme() -> None:
    """Each file (or its folder) is named in the README, and each licence file exists."""
    readme = (EXTERNAL_VECTORS / "README.md").read_text()
    for p in EXTERNAL_VECTORS.glob("*/*"):
        if p.parent.name != "LICENSES":
            assert p.name in readme, p
    for licence in ("Apache-2.0.txt", "IETF-Trust-BSD-3-Clause.txt"):
        assert (EXTERNAL_VECTORS / "LICENSES" / licence).is_file()
        assert licence in readme
