"""Call sites a reader can trust: what travels together is one value (TestCrops, Timing, Precision), checked
when made, and no call to the training or cost functions passes neighbours of the same kind by position."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from iqa_utils.config.fields import ConfigError
from iqa_utils.devices import Precision
from iqa_utils.models import costs
from iqa_utils.models.base import TEST_CROP_MODES, TestCrops
from iqa_utils.system import KitError
from iqa_utils.training import engine
from iqa_utils.training.evaluation import evaluate, predict_rows

ROOT = Path(__file__).resolve().parents[1]
# the modules whose functions are called from everywhere: their signatures are held to the rule
MODULES = ("iqa_utils.training.evaluation", "iqa_utils.training.engine", "iqa_utils.training.predict",
           "iqa_utils.training.optim", "iqa_utils.models.costs")
MAX_POSITIONAL_PARAMS = 4
MAX_POSITIONAL_ARGS = 3
# a run is (cfg, manifest, split, out_dir), four values of different kinds: train_run's documented form
RUN_FORM = {"train_run": 4, "setup": 4}
# mirrors data.store.CropSampler's methods, whose signatures belong to the data layer
EXEMPT_CLASSES = {"SyntheticSampler"}


@pytest.mark.parametrize("make, field", [
    (lambda: TestCrops(n=0, size=32), "TestCrops.n"),
    (lambda: TestCrops(n=2, size=0), "TestCrops.size"),
    (lambda: TestCrops(n=2.5, size=32), "TestCrops.n"),
    (lambda: TestCrops(n=2, size=32, seed=-1), "TestCrops.seed"),
    (lambda: TestCrops(n=2, size=32, mode="centre"), "TestCrops.mode"),
    (lambda: costs.Timing(iters=0), "Timing.iters"),
    (lambda: costs.Timing(train_batch=0), "Timing.train_batch"),
    (lambda: costs.Timing(warmup=-1), "Timing.warmup"),
])
def test_grouped_values_refuse_a_bad_field_in_one_line(make, field):
    with pytest.raises(ConfigError) as e:
        make()
    message = str(e.value)
    assert message.startswith(f"{field}: ") and "\n" not in message


def test_precision_refuses_what_is_not_a_float_dtype():
    with pytest.raises(KitError, match=r"^Precision.dtype: 'bf16' is not a floating torch dtype"):
        Precision("bf16")
    with pytest.raises(KitError, match=r"^Precision.dtype: torch.int8"):
        Precision(torch.int8)
    with pytest.raises(KitError, match=r"^Precision.channels_last"):
        Precision(None, channels_last=1)


def test_grouped_values_are_frozen_and_mirror_the_config():
    crops = TestCrops(n=2, size=32)
    with pytest.raises(AttributeError):
        crops.n = 3
    assert TEST_CROP_MODES == ("seeded_random", "grid", "random")       # data.test_crops' choices
    assert (crops.mode, crops.seed) == ("seeded_random", 0)
    assert costs.Timing(**{"batch": 1, "train_batch": 2, "warmup": 0, "iters": 1}).train_batch == 2
    x = torch.zeros(2, 3, 4, 4)
    assert Precision(channels_last=True).layout(x).is_contiguous(memory_format=torch.channels_last)
    assert Precision().layout(x) is x


def test_the_old_positional_forms_fail():
    """The old calls (n_crops, size, ... by position) now fail at the call, before any work is done."""
    with pytest.raises(TypeError):
        evaluate(None, None, [0], [1.0], 3, 32)                       # labels, n_crops, size by position
    with pytest.raises(TypeError):
        predict_rows(None, None, [0], 3, 32)
    with pytest.raises(TypeError):
        engine.forward_backward(None, None, None, None, None, 8, "cpu")
    with pytest.raises(TypeError):
        costs.cost_table({}, None, "cpu", 1, None, True, None, False, 3, 10)
    with pytest.raises(TypeError):
        costs.latency(None, None, "cpu", 1, 3, 10)                     # batch, warmup, iters by position


# ---- the rule, read from the source -------------------------------------------------------------
def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def _resolve(module: str | None, level: int, here: str) -> str:
    """The absolute module of a `from module import ...` in the module `here`."""
    if not level:
        return module or ""
    base = here.split(".")[:-level]
    return ".".join(base + ([module] if module else []))


def _targets(tree: ast.Module, here: str) -> tuple[dict, dict]:
    """({local name: function name} imported from MODULES, {local alias: module} of MODULES)."""
    names, aliases = {}, {}
    if here in MODULES:
        names.update({n.name: n.name for n in tree.body if isinstance(n, ast.FunctionDef)})
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            source = _resolve(node.module, node.level, here)
            for a in node.names:
                if source in MODULES:
                    names[a.asname or a.name] = a.name
                elif f"{source}.{a.name}" in MODULES:
                    aliases[a.asname or a.name] = f"{source}.{a.name}"
        elif isinstance(node, ast.Import):
            aliases.update({a.asname: a.name for a in node.names if a.name in MODULES and a.asname})
    return names, aliases


def _files():
    for folder in ("iqa_utils", "tests", "benchmarks"):
        yield from sorted((ROOT / folder).rglob("*.py"))


def test_no_function_takes_many_positional_parameters():
    wide = []
    for module in MODULES:
        path = ROOT / (module.replace(".", "/") + ".py")
        tree = ast.parse(path.read_text())
        exempt = {id(f) for c in ast.walk(tree) if isinstance(c, ast.ClassDef) and c.name in EXEMPT_CLASSES
                  for f in c.body}
        for fn in ast.walk(tree):
            if isinstance(fn, ast.FunctionDef) and id(fn) not in exempt:
                params = [a.arg for a in fn.args.posonlyargs + fn.args.args if a.arg not in ("self", "cls")]
                if len(params) > RUN_FORM.get(fn.name, MAX_POSITIONAL_PARAMS):
                    wide.append(f"{module}:{fn.lineno} {fn.name}({', '.join(params)})")
    assert wide == [], "make the later parameters keyword-only (after *):\n" + "\n".join(wide)


def _wide_calls(tree: ast.Module, here: str) -> list[tuple[int, str, int]]:
    """(line, function, positional arguments) of each call to a function of MODULES with too many."""
    names, aliases = _targets(tree, here)
    found = []
    for call in ast.walk(tree):
        if not isinstance(call, ast.Call):
            continue
        f = call.func
        name = names.get(f.id) if isinstance(f, ast.Name) else \
            f.attr if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id in aliases \
            else None
        if name and len(call.args) > RUN_FORM.get(name, MAX_POSITIONAL_ARGS):
            found.append((call.lineno, name, len(call.args)))
    return found


def test_no_call_passes_many_positional_arguments():
    found = [f"{path.relative_to(ROOT)}:{line} {name} with {n} positional"
             for path in _files() if path != Path(__file__).resolve()     # the old forms above, on purpose
             for line, name, n in _wide_calls(ast.parse(path.read_text()), _module_name(path))]
    assert found == [], "name the arguments:\n" + "\n".join(found)


def test_the_rule_sees_calls_through_both_import_forms():
    tree = ast.parse("from iqa_utils.models import costs\nfrom iqa_utils.training.evaluation import evaluate\n"
                     "costs.latency(m, 1, 'cpu', 2)\nevaluate(a, b, c, d)\nevaluate(a, b, c, labels=d)\n"
                     "other.latency(m, 1, 'cpu', 2)\n")
    assert _wide_calls(tree, "tests.example") == [(3, "latency", 4), (4, "evaluate", 4)]
    inside = ast.parse("def train_run(cfg, manifest, split, out_dir): ...\ntrain_run(1, 2, 3, 4)\n"
                       "_eval(1, 2, 3, 4, 5)\ndef _eval(*a): ...\n")
    assert _wide_calls(inside, "iqa_utils.training.engine") == [(3, "_eval", 5)]
