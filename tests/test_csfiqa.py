"""CSFIQA: SCL/NSM losses on hand-computed cases, top-k attention, every switch on the tiny model, cost."""
import math

import pytest
import torch
import torch.nn.functional as F

from iqa_utils import losses as L
from iqa_utils.config import make_config
from iqa_utils.models import create_model
from iqa_utils.costs import csfiqa_cost
from iqa_utils.models.csfiqa import topk_attention, SelectiveAttention


# ---- Eq. 1-2: distances and masks ------------------------------------------------------------------
def test_masks_from_mos():
    q = torch.tensor([10.0, 12.0, 50.0, 90.0])          # range 80
    d = L.label_distance(q)
    assert d[0, 1].item() == pytest.approx(2 / 80) and d[0, 3].item() == pytest.approx(1.0)
    pos, neg = L.scl_masks(d, 0.2, 0.7)
    exp_pos = torch.zeros(4, 4, dtype=torch.bool)
    exp_pos[0, 1] = exp_pos[1, 0] = True                # d = 0.025; (2,3) d = 0.5 is neither
    exp_neg = torch.zeros(4, 4, dtype=torch.bool)
    for i, j in [(0, 3), (1, 3)]:                       # d = 1.0, 0.975; (1,2) d = 0.475 neither
        exp_neg[i, j] = exp_neg[j, i] = True
    assert torch.equal(pos, exp_pos) and torch.equal(neg, exp_neg)
    # the same distances whatever the label scale (batch min-max), and rank distances
    assert torch.allclose(L.label_distance(q / 100), d, atol=1e-6)
    r = L.label_distance(torch.tensor([3.0, 1.0, 2.0]), "rank")
    assert r[0, 1].item() == 1.0 and r[0, 2].item() == 0.5
    assert L.label_distance(q, "dataset_range", (0, 100))[0, 3].item() == pytest.approx(0.8)


# ---- Eq. 3: InfoNCE on 2-D embeddings ----------------------------------------------------------------
Z = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
Q = torch.tensor([0.0, 0.1, 1.0])     # d01 = 0.1 (pos), d02 = 1.0 and d12 = 0.9 (neg)


def test_scl_single_scale_by_hand():
    tau = 0.5
    loss, logs = L.scl_loss(None, Z, Q, tau=tau, alpha=2.0)
    # anchor 0: s01 = 0.6/0.5 = 1.2, s02 = 0; anchor 1: s10 = 1.2, s12 = 1.6; anchor 2 has no positive
    l0 = -math.log(math.exp(1.2) / (math.exp(1.2) + math.exp(0.0)))
    l1 = -math.log(math.exp(1.2) / (math.exp(1.2) + math.exp(1.6)))
    assert loss.item() == pytest.approx(2.0 * (l0 + l1) / 2, rel=1e-5)
    assert logs["scl_anchors"] == 2


def test_scl_two_scales_and_nsm_flip_by_hand():
    tau = 0.5
    e = math.exp
    # same embeddings at both scales: intra = the single-scale value; inter includes the diagonal
    intra = (-math.log(e(1.2) / (e(1.2) + 1)) - math.log(e(1.2) / (e(1.2) + e(1.6)))) / 2
    # inter S->L (symmetric here, so L->S equals it): anchor 0: P={0,1} N={2}; anchor 1: P={0,1} N={2};
    # anchor 2: P={2} N={0,1}
    a0 = -(math.log(e(2) / (e(2) + 1)) + math.log(e(1.2) / (e(1.2) + 1))) / 2
    a1 = -(math.log(e(1.2) / (e(1.2) + e(1.6))) + math.log(e(2) / (e(2) + e(1.6)))) / 2
    a2 = -math.log(e(2) / (e(2) + 1 + e(1.6)))
    inter = (a0 + a1 + a2) / 3
    loss, logs = L.scl_loss(Z, Z, Q, tau=tau, alpha=1.0, beta=0.5)
    assert logs["loss_intra"].item() == pytest.approx(intra, rel=1e-5)
    assert logs["loss_inter"].item() == pytest.approx(inter, rel=1e-5)
    assert loss.item() == pytest.approx(intra + 0.5 * inter, rel=1e-5)
    # NSM flags image 0: its own other-scale view leaves the positives and joins the negatives
    noise = torch.tensor([1.0, 0.0, 0.0])
    _, logs = L.scl_loss(Z, Z, Q, tau=tau, noise=noise)
    a0n = -math.log(e(1.2) / (e(1.2) + 1 + e(2)))
    a2n = -math.log(e(2) / (e(2) + 1 + e(1.6)))
    assert logs["loss_inter"].item() == pytest.approx((a0n + a1 + a2n) / 3, rel=1e-5)


def test_infonce_needs_positive_and_negative():
    z = F.normalize(torch.randn(3, 4), dim=-1)
    loss, n = L.info_nce(z, z, torch.zeros(3, 3, dtype=torch.bool), torch.ones(3, 3, dtype=torch.bool))
    assert n == 0 and loss.item() == 0.0


# ---- NSM --------------------------------------------------------------------------------------------
def test_nsm_pooled_picks_discrepant_pair():
    zs = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, 0.2], [0.3, 1.0]]), dim=-1)
    zl = zs.clone()
    zl[2] = -zs[2]                                    # image 2 disagrees across scales (cos = -1)
    zl[4] = F.normalize(torch.tensor([0.5, 1.0]), dim=0)   # slightly off, not below mean - std
    assert L.nsm_pooled(zs, zl).tolist() == [0.0, 0.0, 1.0, 0.0, 0.0]


def test_nsm_regional_picks_discrepant_regions():
    torch.manual_seed(0)
    # image grids: small scale 4x4, large scale 2x2 -> aligned on 2x2 (4 regions)
    small = torch.randn(2, 16, 8)
    rs, rl_ref = L.align_grids(small, torch.zeros(2, 4, 8), (4, 4), (2, 2))
    assert torch.allclose(rs[0, 0], small[0, [0, 1, 4, 5]].mean(0), atol=1e-6)   # top-left 2x2 block
    rl = rs.clone()
    rl[1, 0] = -rs[1, 0]                              # image 1, regions 0 and 3 disagree
    rl[1, 3] = -rs[1, 3] + 0.1 * torch.randn(8)
    w, hard = L.nsm_regional(rs, rl, q=0.25)          # 0.25 * 8 regions = 2 hard regions
    assert hard.nonzero().tolist() == [[1, 0], [1, 3]]
    assert w.tolist() == [0.0, 0.5]


# ---- AFS ---------------------------------------------------------------------------------------------
def test_topk_keeps_exactly_k_and_dense_when_all():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 3, 10, 8), torch.randn(2, 3, 10, 8), torch.randn(2, 3, 10, 8)
    out, a = topk_attention(q, k, v, keep=4, return_weights=True)
    assert ((a > 0).sum(-1) == 4).all()
    scores = q @ k.transpose(-2, -1)
    kept = a > 0
    assert torch.equal(kept, scores >= scores.topk(4, -1).values[..., -1:])    # the 4 largest scores
    dense = F.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(topk_attention(q, k, v, keep=10), dense, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(topk_attention(q, k, v, keep=None), dense, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out, dense, atol=1e-3)
    assert SelectiveAttention(8, 2, 0.5).keep(197) == 99


# ---- the model: every switch builds, runs forward + backward ------------------------------------------
SWITCHES = [
    {}, {"csfiqa.scl": False}, {"csfiqa.nsm": "off"}, {"csfiqa.nsm": "regional"}, {"csfiqa.afs": False},
    {"csfiqa.afs_scope": "per_scale"}, {"csfiqa.ic": "off"}, {"csfiqa.ic": "trainable_block"},
    {"csfiqa.ic": "llama_residual"}, {"csfiqa.ic_tokens": "all"}, {"csfiqa.ic_tokens": "cls"},
    {"csfiqa.decoder": "linear"}, {"csfiqa.scale_mode": "crop"}, {"csfiqa.scale_mode": "crop_per_branch"},
    {"csfiqa.scale_mode": "single"}, {"csfiqa.scl_layer": "middle", "csfiqa.scl_pool": "mean"},
    {"csfiqa.proj_dim": 0}, {"csfiqa.infonce": "supcon", "csfiqa.label_distance": "rank"},
]


class FakeSampler:
    def __init__(self):
        self.calls = []

    def random_crops(self, idx, size, flip=False, generator=None):
        self.calls.append(("random", size))
        return torch.randn(len(idx), 3, size, size, generator=generator)

    def resized_crops(self, idx, ratio, size, flip=False, generator=None):
        self.calls.append(("resized", ratio, size))
        return torch.randn(len(idx), 3, size, size, generator=generator)


@pytest.mark.parametrize("ov", SWITCHES, ids=lambda o: ",".join(f"{k[7:]}={v}" for k, v in o.items()) or "default")
def test_switch_forward_backward(ov):
    torch.manual_seed(0)
    m = create_model(make_config("smoke", "csfiqa", ov))
    s = FakeSampler()
    g = torch.Generator().manual_seed(0)
    y = torch.tensor([0.1, 0.15, 0.5, 0.9, 0.95, 0.3])
    batch = m.train_batch(s, torch.arange(6), y, g)
    if ov.get("csfiqa.scale_mode") in ("crop", "crop_per_branch"):
        assert s.calls == [("resized", 0.2, 96), ("resized", 0.4, 96)] and batch["x"].shape == (6, 2, 3, 96, 96)
    else:
        assert s.calls == [("random", 96)]
    loss, logs = m.loss(batch)
    assert torch.isfinite(loss)
    assert ("loss_scl" in logs) == (ov.get("csfiqa.scl", True))
    if ov.get("csfiqa.scale_mode") == "single" and "loss_scl" in logs:
        assert "loss_inter" not in logs
    loss.backward()
    assert m.encoder.patch_embed[1].proj.weight.grad.abs().sum() > 0
    if ov.get("csfiqa.scale_mode") != "single":
        assert m.encoder.patch_embed[0].proj.weight.grad.abs().sum() > 0
    m.eval()
    with torch.no_grad():
        score, feats = m(torch.randn(3, 3, 96, 96), return_features=True)     # test crops: plain 4-D
    assert score.shape == (3,) and feats["cls"].shape == (3, m.dim)


def test_switches_change_the_model():
    base = create_model(make_config("smoke", "csfiqa"))
    assert base.afs.keep_ratio == 0.5
    assert create_model(make_config("smoke", "csfiqa", {"csfiqa.afs": False})).afs.keep_ratio == 1.0
    assert not hasattr(create_model(make_config("smoke", "csfiqa", {"csfiqa.ic": "off"})).ic, "llama")
    with pytest.raises(ValueError, match="regional"):
        create_model(make_config("smoke", "csfiqa", {"csfiqa.nsm": "regional", "csfiqa.scale_mode": "crop"}))


def test_features_and_cam():
    torch.manual_seed(0)
    m = create_model(make_config("smoke", "csfiqa")).eval()
    acts = []
    h = m.cam_target_layers()[0].register_forward_hook(lambda mod, i, o: acts.append(o))
    x = torch.randn(2, 3, 96, 96)
    score, f = m(x, return_features=True)
    h.remove()
    d0, d1 = m.encoder.embed_dim
    assert f["small"].shape == (2, 64, d0) and f["large"].shape == (2, 36, d1)   # 8x8 and 6x6 grids at 96 px
    assert f["pre_sfa"].shape == f["post_sfa"].shape == (2, 65 + 37, d1)
    cam = m.cam_reshape(acts[0])
    assert cam.shape == (2, d1, 6, 6)
    g, = torch.autograd.grad(score.sum(), acts[0])
    assert g[:, 1:].abs().sum() > 0                     # the score depends on the hooked patch tokens


def test_crossvit_hub_weights_load_strictly(tmp_path):
    from safetensors.torch import save_file
    from iqa_utils.models.csfiqa import build_crossvit, crossvit_key_map
    from iqa_utils.models.pretrained import load_encoder_weights, WeightsError
    src = build_crossvit("tiny", input_size=120)           # a "checkpoint" at another input size
    sd = {k.replace("pos_embed_", "pos_embed.").replace("cls_token_", "cls_token."): v.clone()
          for k, v in src.state_dict().items()}               # hub naming
    sd["head.0.weight"] = torch.zeros(10, src.embed_dim[0])
    save_file(sd, str(tmp_path / "model.safetensors"))
    enc = build_crossvit("tiny", input_size=96)
    load_encoder_weights(enc, str(tmp_path), crossvit_key_map(enc))
    assert torch.equal(enc.blocks[2].blocks[1][0].mlp.fc1.weight, src.blocks[2].blocks[1][0].mlp.fc1.weight)
    assert enc.pos_embed_0.shape == (1, 65, enc.embed_dim[0])   # 10x10 grid resampled to 8x8
    del sd["norm.1.weight"]
    save_file(sd, str(tmp_path / "model.safetensors"))
    with pytest.raises(WeightsError, match="missing"):
        load_encoder_weights(enc, str(tmp_path), crossvit_key_map(enc))


def test_full_size_cost_matches_reviews():
    r = csfiqa_cost()                                   # meta device: no weights allocated
    assert abs(r["params_total"] - 233e6) / 233e6 < 0.02
    assert r["params_frozen"] == 202_387_456 + 0        # the LLaMA-7B block (attention + SwiGLU + 2 RMSNorms)
    assert 30e6 < r["params_trainable"] < 35e6
    assert abs(r["macs"] - 45e9) / 45e9 < 0.1
