"""The package's floors: a module imports only modules of its own group or a lower one, and only at its
top. The floors are read from the table in docs/architecture.md, so the doc and the code cannot drift.

One exception, by name: the command line imports each command's heavy modules (torch, timm,
transformers, papermill behind them) inside that command, so `iqa-kit --help` and a bad argument answer
at once."""
import ast
import re
import subprocess
import sys
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

# (function in cli.py, module it imports inside): exactly these, and nowhere else in the package.
LAZY_IN_CLI = {
    ("_run_notebook", "papermill"), ("reproduce", "papermill"),
    ("_rehearsal_weights", "iqa_utils.models"), ("_rehearsal_weights", "iqa_utils.runs.experiments"),
    ("reproduce", "iqa_utils.reporting.index"), ("reproduce", "iqa_utils.config.check"),
    ("_seed_config", "iqa_utils.config.check"),
    ("train", "iqa_utils.runs.experiments"), ("train", "iqa_utils.training.distributed"),
    ("predict", "iqa_utils.training.predict"), ("decisions", "iqa_utils.config.check"),
    ("_check_dataset", "iqa_utils.data.images"), ("_check_dataset", "iqa_utils.data.registry"),
    ("plan_cmd", "iqa_utils.runs.estimate"), ("weights_cmd", "iqa_utils.models"),
    ("_proxy_first", "iqa_utils.config.check"), ("_proxy_first", "iqa_utils.models.proxy"),
    ("proxy_cmd", "iqa_utils.config.check"), ("proxy_cmd", "iqa_utils.models.proxy"),
    ("weights_cmd", "iqa_utils.runs.experiments"), ("_check_dataset_names", "iqa_utils.data.registry"),
    ("check_args", "iqa_utils.devices"),
}
HEAVY = ("torch", "timm", "transformers", "papermill", "pandas", "scipy", "matplotlib")


def _lazy_imports(path: Path) -> set[tuple[str, str]]:
    """(function, module) of every import inside a function of path, the module as `_imports` names it
    (`from .models import weights`: iqa_utils.models)."""
    out = set()
    for fn in ast.walk(ast.parse(path.read_text())):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom) and node.level:
                    mod = ".".join(["iqa_utils"] + ([node.module] if node.module else []))
                    out |= {(fn.name, mod if node.module else f"{mod}.{a.name}") for a in node.names}
                elif isinstance(node, ast.Import):
                    out |= {(fn.name, a.name) for a in node.names}
    return out


def test_the_doc_names_every_group():
    assert {"system", "metrics", "config", "data", "models", "training", "runs", "reporting", "cli"} <= set(FLOOR)
    assert FLOOR["system"] < FLOOR["config"] < FLOOR["data"] < FLOOR["models"] < FLOOR["training"] \
        < FLOOR["runs"] < FLOOR["reporting"] < FLOOR["cli"]


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PKG)))
def test_imports_point_down_and_sit_at_the_top(path):
    me = _floor(_module(path))
    lazy = {mod for _, mod in LAZY_IN_CLI} if path == PKG / "cli.py" else set()
    for line, name, at_top in _imports(path):
        assert at_top or name in lazy, f"{path.name}:{line} imports {name} inside a function; move it to the top"
        if path.name != "__init__.py":
            assert _floor(name) <= me, f"{path.name}:{line} imports {name}, a group above it"


def test_every_module_is_on_a_floor():
    for path in SOURCES:
        if path.name != "__init__.py":
            _floor(_module(path))


def test_the_cli_imports_inside_functions_exactly_the_named_modules():
    assert _lazy_imports(PKG / "cli.py") == LAZY_IN_CLI


def test_importing_the_cli_loads_no_heavy_library():
    """What `iqa-kit --help` and an argument error pay for: no torch, timm, transformers, papermill."""
    code = f"import sys, iqa_utils.cli; print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_cli_names_what_it_does_not_import():
    """The model names, the LLaMA repo and the weights variable the CLI states without importing models."""
    from iqa_utils import cli
    from iqa_utils.models import list_models
    from iqa_utils.models.pretrained import LLAMA_HUB_ID, WEIGHTS_ENV
    assert list(cli.MODEL_NAMES) == [m for m in list_models() if not m.startswith("_")]
    assert (cli.LLAMA_REPO, cli.WEIGHTS_ENV) == (LLAMA_HUB_ID, WEIGHTS_ENV)
