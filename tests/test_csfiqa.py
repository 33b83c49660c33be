"""CSFIQA: SCL/NSM losses on hand-computed cases, top-k attention, every switch on the tiny model, cost."""
import math
import re

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from iqa_utils.config.check import make_config
from iqa_utils.models import create_model
from iqa_utils.models import losses as L
from iqa_utils.models.costs import csfiqa_cost
from iqa_utils.data.splits import make_split
from iqa_utils.models.csfiqa import (SelectiveAttention, branch_sizes, build_crossvit, crossvit_key_map,
                                     topk_attention)
from iqa_utils.models.pretrained import WeightsError, load_encoder_weights, load_weights, save_weights
from iqa_utils.training import engine

from helpers import FakeCSFIQASampler, tiny_manifest


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


def _nce(s_pos: list, s_neg: list, tau: float) -> float:
    """Multi-positive InfoNCE of one anchor from its cosines, written out: mean over positives of
    -log(e^{s_p/tau} / (e^{s_p/tau} + sum_n w_n e^{s_n/tau})); s_neg holds (cosine, weight) pairs."""
    e = math.exp
    neg = sum(w * e(c / tau) for c, w in s_neg)
    return sum(-math.log(e(c / tau) / (e(c / tau) + neg)) for c in s_pos) / len(s_pos)


def _deg(*angles):
    return torch.tensor([[math.cos(math.radians(a)), math.sin(math.radians(a))] for a in angles])


def _cos(a, b):
    return math.cos(math.radians(a - b))


def test_nsm_regional_contrasts_regions_by_hand():
    tau = 0.5
    # 3 images x 2 regions; labels give d01 = 0.1 (positive), d02 = 1.0 and d12 = 0.9 (negatives)
    small = [[0, 90], [30, 120], [200, 60]]                 # angle of region (i, r) at the small scale
    large = [[180, 80], [40, 100], [10, 250]]
    rs = torch.stack([_deg(*a) for a in small])
    rl = torch.stack([_deg(*a) for a in large])
    noise = torch.tensor([[True, False], [False, False], [False, False]])    # region 0 of image 0
    d = L.label_distance(Q)

    def c(i, r, j):
        return _cos(small[i][r], large[j][r])
    want = [
        _nce([c(0, 0, 1)], [(c(0, 0, 2), 1), (c(0, 0, 0), 1)], tau),   # own region is noise: a negative
        _nce([c(1, 0, 0), c(1, 0, 1)], [(c(1, 0, 2), 1)], tau),
        _nce([c(2, 0, 2)], [(c(2, 0, 0), 1), (c(2, 0, 1), 1)], tau),
        _nce([c(0, 1, 0), c(0, 1, 1)], [(c(0, 1, 2), 1)], tau),         # region 1: own region a positive
        _nce([c(1, 1, 0), c(1, 1, 1)], [(c(1, 1, 2), 1)], tau),
        _nce([c(2, 1, 2)], [(c(2, 1, 0), 1), (c(2, 1, 1), 1)], tau),
    ]
    got, n = L.nsm_regional_loss(rs, rl, d, noise, tau=tau)
    assert n == 6 and got.item() == pytest.approx(sum(want) / 6, rel=1e-5)
    # in L_SCL the regional term joins the inter-scale term (weighted by beta)
    zs, zl = F.normalize(torch.randn(3, 2), dim=-1), F.normalize(torch.randn(3, 2), dim=-1)
    _, plain = L.scl_loss(zs, zl, Q, tau=tau)
    _, logs = L.scl_loss(zs, zl, Q, tau=tau, regions=(rs, rl, noise))
    assert logs["loss_inter"].item() == pytest.approx(plain["loss_inter"].item() + sum(want) / 6, rel=1e-5)
    assert logs["loss_nsm"].item() == pytest.approx(sum(want) / 6, rel=1e-5)


def test_nsm_qfm_weights_similar_pairs_with_distant_labels_by_hand():
    tau, w = 0.5, 3.0
    angles = [0, 90, 10]                  # images 0 and 2: nearly the same features, labels 1.0 apart
    z = _deg(*angles)
    d = L.label_distance(Q)
    weights, noise = L.nsm_qfm(z, z, d, gamma2=0.7, weight=w)
    # off-diagonal cosines 0, cos10, 0, cos80, cos10, cos80: threshold mean + std = 0.819; only
    # (0, 2) and (2, 0) exceed it with d > 0.7; (1, 2) has d = 0.9 but cos80 = 0.17
    assert noise.nonzero().tolist() == [[0, 2], [2, 0]]
    assert weights[0, 2].item() == w and weights[1, 2].item() == 1.0
    c = [[_cos(a, b) for b in angles] for a in angles]
    inter = (_nce([c[0][0], c[0][1]], [(c[0][2], w)], tau) + _nce([c[1][0], c[1][1]], [(c[1][2], 1)], tau)
             + _nce([c[2][2]], [(c[2][0], w), (c[2][1], 1)], tau)) / 3           # S->L; L->S is the same here
    _, logs = L.scl_loss(z, z, Q, tau=tau, qfm_weight=w)
    assert logs["loss_inter"].item() == pytest.approx(inter, rel=1e-5)
    assert logs["nsm_noise"].item() == pytest.approx(2 / 9)
    _, plain = L.scl_loss(z, z, Q, tau=tau)
    assert L.scl_loss(z, z, Q, tau=tau, qfm_weight=1.0)[1]["loss_inter"].item() == pytest.approx(
        plain["loss_inter"].item(), rel=1e-6)


def test_nsm_choices_reach_the_loss():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 96, 96)
    for kind, keys in [("pooled", ["noise"]), ("regional_weight", ["noise"]), ("regional", ["regions"]),
                       ("qfm", ["qfm_weight"]), ("off", [])]:
        m = create_model(make_config("smoke", "csfiqa", {"csfiqa.nsm": kind}))
        e = m.encode(x)
        zs, zl, tokens = m.scl_embeddings(e, m.scale_views(x))
        _, emb, meta, _ = m.step_terms({"x": x, "y": torch.rand(4)})
        args = m.nsm_args(emb, meta)
        assert list(args) == keys
        if kind == "regional_weight":        # the earlier 'regional': noise regions only weight the pooled pair
            ts, tl = L.align_grids(tokens[0][:, 1:], tokens[1][:, 1:], e["grid_small"], e["grid_large"])
            assert torch.equal(args["noise"], L.noise_regions(L.region_agreement(ts, tl), 0.25)[0])
        if kind == "regional":
            assert args["regions"][0].shape == (4, 36, 128) and args["regions"][2].dtype == torch.bool


def test_region_agreement_flags_the_region_whose_relations_change():
    torch.manual_seed(0)
    t_small = torch.randn(1, 6, 4)
    rot = torch.linalg.qr(torch.randn(8, 8))[0]
    t_large = 3 * F.pad(t_small, (0, 4)) @ rot                             # another width, same relations
    assert L.region_agreement(t_small, t_large).min() > 0.999
    t_small[0, 2] = -t_small[0, 2]                                          # region 2 changes across scales
    agree = L.region_agreement(t_small, t_large)
    assert agree.shape == (1, 6) and agree[0].argmin() == 2
    _, hard = L.noise_regions(agree, q=1 / 6)
    assert hard[0].tolist() == [False, False, True, False, False, False]


def test_nsm_selection_reads_detached_tokens_not_the_projection():
    """nsm_input="tokens": the noise regions do not move when the projectors change (they are measured
    before them, without gradient); "projected" (the earlier selection) does move."""
    torch.manual_seed(0)
    x, y = torch.randn(4, 3, 96, 96), torch.rand(4)
    masks = {}
    for source in ("tokens", "projected"):
        torch.manual_seed(0)
        m = create_model(make_config("smoke", "csfiqa", {"csfiqa.nsm_input": source}))
        before = m.nsm_args(*m.step_terms({"x": x, "y": y})[1:3])["regions"][2]
        with torch.no_grad():
            for p in list(m.proj_small.parameters()) + list(m.proj_large.parameters()):
                p.copy_(torch.randn_like(p))
        masks[source] = (before, m.nsm_args(*m.step_terms({"x": x, "y": y})[1:3])["regions"][2])
    assert torch.equal(*masks["tokens"]) and not torch.equal(*masks["projected"])
    assert masks["tokens"][0].float().mean() == pytest.approx(0.25)


@pytest.mark.parametrize("kind", ["regional", "regional_weight", "pooled", "qfm"])
def test_nsm_starts_after_its_warmup_and_resumes_with_its_count(kind):
    torch.manual_seed(0)
    m = create_model(make_config("smoke", "csfiqa", {"csfiqa.nsm": kind, "csfiqa.nsm_warmup_epochs": 1.0}))
    m.steps_per_epoch = 2
    x = torch.randn(6, 3, 96, 96)
    y = torch.tensor([0.1, 0.15, 0.5, 0.9, 0.95, 0.3])

    def noise(model):
        args = model.nsm_args(*model.step_terms({"x": x, "y": y})[1:3])
        return {"regional": lambda: args["regions"][2].float(), "regional_weight": lambda: args["noise"],
                "pooled": lambda: args["noise"], "qfm": lambda: torch.tensor(args["qfm_weight"] - 1.0)}[kind]()
    seen = []
    for _ in range(3):
        seen.append(noise(m).sum().item())
        m.after_step()
    assert seen[:2] == [0.0, 0.0] and m.steps_taken() == 3 and m.steps_done.item() == 3
    if kind != "pooled":                # pooled flags only unusually dissimilar pairs: maybe none here
        assert seen[2] > 0
    assert m.loss({"x": x, "y": y})[1]["nsm_noise"].item() >= 0
    fresh = create_model(make_config("smoke", "csfiqa", {"csfiqa.nsm": kind}))
    fresh.steps_per_epoch = 2
    assert not fresh.nsm_started()
    fresh.load_state_dict(m.state_dict())                                   # a resumed run goes on
    assert fresh.nsm_started() and fresh.steps_taken() == 3


def test_the_engine_tells_the_model_its_epoch_length(tmp_path):
    data = tiny_manifest(tmp_path / "data", n=10)
    cfg = make_config("smoke", "csfiqa", {"data.crops_train": 4, "train.global_batch": 8})
    run = engine.setup(cfg, data, make_split(data, 0), tmp_path / "run")
    assert run.model.steps_per_epoch == run.steps == 4              # 8 training images x 4 crops / 8


# ---- SCL features: each scale's own branch ---------------------------------------------------------
def test_branch_patch_mean_ignores_the_other_branch():
    torch.manual_seed(0)
    x, x2 = torch.randn(2, 3, 3, 96, 96)

    def embed(m, large_input):           # per-branch inputs: the small branch always sees x
        views = (x, large_input)
        with torch.no_grad():
            return m.scl_embeddings(m.encode(views), views)[:2]
    m = create_model(make_config("smoke", "csfiqa")).eval()
    assert m.csfiqa.scl_pool == "branch_patch_mean"
    (zs1, zl1), (zs2, zl2) = embed(m, x), embed(m, x2)
    assert torch.equal(zs1, zs2) and not torch.allclose(zl1, zl2)
    for pool in ("cls", "mean"):         # the joint pass: the other branch reaches the small scale
        old = create_model(make_config("smoke", "csfiqa", {"csfiqa.scl_pool": pool})).eval()
        assert (embed(old, x)[0] - embed(old, x2)[0]).abs().max() > 0
    # before the first fusion the branch alone and the joint pass agree
    with torch.no_grad():
        blocks, _ = m._crossvit(x, x2)
        torch.testing.assert_close(m.branch_alone(0, x, 0)[:, 1:], blocks[0][0][:, 1:])
        torch.testing.assert_close(m.branch_alone(1, x2, 0)[:, 1:], blocks[0][1][:, 1:])


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
    {}, {"csfiqa.scl": False}, {"csfiqa.nsm": "off"}, {"csfiqa.nsm": "regional"}, {"csfiqa.afs": "dense"},
    {"csfiqa.afs": "off"}, {"csfiqa.afs": "off", "csfiqa.afs_scope": "per_scale"},
    {"csfiqa.nsm_input": "projected", "csfiqa.nsm": "regional_weight"},
    {"csfiqa.afs_scope": "per_scale"}, {"csfiqa.ic": "off"}, {"csfiqa.ic": "trainable_block"},
    {"csfiqa.ic": "llama_residual"}, {"csfiqa.ic_tokens": "all"}, {"csfiqa.ic_tokens": "cls"},
    {"csfiqa.decoder": "linear"},
    # pinned to the earlier independent crops (their call log below is that choice's)
    {"csfiqa.scale_mode": "crop", "csfiqa.crop_nesting": "independent", "csfiqa.nsm": "pooled"},
    {"csfiqa.scale_mode": "crop_per_branch", "csfiqa.crop_nesting": "independent", "csfiqa.nsm": "pooled"},
    {"csfiqa.scale_mode": "single"}, {"csfiqa.scl_layer": "middle", "csfiqa.scl_pool": "mean"},
    {"csfiqa.proj_dim": 0}, {"csfiqa.infonce": "supcon", "csfiqa.label_distance": "rank"},
    {"csfiqa.scale_mode": "crop", "csfiqa.nsm": "pooled"}, {"csfiqa.scale_mode": "crop_per_branch", "csfiqa.nsm": "qfm"},
    {"csfiqa.nsm": "qfm"}, {"csfiqa.nsm": "regional_weight"}, {"csfiqa.scl_pool": "cls"},
    {"csfiqa.nsm": "regional", "csfiqa.scl_pool": "mean", "csfiqa.scl_layer": "middle"},
    {"csfiqa.ic_norm": "llama_final_norm"}, {"csfiqa.ic": "llama_residual", "csfiqa.ic_norm": "llama_final_norm"},
]


@pytest.mark.parametrize("ov", SWITCHES, ids=lambda o: ",".join(f"{k[7:]}={v}" for k, v in o.items()) or "default")
def test_switch_forward_backward(ov):
    torch.manual_seed(0)
    m = create_model(make_config("smoke", "csfiqa", ov))
    s = FakeCSFIQASampler()
    g = torch.Generator().manual_seed(0)
    y = torch.tensor([0.1, 0.15, 0.5, 0.9, 0.95, 0.3])
    batch = m.train_batch(s, torch.arange(6), y, g)
    crop = ov.get("csfiqa.scale_mode") in ("crop", "crop_per_branch")
    if crop and ov.get("csfiqa.crop_nesting") == "independent":
        assert s.calls == [("resized", 0.2, 96), ("resized", 0.4, 96)] and batch["x"].shape == (6, 2, 3, 96, 96)
    elif crop:
        assert s.calls == [("nested", 0.2, 0.4, 96)] and batch["x"].shape == (6, 2, 3, 96, 96)
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
    assert create_model(make_config("smoke", "csfiqa", {"csfiqa.afs": "dense"})).afs.keep_ratio == 1.0
    assert not hasattr(create_model(make_config("smoke", "csfiqa", {"csfiqa.ic": "off"})).ic, "llama")
    with pytest.raises(ValueError, match="regional"):
        create_model(make_config("smoke", "csfiqa", {"csfiqa.nsm": "regional", "csfiqa.scale_mode": "crop"}))


SMALL_BRANCH = ("encoder.patch_embed.0.", "encoder.cls_token_0", "encoder.pos_embed_0", "encoder.norm.0.",
                ".projs.", ".fusion.", ".revert_projs.")


def _small_branch(name: str) -> bool:
    return name.startswith(SMALL_BRANCH[:4]) or any(p in name for p in SMALL_BRANCH[4:]) or \
        re.match(r"encoder\.blocks\.\d+\.blocks\.0\.", name) is not None


def test_single_scale_encodes_the_large_branch_alone():
    torch.manual_seed(0)
    m = create_model(make_config("smoke", "csfiqa", {"csfiqa.scale_mode": "single"}))
    small = [n for n, _ in m.named_parameters() if _small_branch(n)]
    assert any("patch_embed.0" in n for n in small) and any("fusion" in n for n in small)
    loss, _ = m.loss(m.train_batch(FakeCSFIQASampler(), torch.arange(6), torch.linspace(0, 1, 6),
                                   torch.Generator().manual_seed(0)))
    loss.backward()
    grads = {n: p.grad for n, p in m.named_parameters()}
    assert all(grads[n] is None or not grads[n].any() for n in small)
    assert m.encoder.patch_embed[1].proj.weight.grad.abs().sum() > 0
    assert m.encoder.blocks[-1].blocks[1][-1].attn.qkv.weight.grad.abs().sum() > 0
    # the score does not read the small branch or the fusion at all
    m.eval()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        before = m(x)
        for n, p in m.named_parameters():
            if _small_branch(n):
                p.add_(torch.randn_like(p))
        torch.testing.assert_close(m(x), before, rtol=0, atol=0)


def test_sfa_off_has_no_afs_or_concentrator():
    both = create_model(make_config("smoke", "csfiqa", {"csfiqa.afs": "off", "csfiqa.ic": "off"}))
    assert not [n for n, _ in both.named_parameters() if n.startswith(("afs.", "ic."))]
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        _, feats = both(x, return_features=True)
    assert torch.equal(feats["pre_sfa"], feats["post_sfa"])         # SFA is the identity
    dense = create_model(make_config("smoke", "csfiqa", {"csfiqa.afs": "dense", "csfiqa.ic": "off"}))
    assert [n for n, _ in dense.named_parameters() if n.startswith("afs.")]   # w/o AFS keeps a dense layer


def test_features_and_cam():
    torch.manual_seed(0)
    m = create_model(make_config("smoke", "csfiqa")).eval()
    acts = []
    (point, arg), = m.cam_points()                 # the large branch's tokens its final norm receives
    assert point is m.encoder.norm[1]
    h = point.register_forward_pre_hook(lambda mod, args: acts.append(args[arg]))
    x = torch.randn(2, 3, 96, 96)
    score, f = m(x, return_features=True)
    h.remove()
    d0, d1 = m.encoder.embed_dim
    assert f["small"].shape == (2, 144, d0) and f["large"].shape == (2, 36, d1)   # 12x12 and 6x6 grids at 96 px
    assert f["pre_sfa"].shape == f["post_sfa"].shape == (2, 145 + 37, d1)
    cam = m.cam_reshape(acts[0])
    assert cam.shape == (2, d1, 6, 6)
    g, = torch.autograd.grad(score.sum(), acts[0])
    assert g[:, 1:].abs().sum() > 0                     # the score depends on the hooked patch tokens


def test_crossvit_hub_weights_load_strictly(tmp_path):
    src = build_crossvit("tiny", input_size=120)           # a "checkpoint" at another input size
    sd = {k.replace("pos_embed_", "pos_embed.").replace("cls_token_", "cls_token."): v.clone()
          for k, v in src.state_dict().items()}               # hub naming
    sd["head.0.weight"] = torch.zeros(10, src.embed_dim[0])
    save_file(sd, str(tmp_path / "model.safetensors"))
    enc = build_crossvit("tiny", input_size=96)
    load_encoder_weights(enc, str(tmp_path), crossvit_key_map(enc))
    assert torch.equal(enc.blocks[2].blocks[1][0].mlp.fc1.weight, src.blocks[2].blocks[1][0].mlp.fc1.weight)
    assert enc.pos_embed_0.shape == (1, 145, enc.embed_dim[0])   # 15x15 grid resampled to 12x12
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


def test_weights_files_leave_out_the_frozen_llama_layer(tmp_path):
    """A run's weights hold what it trained; the frozen LLaMA layer (0.4 GB at full size) is rebuilt from
    its source when the model is built, so it is not written once per run. Loading stays strict."""
    torch.manual_seed(0)
    m = create_model(make_config("smoke", "csfiqa"))
    path = save_weights(m, tmp_path / "model.safetensors")
    saved = load_file(str(path))
    assert not [k for k in saved if k.startswith("ic.llama")] and "ic.w1.weight" in saved
    torch.manual_seed(1)
    other = create_model(make_config("smoke", "csfiqa"))
    load_weights(other, path)
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), other.state_dict().values()))
    del saved["ic.w1.weight"]
    save_file(saved, str(tmp_path / "short.safetensors"))
    with pytest.raises(WeightsError, match="ic.w1.weight"):
        load_weights(other, tmp_path / "short.safetensors")


@pytest.mark.parametrize("size,patch,sides", [(240, (12, 16), (240, 224)), (224, (12, 16), (228, 208)),
                                              (96, (8, 16), (96, 96)), (120, (8, 16), (120, 112))])
def test_branch_sizes_are_multiples_of_each_branch_patch(size, patch, sides):
    """timm's 240 -> (240, 224); the large branch at input * 224/240; tiny's 8-px small branch (D3)."""
    assert branch_sizes(size, patch) == sides
    assert all(s % p == 0 for s, p in zip(sides, patch))
