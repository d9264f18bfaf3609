"""The test suite's network guard; see :mod:`tests.netguard.sitecustomize`."""
