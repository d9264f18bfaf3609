"""The pstp.files package: its frames load alone, and no module borrows another's privates."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

from tests.helpers import ROOT

#: The modules of file transfer, and those built on them.
MODULES = [
    *sorted((ROOT / "src" / "pstp" / "files").glob("*.py")),
    ROOT / "src" / "pstp" / "daemon" / "files.py",
    ROOT / "src" / "pstp" / "client" / "files.py",
]


def test_the_frames_load_without_any_io_module() -> None:
    """Importing pstp.files.frames (the sans-I/O decoder) pulls in no asyncio, socket or fcntl."""
    code = (
        "import sys, pstp.files.frames; "
        "print(sorted(m for m in ('asyncio', 'socket', 'fcntl', 'selectors') if m in sys.modules))"
    )
    # Without coverage's subprocess measurement, which imports socket itself.
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_")}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert out.stdout.strip() == "[]"


def test_no_module_imports_another_module_s_private_names() -> None:
    """`from pstp.x import _name` appears nowhere in file transfer (issue 10, item 5)."""
    borrowed = []
    for path in MODULES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pstp"):
                borrowed += [
                    f"{path.name}: {node.module}.{a.name}" for a in node.names if a.name[0] == "_"
                ]
    assert borrowed == []
