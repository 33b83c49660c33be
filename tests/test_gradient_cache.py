"""Contrastive sets over the whole global batch, computed in pieces (the gradient cache): a step split into
micro-batches gives the loss and the gradients of the unsplit step, for every contrastive piece the kit
has (CSFIQA's SCL with each NSM reading, LML-IQA's local-manifold terms with the memory queue and the
EMA teacher, which update once per step)."""
from __future__ import annotations

import pytest
import torch

from iqa_utils.config.check import make_config
from iqa_utils.models import create_model
from iqa_utils.models.losses import over_sets

from helpers import TINY_MODEL, two_steps, two_steps_sampler

CASES = [("csfiqa", {"csfiqa.nsm": "off"}), ("csfiqa", {"csfiqa.nsm": "pooled"}),
         ("csfiqa", {"csfiqa.nsm": "regional"}), ("csfiqa", {"csfiqa.nsm": "regional_weight"}),
         ("csfiqa", {"csfiqa.nsm": "qfm"}), ("csfiqa", {"csfiqa.scale_mode": "crop", "csfiqa.nsm": "pooled"}),
         ("csfiqa", {"csfiqa.scl_pool": "cls", "csfiqa.set_size": 4}),
         ("lmliqa", {"lmliqa.queue_size": 24}),
         ("lmliqa", {"lmliqa.queue_size": 24, "lmliqa.loss_form": "two_term", "lmliqa.mutual": "pred_consistency"}),
         ("lmliqa", {"lmliqa.anchor": "train_crop", "lmliqa.saliency": "random", "lmliqa.set_size": 4})]


@pytest.fixture(scope="module")
def sampler():
    return two_steps_sampler()


@pytest.mark.parametrize("name,over", CASES, ids=[f"{n}-{'-'.join(map(str, o.values()))}" for n, o in CASES])
def test_micro_batches_give_the_whole_batch_gradients(sampler, name, over):
    (g8, l8, logs8, m8), (g2, l2, logs2, m2) = [two_steps(name, over, sampler, micro) for micro in (8, 2)]
    assert l2.item() == pytest.approx(l8.item(), rel=1e-5)
    for k in logs8:
        assert logs2[k].item() == pytest.approx(logs8[k].item(), rel=1e-4, abs=1e-6), k
    assert g8.keys() == g2.keys() and len(g8) > 10
    for k in g8:
        # atol: float32 sums in another order differ by ~2e-6 on entries near zero (CSFIQA-tiny's 145 small
        # tokens); a chunk that lost its set gradient is off by orders more
        torch.testing.assert_close(g2[k], g8[k], rtol=1e-4, atol=1e-5, msg=k)
    if name == "csfiqa":
        assert "loss_scl" in logs8 or over["csfiqa.nsm"] == "off"
        assert g8["proj_large.0.weight"].abs().sum() > 0           # the contrastive term reached the projector
    else:
        assert logs8["loss_con"].item() > 0 and g8["proj.fc1.weight"].abs().sum() > 0
        if m8.lmliqa.queue_size:                                  # the same queue, filled once per step
            assert (m8.queue_img >= 0).sum() > 0
            torch.testing.assert_close(m2.queue, m8.queue)
            assert torch.equal(m2.queue_img, m8.queue_img) and torch.equal(m2.queue_ptr, m8.queue_ptr)
        for a, b in zip(m8.teacher.parameters(), m2.teacher.parameters()):   # the EMA teacher too
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_set_size_takes_the_sets_apart(sampler):
    """csfiqa.set_size=4: the SCL term is the mean of the two halves' own terms (per-GPU sets)."""
    model = create_model(make_config("smoke", "csfiqa", {**TINY_MODEL, "csfiqa.set_size": 4}))
    x = torch.randn(8, 3, 96, 96)
    _, emb, meta, _ = model.step_terms({"x": x, "y": torch.rand(8)})
    whole, _ = model.set_loss(emb, meta)
    model.csfiqa = type(model.csfiqa)(**{**model.csfiqa.__dict__, "set_size": 0})
    halves = [model.set_loss({k: v[a:a + 4] for k, v in emb.items()}, {k: v[a:a + 4] for k, v in meta.items()})[0]
              for a in (0, 4)]
    assert whole.item() == pytest.approx((halves[0].item() + halves[1].item()) / 2, rel=1e-6)
    assert whole.item() != pytest.approx(model.set_loss(emb, meta)[0].item(), rel=1e-3)


def test_set_terms_run_in_float32_under_autocast(sampler):
    model = create_model(make_config("smoke", "csfiqa", TINY_MODEL))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, emb, meta, _ = model.step_terms({"x": torch.randn(4, 3, 96, 96), "y": torch.rand(4)})
        loss, _ = model.set_loss(emb, meta)
    assert emb["zl"].dtype == torch.float32 and loss.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        score = model(torch.randn(2, 3, 96, 96))
        inner = model.encoder.blocks[0].blocks[0][0].attn.qkv(torch.randn(2, 5, 32))
    assert score.dtype == torch.float32 and inner.dtype == torch.bfloat16       # the score head in float32


def test_over_sets_is_the_mean_of_each_sets_loss():
    """Per-device sets (set_size): each run of equal set ids is its own loss; the step takes their mean."""
    z = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    y = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])

    def loss(emb, meta):                     # a set's loss depends on the whole set: sum(z) * max(y)
        return emb["z"].sum() * meta["y"].max(), {"n": torch.tensor(float(len(emb["z"])))}
    whole, _ = over_sets(loss, {"z": z}, {"y": y}, None)
    per, logs = over_sets(loss, {"z": z}, {"y": y}, torch.tensor([0, 0, 0, 1, 1, 1]))
    assert whole.item() == pytest.approx(21 * 0.6)
    assert per.item() == pytest.approx((6 * 0.3 + 15 * 0.6) / 2) and logs["n"].item() == 3
