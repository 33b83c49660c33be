"""The package's floors: a module imports only modules of its own group or a lower one, and only at its
top. The floors are read from the table in docs/architecture.md, so the doc and the code cannot drift."""
import ast
import re
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "iqa_utils"
DOC = PKG.parent / "docs" / "architecture.md"


def _floors() -> dict[str, int]:
    """group or top-level module name -> floor, from the '| floor | group | ... |' rows of the doc."""
    floors = {}
    for line in DOC.read_text().splitlines():
        m = re.match(r"\|\s*(\d+)\s*\|([^|]*)\|", line)
        if m:
            for name in re.findall(r"`([\w]+)/?`", m.group(2)):
                floors[name] = int(m.group(1))
    return floors


FLOOR = _floors()


def _module(path: Path) -> str:
    return ".".join(path.relative_to(PKG.parent).with_suffix("").parts)


def _floor(module: str) -> int:
    parts = module.split(".")[1:]                   # drop "iqa_utils"
    if parts == ["__version__"]:                    # the package's own version string
        return 0
    if not parts or parts == ["__init__"]:
        return max(FLOOR.values()) + 1
    if parts[0] not in FLOOR:
        raise AssertionError(f"{module} is on no floor: add its group to the table in docs/architecture.md")
    return FLOOR[parts[0]]


def _imports(path: Path):
    """(line, imported module, at top level) of every import of the package's own modules."""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    here = _module(path).split(".")
    pkg = here[:-1] if path.name != "__init__.py" else here
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = pkg[:len(pkg) - node.level + 1] if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            names = [mod] if node.module else [f"{mod}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            if name.startswith("iqa_utils"):
                yield node.lineno, name, id(node) in top


SOURCES = sorted(PKG.rglob("*.py"))


def test_the_doc_names_every_group():
    assert {"system", "metrics", "config", "data", "models", "training", "runs", "reporting", "cli"} <= set(FLOOR)
    assert FLOOR["system"] < FLOOR["config"] < FLOOR["data"] < FLOOR["models"] < FLOOR["training"] \
        < FLOOR["runs"] < FLOOR["reporting"] < FLOOR["cli"]


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PKG)))
def test_imports_point_down_and_sit_at_the_top(path):
    me = _floor(_module(path))
    for line, name, at_top in _imports(path):
        assert at_top, f"{path.name}:{line} imports {name} inside a function; move it to the top"
        if path.name != "__init__.py":
            assert _floor(name) <= me, f"{path.name}:{line} imports {name}, a group above it"


def test_every_module_is_on_a_floor():
    for path in SOURCES:
        if path.name != "__init__.py":
            _floor(_module(path))
