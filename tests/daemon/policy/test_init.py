"""pstp.daemon.policy: the package re-exports the public names of its modules."""

from __future__ import annotations

import importlib

import pstp.daemon.policy as policy
from pstp.daemon.policy import check, load, model


def test_every_public_name_is_re_exported_unchanged() -> None:
    """Each name of the package's __all__ is the object its module defines."""
    for name in policy.__all__:
        owner = check if name == "Policy" else model
        assert getattr(policy, name) is getattr(owner, name), name


def test_modules_define_their_all() -> None:
    """Each module's __all__ names only what it defines or re-exports on purpose."""
    for module in (model, check, load):
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.{name}"


def test_old_import_path_keeps_working() -> None:
    """`from pstp.daemon.policy import X` still works for the names callers use."""
    mod = importlib.import_module("pstp.daemon.policy")
    for name in ("Decision", "Policy", "ActionRequest", "FileRoot", "parse_target"):
        assert hasattr(mod, name)
