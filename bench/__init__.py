"""PSTP benchmarks (not part of the package): ``python -m bench [--quick]``.

Every module here that a measured process runs imports as little as it can, so
that start-up figures are PSTP's and not the harness's.  See docs/benchmarks.md.
"""
