"""No module of pstp reaches into another module's private names."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "pstp"


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _offences(source: str, here: str) -> list[str]:
    """Each place module ``here`` (with ``source``) uses another pstp module's private name."""
    tree = ast.parse(source, here)
    modules: dict[str, str] = {}  # local alias -> pstp module it names
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pstp"):
            for alias in node.names:
                target = f"{node.module}.{alias.name}"
                if _private(alias.name) and node.module != here:
                    found.append(f"{here}:{node.lineno} imports {target}")
                modules[alias.asname or alias.name] = target
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("pstp"):
                    if any(_private(p) for p in alias.name.split(".")):
                        found.append(f"{here}:{node.lineno} imports {alias.name}")
                    if alias.asname:
                        modules[alias.asname] = alias.name
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and _private(node.attr)
            and isinstance(node.value, ast.Name)
            and node.value.id in modules
            and modules[node.value.id] != here
        ):
            found.append(f"{here}:{node.lineno} uses {modules[node.value.id]}.{node.attr}")
    return found


def test_no_module_imports_another_modules_private_names() -> None:
    """`from pstp.x import _y`, `import pstp._x` and `x._y` on an imported module are refused."""
    offences = [
        o
        for path in sorted(SRC.rglob("*.py"))
        for o in _offences(path.read_text(encoding="utf-8"), _module_name(path))
    ]
    assert offences == []


def test_the_checker_sees_each_form() -> None:
    """The checker finds the three forms and accepts a module's own names and dunders."""
    source = "\n".join(
        [
            "from pstp.settings import _line_of",
            "import pstp._hidden",
            "from pstp import settings as s",
            "from pstp.exceptions import __all__",
            "from pstp.probe import _mine",
            "x = s._line_of",
        ]
    )
    assert _offences(source, "pstp.probe") == [
        "pstp.probe:1 imports pstp.settings._line_of",
        "pstp.probe:2 imports pstp._hidden",
        "pstp.probe:6 uses pstp.settings._line_of",
    ]
