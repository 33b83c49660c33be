"""Every ablation row differs from its full method in exactly what its label names.

For each row of `experiments.ABLATIONS` (both methods) the row's model is built beside the full
method's from the same seed and trained one step on the same batch; the test compares what differs:
the config fields, the parameters the loss trains (those with a non-zero gradient), the loss terms
(the logged keys), and, where none of those is named, the loss value on that batch (or, for mutual
learning, the teacher's update). A row whose override stopped doing anything, or one that silently
changed something its label does not name, fails here.
"""
from __future__ import annotations


import pytest
import torch

from iqa_utils.config.check import make_config
from iqa_utils.models import costs
from iqa_utils.models.registry import create_model
from iqa_utils.runs.experiments import ABLATIONS, FULL_SIZE_ONLY

from helpers import FakeCSFIQASampler, FakeLMLIQASampler

SMALL_BRANCH = ("encoder.patch_embed.0.", "encoder.cls_token_0", "encoder.pos_embed_0", "encoder.norm.0.",
                "encoder.blocks.", "to_common.", "proj_small.")
NSM_TERMS = {"loss_nsm", "nsm_noise"}
SCL_TERMS = {"loss_scl", "loss_intra", "loss_inter", "scl_anchors"} | NSM_TERMS

# label -> (fields that differ, prefixes of the parameters no longer / newly trained, loss terms gone,
#           loss terms added, what else must differ: "loss" (the loss on the same batch) or "teacher")
EXPECTED = {
    "csfiqa": {
        "CSFIQA (full)": (set(), (), set(), set(), None),
        "w/o SCL": ({"csfiqa.scl"}, ("proj_large.", "proj_small."), SCL_TERMS, set(), None),
        "w/o NSM": ({"csfiqa.nsm"}, (), NSM_TERMS, set(), None),
        "NSM pooled (one weight per image)": ({"csfiqa.nsm"}, (), {"loss_nsm"}, set(), None),
        "w/o AFS (dense attention)": ({"csfiqa.afs"}, (), set(), set(), "loss"),
        "w/o Information Concentrator": ({"csfiqa.ic"}, ("ic.",), set(), set(), None),
        "w/o SFA (neither AFS nor IC)": ({"csfiqa.afs", "csfiqa.ic"}, ("afs.", "ic."), set(), set(), None),
        "IC: a trainable block instead of LLaMA": ({"csfiqa.ic"}, ("ic.",), set(), set(), None),
        "IC: LLaMA layer 15 instead of 31": ({"csfiqa.ic_layer"}, (), set(), set(), None),
        "one scale": ({"csfiqa.scale_mode"}, SMALL_BRANCH, {"loss_inter"} | NSM_TERMS, set(), None),
    },
    "lmliqa": {
        "inter-image negatives only": ({"lmliqa.intra_negatives"}, (), set(), set(), "loss"),
        "+ intra-image negatives (LML-IQA)": (set(), (), set(), set(), None),
        "saliency: spectral residual": ({"lmliqa.saliency"}, (), set(), set(), "loss"),
        "saliency: random (random positive)": ({"lmliqa.saliency"}, (), set(), set(), "loss"),
        "anchor: the training crop": ({"lmliqa.anchor"}, (), set(), set(), "loss"),
        "anchor: a native-resolution crop at the saliency peak": ({"lmliqa.anchor"}, (), set(), set(), "loss"),
        "two-term loss (v1 reading)": ({"lmliqa.loss_form"}, (), set(), set(), "loss"),
        "w/o mutual learning": ({"lmliqa.mutual"}, (), set(), set(), "teacher"),
    },
}
# the test's own size and batch, the same for the full method and every row
BASE = {"csfiqa": {}, "lmliqa": {"data.crop_size": 64, "lmliqa.con_share": 1.0, "lmliqa.budget": "extra"}}
SAMPLER = {"csfiqa": FakeCSFIQASampler, "lmliqa": FakeLMLIQASampler}
IDX = torch.tensor([0, 1, 2, 3, 0, 1, 4, 5, 6, 7, 2, 3, 5, 6, 7, 4])
ROWS = [(m, label) for m in ABLATIONS for label in ABLATIONS[m]]


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
    return out


def _full(model: str) -> dict:
    return next(ov for ov in ABLATIONS[model].values() if not ov)


def _one_step(model: str, ov: dict):
    """The model of `ov` after one optimizer step on the test batch: (model, loss, logged terms, the
    names of the parameters with a non-zero gradient, the teacher before the step)."""
    torch.manual_seed(0)
    m = create_model(make_config("smoke", model, {**BASE[model], **ov})).train()
    teacher = {k: v.clone() for k, v in m.teacher.state_dict().items()} if model == "lmliqa" else None
    y = torch.linspace(0.05, 0.95, len(IDX))
    batch = m.train_batch(SAMPLER[model](), IDX, y, torch.Generator().manual_seed(0))
    loss, logs = m.loss(batch)
    loss.backward()
    trained = {n for n, p in m.named_parameters() if p.grad is not None and p.grad.any()}
    torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1).step()
    m.after_step()
    return m, loss.item(), set(logs), trained, teacher


@pytest.fixture(scope="module")
def full_runs():
    return {}


def _reference(model: str, cache: dict):
    if model not in cache:
        cache[model] = _one_step(model, _full(model))
    return cache[model]


def _matches(names: set, prefixes: tuple) -> bool:
    """Every name under one of the prefixes, and every prefix holding at least one name."""
    return all(n.startswith(prefixes) for n in names) and all(any(n.startswith(p) for n in names)
                                                               for p in prefixes)


def test_every_row_has_its_expectation_and_rows_differ_pairwise():
    for model, rows in ABLATIONS.items():
        assert set(rows) == set(EXPECTED[model]), model
        assert sum(not ov for ov in rows.values()) == 1, f"{model}: one full-method row"
        keys = [make_config("smoke", model, ov).key() for ov in rows.values()]
        assert len(set(keys)) == len(keys), f"{model}: two rows are the same run"


@pytest.mark.parametrize("model,label", ROWS, ids=[f"{m}:{label}" for m, label in ROWS])
def test_row_differs_in_exactly_what_its_label_names(model, label, full_runs):
    ov = ABLATIONS[model][label]
    fields, params, gone, added, other = EXPECTED[model][label]
    full_cfg, row_cfg = make_config("smoke", model, _full(model)), make_config("smoke", model, ov)
    a, b = _flat(full_cfg.to_dict()), _flat(row_cfg.to_dict())
    assert {k for k in a if a[k] != b[k]} == fields
    if not ov:
        return
    if label in FULL_SIZE_ONLY:            # the tiny stand-in has one layer: the index shows at full size
        layers = []
        for o in (_full(model), ov):
            with torch.device("meta"):
                m = costs.CSFIQA(make_config("paper", model, o).csfiqa, "small", device="meta")
            layers.append(m.ic.llama.self_attn.layer_idx)
        assert layers == [31, 15]
        return
    m0, loss0, logs0, trained0, _ = _reference(model, full_runs)
    m1, loss1, logs1, trained1, teacher = _one_step(model, ov)
    changed = trained0 ^ trained1
    assert _matches(changed, params) if params else not changed, sorted(changed)
    assert (logs0 - logs1, logs1 - logs0) == (gone, added)
    if other == "loss":
        assert loss1 != pytest.approx(loss0, rel=1e-6, abs=1e-9)
    elif other == "teacher":               # the loss is the full method's; the teacher does not move
        assert loss1 == pytest.approx(loss0, rel=1e-6)
        assert all(torch.equal(v, teacher[k]) for k, v in m1.teacher.state_dict().items())
        assert any(not torch.equal(v, m0.teacher.state_dict()[k]) for k, v in teacher.items())
