"""LML-IQA: the local-manifold losses on hand-computed cases, saliency, EMA teacher, every switch."""
import math

import pytest
import torch
from safetensors.torch import load_file

from iqa_utils.config.check import make_config
from iqa_utils.data.splits import make_split
from iqa_utils.models.deiqt import DEIQT
from iqa_utils.models.lmliqa import cls_attention, decoder_attention, salient_crop, spectral_residual
from iqa_utils.models.losses import local_manifold_loss, local_manifold_two_term
from iqa_utils.models.registry import create_model
from iqa_utils.training.engine import TrainingInterrupted, train_run

from helpers import FakeLMLIQASampler, tiny_manifest

TAU = 0.5


def _unit(deg):
    a = math.radians(deg)
    return torch.tensor([math.cos(a), math.sin(a)])


# 2 images x 2 crops, 2-D unit embeddings at known angles, so every dot product is a cosine
ANCHOR = torch.stack([_unit(0), _unit(90)])                               # a_0, a_1
CROPS = torch.stack([torch.stack([_unit(30), _unit(120)]),                # c_00, c_01
                     torch.stack([_unit(200), _unit(60)])])               # c_10, c_11
POS = torch.tensor([1, 0])                                                # salient: c_01, c_10


def _e(a, c):
    return math.exp(math.cos(math.radians(a - c)) / TAU)


def test_local_manifold_loss_hand_computed():
    # image 0: anchor 0 deg, positive c_01 (120), intra c_00 (30), inter c_10 (200), c_11 (60)
    l0 = -math.log(_e(0, 120) / (_e(0, 120) + 0.5 * _e(0, 30) + _e(0, 200) + _e(0, 60)))
    # image 1: anchor 90 deg, positive c_10 (200), intra c_11 (60), inter c_00 (30), c_01 (120)
    l1 = -math.log(_e(90, 200) / (_e(90, 200) + 0.5 * _e(90, 60) + _e(90, 30) + _e(90, 120)))
    got = local_manifold_loss(ANCHOR, CROPS, POS, TAU, w_intra=0.5)
    assert got.item() == pytest.approx((l0 + l1) / 2, rel=1e-5)


def test_intra_inter_switches_drop_exactly_their_terms():
    no_intra0 = -math.log(_e(0, 120) / (_e(0, 120) + _e(0, 200) + _e(0, 60)))
    no_intra1 = -math.log(_e(90, 200) / (_e(90, 200) + _e(90, 30) + _e(90, 120)))
    got = local_manifold_loss(ANCHOR, CROPS, POS, TAU, intra=False)
    assert got.item() == pytest.approx((no_intra0 + no_intra1) / 2, rel=1e-5)
    no_inter0 = -math.log(_e(0, 120) / (_e(0, 120) + _e(0, 30)))
    no_inter1 = -math.log(_e(90, 200) / (_e(90, 200) + _e(90, 60)))
    got = local_manifold_loss(ANCHOR, CROPS, POS, TAU, inter=False)
    assert got.item() == pytest.approx((no_inter0 + no_inter1) / 2, rel=1e-5)
    # nothing but the positive left: log(1) = 0
    assert local_manifold_loss(ANCHOR, CROPS, POS, TAU, intra=False, inter=False).item() == pytest.approx(0.0)
    # a different positive changes the value (the positive column is really POS)
    assert local_manifold_loss(ANCHOR, CROPS, 1 - POS, TAU).item() != pytest.approx(
        local_manifold_loss(ANCHOR, CROPS, POS, TAU).item())


def test_queue_negatives_in_the_denominator_by_hand():
    queue = torch.stack([_unit(45), _unit(270), _unit(10)])
    valid = torch.tensor([[True, False, False],            # image 0: entry 1 is a crop of image 0 itself
                          [True, True, False]])            # entry 2: an empty slot for both
    l0 = -math.log(_e(0, 120) / (_e(0, 120) + _e(0, 30) + _e(0, 200) + _e(0, 60) + _e(0, 45)))
    l1 = -math.log(_e(90, 200) / (_e(90, 200) + _e(90, 60) + _e(90, 30) + _e(90, 120)
                                  + _e(90, 45) + _e(90, 270)))
    got = local_manifold_loss(ANCHOR, CROPS, POS, TAU, queue=queue, queue_valid=valid)
    assert got.item() == pytest.approx((l0 + l1) / 2, rel=1e-5)
    # the queue holds inter-image negatives: gone with inter=False
    assert local_manifold_loss(ANCHOR, CROPS, POS, TAU, inter=False, queue=queue, queue_valid=valid).item() == \
        pytest.approx(local_manifold_loss(ANCHOR, CROPS, POS, TAU, inter=False).item())
    # two_term: extra negatives of the pull term (non-salient c_00 of image 0, c_11 of image 1)
    aug = torch.stack([_unit(110), _unit(190)])
    pull = (-math.log(_e(30, 120) / (_e(30, 120) + _e(30, 200) + _e(30, 60) + _e(30, 45)))
            - math.log(_e(60, 200) / (_e(60, 200) + _e(60, 30) + _e(60, 120) + _e(60, 45) + _e(60, 270)))) / 2
    got = local_manifold_two_term(CROPS, POS, aug, TAU, intra=False, queue=queue, queue_valid=valid)
    assert got.item() == pytest.approx(pull, rel=1e-5)


def test_two_term_hand_computed():
    aug = torch.stack([_unit(110), _unit(190)])                           # augmented salient crops
    # pull: non-salient c_00 (30) -> its salient c_01 (120) vs image 1's crops (200, 60);
    #       non-salient c_11 (60) -> its salient c_10 (200) vs image 0's crops (30, 120)
    pull = (-math.log(_e(30, 120) / (_e(30, 120) + _e(30, 200) + _e(30, 60)))
            - math.log(_e(60, 200) / (_e(60, 200) + _e(60, 30) + _e(60, 120)))) / 2
    # intra: salient crop anchor vs its augmented copy, negatives the other crops of the same image
    intra = (-math.log(_e(120, 110) / (_e(120, 110) + 2.0 * _e(120, 30)))
             - math.log(_e(200, 190) / (_e(200, 190) + 2.0 * _e(200, 60)))) / 2
    got = local_manifold_two_term(CROPS, POS, aug, TAU, w_intra=2.0)
    assert got.item() == pytest.approx(pull + intra, rel=1e-5)
    assert local_manifold_two_term(CROPS, POS, aug, TAU, w_intra=2.0, intra=False).item() == \
        pytest.approx(pull, rel=1e-5)
    assert local_manifold_two_term(CROPS, POS, aug, TAU, w_intra=2.0, inter=False).item() == \
        pytest.approx(intra, rel=1e-5)


def test_salient_crop_on_constructed_map():
    sal = torch.zeros(6, 6)
    sal[4:6, 0:2] = 1.0                                                    # bottom-left blob
    boxes = torch.tensor([[0.0, 0.0, 0.5, 0.5],                            # top-left
                          [0.5, 0.5, 0.5, 0.5],                            # bottom-right
                          [0.6, 0.0, 0.4, 0.4],                            # bottom-left, small
                          [0.3, 0.0, 0.7, 0.7]])                           # bottom-left, large (diluted)
    assert salient_crop(sal, boxes).item() == 2
    # batched, and boxes that do not align with the grid count cells by the share they cover
    sal2 = torch.zeros(6, 6)
    sal2[0, 5] = 1.0                                                       # top-right cell
    b2 = torch.tensor([[0.0, 0.9, 0.1, 0.1], [0.5, 0.0, 0.5, 0.5], [0.0, 0.0, 0.5, 0.5], [0.0, 0.4, 0.6, 0.6]])
    got = salient_crop(torch.stack([sal, sal2]), torch.stack([boxes, b2]))
    assert got.tolist() == [2, 0]


def test_spectral_residual_peaks_on_blob():
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(96.0), torch.arange(96.0), indexing="ij")
    img = 0.3 * xx / 96 + 0.02 * torch.randn(96, 96, generator=g)
    img = img + torch.exp(-((yy - 70) ** 2 + (xx - 25) ** 2) / (2 * 3.0 ** 2))
    s = spectral_residual(img.expand(1, 3, 96, 96), size=64)
    assert s.shape == (1, 64, 64) and s.min() >= 0 and s.max() == pytest.approx(1.0)
    r, c = divmod(s[0].flatten().argmax().item(), 64)
    assert abs(r - 70 * 64 / 96) <= 3 and abs(c - 25 * 64 / 96) <= 3


def _tiny(**over):
    cfg = make_config("smoke", "lmliqa", {"data.crop_size": 64, **{f"lmliqa.{k}": v for k, v in over.items()}})
    torch.manual_seed(0)
    return create_model(cfg)


def test_cls_attention_matches_timm_weights():
    m = DEIQT("tiny", 64).eval()
    x = torch.randn(2, 3, 64, 64)
    got = cls_attention(m.encoder, x)
    attn = m.encoder.blocks[-1].attn
    attn.fused_attn = False                                                # timm's explicit path
    seen = {}
    h = attn.attn_drop.register_forward_hook(lambda mod, i, o: seen.__setitem__("w", o))
    m.encoder.forward_features(x)
    h.remove()
    want = seen["w"][:, :, 0, 1:].mean(1).reshape(2, 8, 8)             # 64 px / 8-px patches
    assert torch.allclose(got, want, atol=1e-6)
    d = decoder_attention(m, x)
    assert d.shape == (2, 8, 8) and torch.allclose(d.sum((1, 2)), torch.ones(2), atol=1e-5)


def _step(m, opt=None):
    idx = torch.tensor([0, 1, 2, 3, 0, 1, 4, 5, 6, 7, 2, 3, 5, 6, 7, 4])
    b = m.train_batch(FakeLMLIQASampler(), idx, torch.linspace(10, 90, 16), torch.Generator().manual_seed(0))
    loss, logs = m.loss(b)
    loss.backward()
    if opt is not None:
        opt.step()
    return b, loss, logs


def test_teacher_gets_no_gradient_and_moves_only_by_ema():
    m = _tiny(mutual="pred_consistency", ema_momentum=0.9)
    m.train()
    assert not m.teacher.training and all(not p.requires_grad for p in m.teacher.parameters())
    # the teacher starts as an exact copy of the student (D10)
    for pt, ps in zip(m.teacher.parameters(), m.student.parameters()):
        assert torch.equal(pt, ps)
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    t0 = [p.detach().clone() for p in m.teacher.parameters()]
    _, _, logs = _step(m, opt)
    assert "loss_mut" in logs
    assert all(p.grad is None for p in m.teacher.parameters())
    assert all(torch.equal(a, b) for a, b in zip(t0, m.teacher.parameters()))      # optimizer left it alone
    s1 = [p.detach().clone() for p in m.student.parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(t0, s1))                       # the student moved
    m.after_step()
    for pt, a, s in zip(m.teacher.parameters(), t0, s1):                            # EMA, numerically
        assert torch.allclose(pt, 0.9 * a + 0.1 * s, atol=1e-7)
    assert not m.teacher.training


def test_mutual_off_keeps_teacher_at_init():
    m = _tiny(mutual="off")
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    t0 = [p.detach().clone() for p in m.teacher.parameters()]
    _step(m, opt)
    m.after_step()
    assert all(torch.equal(a, b) for a, b in zip(t0, m.teacher.parameters()))


def test_budget_and_views():
    m = _tiny(k_crops=4, con_share=0.5)
    b, _, _ = _step(m)
    # 16 listed samples, M = round(0.5 * 16 / 4) = 2 images x 4 crops replace 8 regression crops
    assert b["crops"].shape[:2] == (2, 4) and b["x"].shape[0] == 8 and b["glob"].shape[0] == 2
    assert b["y"].shape[0] == 8 and b["y_con"].shape[0] == 2
    m = _tiny(k_crops=4, con_share=0.5, budget="extra")
    b, _, _ = _step(m)
    assert b["crops"].shape[:2] == (2, 4) and b["x"].shape[0] == 16


@pytest.mark.parametrize("over", [
    {}, {"saliency": "teacher_decoder_attn"}, {"saliency": "spectral_residual"}, {"saliency": "random"},
    {"anchor": "train_crop"}, {"loss_form": "two_term"}, {"intra_negatives": False},
    {"inter_negatives": False}, {"mutual": "pred_consistency"}, {"mutual": "off"},
    {"proj_dim": 0, "proj_source": "patch_mean"}, {"proj_source": "decoder"}, {"crop_mode": "multiscale"},
    {"budget": "extra", "k_crops": 2}, {"eval_branch": "teacher"}, {"eval_branch": "mean"},
    {"anchor": "native_crop"}, {"anchor": "native_crop", "saliency": "random"},
    {"anchor": "native_crop", "saliency": "spectral_residual"}, {"queue_size": 64},
    {"queue_size": 64, "loss_form": "two_term"}, {"max_iou": 1.0, "flip_crops": False},
])
def test_every_switch_trains_and_infers(over):
    m = _tiny(**over)
    m.train()
    _, loss, logs = _step(m)
    assert torch.isfinite(loss) and set(logs) >= {"loss_reg", "loss_con"}
    assert m.student.encoder.patch_embed.proj.weight.grad is not None
    if over.get("proj_dim", 1):
        assert m.proj.fc1.weight.grad is not None and m.proj.fc1.weight.grad.abs().sum() > 0
    m.eval()
    x = torch.randn(3, 3, m.input_size, m.input_size, requires_grad=True)
    score, feats = m(x, return_features=True)
    assert score.shape == (3,) and feats["cls"].shape[0] == 3
    if over.get("eval_branch", "student") == "student":
        assert torch.allclose(score, m.student(x))


def test_eval_branch_mean_and_gradcam_hooks():
    m = _tiny(eval_branch="mean").eval()
    with torch.no_grad():
        for p in m.teacher.parameters():
            p.add_(0.05)                                                    # make the branches differ
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(m(x), 0.5 * (m.student(x) + m.teacher(x)), atol=1e-6)
    seen = {}
    (layer, arg), = m.cam_points()
    assert layer is m.student.encoder.norm                                 # the student, under "mean"
    h = layer.register_forward_pre_hook(lambda mod, args: seen.__setitem__("t", args[arg]))
    m(x)
    h.remove()
    grid = m.cam_reshape(seen["t"])
    assert grid.shape == (2, 48, 8, 8)
    assert torch.equal(grid[1, :, 0, 1], seen["t"][1, 2])                  # token 1 + 1 (after the CLS)
    d = DEIQT("tiny", 64)
    assert d.cam_points() == [(d.encoder.norm, 0)] and d.cam_reshape(seen["t"]).shape == (2, 48, 8, 8)


def test_unknown_switch_is_an_error():
    with pytest.raises(ValueError, match="saliency"):
        _tiny(saliency="gradcam")


def test_crops_flip_and_overlap_limit_reach_the_sampler():
    seen = {}

    class Recording(FakeLMLIQASampler):
        def crops_with_boxes(self, idx, k, size, generator=None, mode="native", flip=False, max_iou=1.0):
            seen.update(flip=flip, max_iou=max_iou)
            return super().crops_with_boxes(idx, k, size, generator, mode)
    idx, y, g = torch.arange(8), torch.linspace(0, 1, 8), torch.Generator().manual_seed(0)
    _tiny().train_batch(Recording(), idx, y, g)
    assert seen == {"flip": True, "max_iou": 0.5}
    _tiny(flip_crops=False, max_iou=1.0).train_batch(Recording(), idx, y, g)
    assert seen == {"flip": False, "max_iou": 1.0}


def test_native_crop_anchor_centred_on_the_saliency_peak():
    centres = []

    class Recording(FakeLMLIQASampler):
        def crops_at(self, idx, c, size, flip=False, generator=None):
            centres.append(c)
            return super().crops_at(idx, c, size, flip, generator)
    m = _tiny(anchor="native_crop")
    b = m.train_batch(Recording(), torch.arange(16), torch.linspace(10, 90, 16), torch.Generator().manual_seed(0))
    M = b["crops"].shape[0]
    assert b["anchor_x"].shape == (M, 3, 64, 64) and b["sal_map"].shape == (M, 8, 8)
    sal = m.saliency(b["glob"])
    assert torch.equal(sal, b["sal_map"])
    r, c = divmod(sal[0].flatten().argmax().item(), 8)
    assert centres[0][0].tolist() == pytest.approx([(r + 0.5) / 8, (c + 0.5) / 8])
    loss, logs = m.loss(b)
    assert torch.isfinite(loss) and logs["loss_con"] > 0


def test_queue_fills_wraps_and_skips_own_image():
    m = _tiny(queue_size=10, k_crops=4, con_share=0.5)      # M = 2 images x 4 crops = 8 entries per step
    assert m.queue.shape == (10, 128) and m.queue_img.tolist() == [-1] * 10
    assert {"queue", "queue_img", "queue_ptr"} <= set(m.state_dict())
    first, img1 = None, None
    for step in range(2):
        b, _, _ = _step(m)
        z, img = m._pending[0]
        assert z.shape == (8, 128) and not z.requires_grad
        m.after_step()
        assert m._pending == []
        if step == 0:
            first, img1 = z.clone(), img.clone()
            assert m.queue_ptr.item() == 8 and torch.equal(m.queue[:8], first)
            assert m.queue_img[:8].tolist() == b["idx_con"].repeat_interleave(4).tolist()
            assert m.queue_img[8:].tolist() == [-1, -1]
    # the second step's 8 entries went to slots 8, 9, 0, ..., 5; slots 6, 7 still hold step 1's last two
    assert m.queue_ptr.item() == 6
    assert torch.equal(m.queue[[8, 9, 0, 1, 2, 3, 4, 5]], z) and torch.equal(m.queue[6:8], first[6:8])
    # an anchor image's own queued crops are left out of its negatives
    valid = m._queue_args(torch.tensor([int(img1[7]), 999]))["queue_valid"]
    assert not valid[0, 7] and valid[1].all()


def test_queue_holds_the_ema_teacher_keys():
    """MoCo (D16 "teacher"): the queue gets the EMA teacher's keys of the step's crops, through an EMA
    copy of the projector; "student" keeps the student's own detached embeddings."""
    m = _tiny(queue_size=16, k_crops=4, con_share=0.5, ema_momentum=0.9)
    assert m.lmliqa.queue_source == "teacher" and not any(p.requires_grad for p in m.teacher_proj.parameters())
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.5)
    b, _, _ = _step(m, opt)
    with torch.no_grad():
        want = m.embed(m.teacher(b["crops"].flatten(0, 1), return_features=True)[1], m.teacher_proj)
        student = m.embed(m.student(b["crops"].flatten(0, 1), return_features=True)[1])
    tp0 = [p.clone() for p in m.teacher_proj.parameters()]
    m.after_step()
    torch.testing.assert_close(m.queue[:8], want)
    assert not torch.allclose(m.queue[:8], student, atol=1e-3)           # not the student's embeddings
    for t, a, s in zip(m.teacher_proj.parameters(), tp0, m.proj.parameters()):   # EMA of the projector
        torch.testing.assert_close(t, 0.9 * a + 0.1 * s.detach())
    old = _tiny(queue_size=16, k_crops=4, con_share=0.5, queue_source="student")
    assert old.teacher_proj is None and "teacher_proj.fc1.weight" not in old.state_dict()
    b, _, _ = _step(old)
    z_crop = old._pending[0][0]
    with torch.no_grad():
        torch.testing.assert_close(z_crop, old.embed(old.student(b["crops"].flatten(0, 1), return_features=True)[1]))


@pytest.mark.filterwarnings("ignore:.*plcc_logistic left empty")
def test_queue_resumes_bit_identically(tmp_path):
    data = tiny_manifest(tmp_path / "data", n=20)
    cfg = make_config("smoke", "lmliqa", {
        "data.crop_size": 32, "data.crops_train": 4, "data.crops_test": 2, "train.global_batch": 8,
        "train.epochs": 3, "train.warmup_epochs": 1, "train.decay_epochs": 2, "train.num_threads": 2,
        "lmliqa.k_crops": 2, "lmliqa.queue_size": 16})
    split = make_split(data, 1)
    full = train_run(cfg, data, split, tmp_path / "full", progress=False)
    with pytest.raises(TrainingInterrupted):
        train_run(cfg, data, split, tmp_path / "cut", progress=False, stop_after_epoch=1)
    resumed = train_run(cfg, data, split, tmp_path / "cut", progress=False)
    assert resumed["epochs"] == full["epochs"] and resumed["predictions"] == full["predictions"]
    a, b = (load_file(str(tmp_path / run / "model.safetensors")) for run in ("full", "cut"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (a["queue_img"] >= 0).all() and a["queue"].abs().sum() > 0          # filled (and wrapped)

