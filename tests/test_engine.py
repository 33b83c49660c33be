"""Engine: schedule, optimizer groups, accumulation, evaluation, selection, checkpoint/resume, predict."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from iqa_utils import devices
from iqa_utils.config.fields import ConfigError, TrainConfig
from iqa_utils.data.splits import make_split
from iqa_utils.data.cache import open_store
from iqa_utils.data.store import CropSampler
from iqa_utils.models.base import TestCrops
from iqa_utils.models.deiqt import DEIQT
from iqa_utils.models.registry import register_model
from iqa_utils.devices import atomic_save
from iqa_utils.training import engine
from iqa_utils.training.engine import TrainingInterrupted, train_run
from iqa_utils.training.evaluation import LabelNorm, evaluate
from iqa_utils.training.checkpoint import rng_state, set_rng_state
from iqa_utils.training.optim import lr_at, make_optimizer, param_groups, schedule_value
from iqa_utils.training.predict import load_trained, predict_images

from helpers import tiny_cfg

# tiny test splits (4 images) cannot carry a logistic fit; the engine says so in a warning
pytestmark = pytest.mark.filterwarnings("ignore:.*plcc_logistic left empty")


# ---- schedule ------------------------------------------------------------------------------------
def test_deiqt_step_schedule_hand_values():
    tc, E = TrainConfig(), 145                  # DEIQT defaults, LIVEC's 145 steps per epoch
    W, slope = 3 * E, (2e-4 - 2e-7) / (3 * E)
    assert lr_at(0, E, tc) == pytest.approx(2e-7)
    assert lr_at(1, E, tc) == pytest.approx(2e-7)             # one-step lag: f(0)
    assert lr_at(2, E, tc) == pytest.approx(2e-7 + slope)
    assert lr_at(E + 1, E, tc) == pytest.approx(2e-7 + E * slope)   # ~6.7e-5 early in epoch 2
    assert lr_at(3 * E, E, tc) == pytest.approx(2e-7 + (W - 1) * slope)   # first step of epoch 4: still f(W-1)
    assert lr_at(3 * E, E, tc) < 2e-4
    assert lr_at(3 * E + 1, E, tc) == pytest.approx(2e-5)      # the drop, one step into epoch 4
    assert lr_at(6 * E, E, tc) == pytest.approx(2e-5)
    assert lr_at(6 * E + 1, E, tc) == pytest.approx(2e-6)      # epochs 7-9
    assert lr_at(9 * E - 1, E, tc) == pytest.approx(2e-6)
    # the base LR is never held for a step
    assert max(lr_at(s, E, tc) for s in range(9 * E)) < 2e-4


def test_cosine_schedule():
    tc, E = TrainConfig(schedule="cosine"), 10
    assert lr_at(0, E, tc) == pytest.approx(tc.warmup_lr)
    assert lr_at(3 * E + 1, E, tc) == pytest.approx(tc.lr)
    assert lr_at(9 * E, E, tc) == pytest.approx(tc.min_lr + 0.5 * (tc.lr - tc.min_lr) * (1 + math.cos(
        math.pi * (9 * E - 1 - 3 * E) / (6 * E))))
    lrs = [lr_at(s, E, tc) for s in range(3 * E + 1, 9 * E)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


# ---- optimizer groups ----------------------------------------------------------------------------
def test_param_groups_follow_deiqt():
    model = DEIQT("tiny", 32)
    model.encoder.patch_embed.proj.weight.requires_grad_(False)
    groups = param_groups(model, 0.05)
    name = {id(p): n for n, p in model.named_parameters()}
    decay = {name[id(p)] for p in groups[0]["params"]}
    no_decay = {name[id(p)] for p in groups[1]["params"]}
    assert groups[0]["weight_decay"] == 0.05 and groups[1]["weight_decay"] == 0.0
    assert "decoder.queries" in decay                                   # 3-D query panel is decayed
    assert {"encoder.pos_embed", "encoder.cls_token", "encoder.blocks.0.ls1.gamma",
            "encoder.blocks.0.norm1.weight", "encoder.blocks.0.attn.qkv.bias"} <= no_decay
    assert "encoder.blocks.0.attn.qkv.weight" in decay
    assert "encoder.patch_embed.proj.weight" not in decay | no_decay    # frozen: left out
    n_trainable = sum(p.requires_grad for p in model.parameters())
    assert len(decay) + len(no_decay) == n_trainable


@register_model("_test_frozen_deiqt")
def _frozen(cfg):
    m = DEIQT(cfg.model.size, cfg.data.crop_size)
    m.encoder.patch_embed.requires_grad_(False)
    return m


# ---- evaluation ----------------------------------------------------------------------------------
class MeanPixel(torch.nn.Module):
    input_size = 32

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))

    def forward(self, x):
        return x.mean(dim=(1, 2, 3)) * self.w


def test_evaluate_is_per_image_mean_of_crops(tiny_data):
    store = open_store(tiny_data, min_side=32, kind="ram", progress=False)
    sampler = CropSampler(store)
    rows = [3, 0, 7, 11, 5, 2]
    labels = store.labels[rows].numpy()
    m, pred = evaluate(MeanPixel(), sampler, rows, labels=labels, crops=TestCrops(n=3, size=32), batch_size=4)
    crops = sampler.test_crops(torch.tensor(rows), 3, 32)
    want = crops.mean(dim=(1, 2, 3)).view(len(rows), 3).mean(1).double().numpy()
    np.testing.assert_allclose(pred, want, rtol=1e-6)
    assert set(m) == {"srcc", "plcc", "krcc", "rmse"}


# ---- training ------------------------------------------------------------------------------------
def _weights(folder):
    return load_file(str(Path(folder) / "model.safetensors"))


def test_learns_and_beats_untrained(tiny_data, tmp_path):
    cfg = tiny_cfg(**{"train.epochs": 5, "train.lr": 2e-3, "train.label_norm": "minmax", "data.crops_test": 4})
    split = make_split(tiny_data, 0, ratio=0.6)
    rec = train_run(cfg, tiny_data, split, tmp_path, progress=False)
    model, _ = load_trained(tmp_path)
    store = open_store(tiny_data, min_side=32, kind="ram", progress=False)
    torch.manual_seed(0)
    untrained = DEIQT("tiny", 32)                  # the trained model's own initial weights
    m0, _ = evaluate(untrained, CropSampler(store), split.test, labels=store.labels[split.test].numpy(),
                     crops=TestCrops(n=4, size=32))
    assert rec["final"]["srcc"] > max(0.7, m0["srcc"] + 0.3), (rec["final"], m0)
    assert rec["final"]["plcc_logistic"] is not None
    assert rec["train_crops_per_s"] > 0 and rec["eval_crops_per_s"] > 0
    assert rec["steps_per_epoch"] == len(split.train) * 4 // 8
    assert len(rec["epochs"]) == 5 and all("test" in e for e in rec["epochs"])
    # the saved weights are the trained model; predict from files reproduces the record's predictions
    pred = predict_images(model, list(tiny_data.df.path), n_crops=4)
    np.testing.assert_allclose(pred[split.test], rec["predictions"]["pred"], rtol=1e-4, atol=1e-4)


def test_resume_is_bit_identical(tiny_data, tmp_path):
    cfg = tiny_cfg(**{"train.selection": "max_test_plcc"})
    split = make_split(tiny_data, 1)
    full = train_run(cfg, tiny_data, split, tmp_path / "full", progress=False)
    with pytest.raises(TrainingInterrupted):
        train_run(cfg, tiny_data, split, tmp_path / "cut", progress=False, stop_after_epoch=1)
    assert (tmp_path / "cut" / "checkpoint.pt").exists()
    assert not (tmp_path / "cut" / "model.safetensors").exists()
    resumed = train_run(cfg, tiny_data, split, tmp_path / "cut", progress=False)
    assert resumed["epochs"] == full["epochs"]
    assert resumed["final"] == full["final"]
    assert resumed["predictions"] == full["predictions"]
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "cut")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # DEIQT's test-set selection: the highest test PLCC, ties to the later epoch, labelled in the record
    plccs = [e["test"]["plcc"] for e in full["epochs"]]
    best = max(i for i, v in enumerate(plccs) if v == max(plccs))
    assert full["selection"] == "max_test_plcc" and full["selected_epoch"] == best + 1
    assert full["final"]["srcc"] == full["epochs"][best]["test"]["srcc"]
    # a checkpoint of another config is not silently reused
    with pytest.raises(RuntimeError, match="another run"):
        train_run(tiny_cfg(**{"train.lr": 5e-4}), tiny_data, split, tmp_path / "cut", progress=False)


def test_val_selection_keeps_selected_weights(tiny_data, tmp_path):
    cfg = tiny_cfg(**{"train.selection": "val", "data.val_fraction": 0.25, "train.epochs": 2})
    split = make_split(tiny_data, 2, val_fraction=0.25)
    rec = train_run(cfg, tiny_data, split, tmp_path, progress=False)
    vals = [e["val"]["plcc"] for e in rec["epochs"]]
    best = max(i for i, v in enumerate(vals) if v == max(vals))
    assert rec["selected_epoch"] == best + 1
    assert rec["final"]["plcc"] == pytest.approx(rec["epochs"][best]["test"]["plcc"])
    model, _ = load_trained(tmp_path / "model.safetensors")
    store = open_store(tiny_data, min_side=32, kind="ram", progress=False)
    norm = LabelNorm(cfg.train.label_norm, tiny_data.label_range)      # records hold scores in label units
    _, pred = evaluate(model, CropSampler(store), split.test, labels=store.labels[split.test].numpy(),
                       crops=TestCrops(n=2, size=32), denorm=norm.inverse)
    np.testing.assert_allclose(pred, rec["predictions"]["pred"], rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="validation split"):
        train_run(cfg, tiny_data, make_split(tiny_data, 2), tmp_path / "noval", progress=False)


def test_accumulation_is_exact(tiny_data):
    """Real random crops, keyed by sample position: micro-batches of 3 give the loss and the gradient of
    the whole batch of 8."""
    sampler = CropSampler(open_store(tiny_data, min_side=32, kind="ram", progress=False))
    idx, labels = torch.tensor([0, 3, 5, 3, 9, 12, 1, 7]), torch.linspace(0, 100, len(tiny_data))
    grads = []
    for micro in (8, 3):
        torch.manual_seed(0)
        model = DEIQT("tiny", 32)
        loss, _ = engine.forward_backward(model, sampler, idx, labels=labels, streams=engine.crop_streams(0, 5),
                                          micro=micro, device=torch.device("cpu"))
        grads.append(({n: p.grad.clone() for n, p in model.named_parameters()}, loss))
    (g8, l8), (g3, l3) = grads
    assert float(l3) == pytest.approx(float(l8), rel=1e-6)     # approx takes numbers, not 0-d tensors
    for k in g8:
        torch.testing.assert_close(g3[k], g8[k], rtol=1e-4, atol=1e-6)


def test_frozen_params_get_no_update(tiny_data, tmp_path):
    train_run(tiny_cfg(**{"train.epochs": 1, "model.name": "_test_frozen_deiqt", "train.micro_batch": 4}),
              tiny_data, make_split(tiny_data, 0), tmp_path, progress=False)
    a = _weights(tmp_path)
    torch.manual_seed(0)                           # the engine seeds init with train.seed = 0
    init = DEIQT("tiny", 32).state_dict()
    for k in ("encoder.patch_embed.proj.weight", "encoder.patch_embed.proj.bias"):
        assert torch.equal(a[k], init[k])          # frozen: no update, no weight decay
    assert not torch.equal(a["encoder.pos_embed"], init["encoder.pos_embed"])


def test_zero_epochs_evaluates_the_untrained_model(tiny_data, tmp_path):
    rec = train_run(tiny_cfg(**{"train.epochs": 0}), tiny_data, make_split(tiny_data, 0), tmp_path, progress=False)
    assert [e["epoch"] for e in rec["epochs"]] == [0] and rec["selected_epoch"] == 0
    assert rec["final"]["srcc"] == rec["epochs"][0]["test"]["srcc"]


def test_too_few_images_for_a_batch(tiny_data, tmp_path):
    with pytest.raises(ConfigError, match="train.global_batch: 4096 is more than"):
        train_run(tiny_cfg(**{"train.global_batch": 4096}), tiny_data, make_split(tiny_data, 0), tmp_path,
                  progress=False)


# ---- files ---------------------------------------------------------------------------------------
def test_atomic_save_leaves_no_partial_file(tmp_path):
    target = tmp_path / "checkpoint.pt"
    atomic_save({"a": torch.ones(2)}, target)

    def dies_midway(obj, file):                     # savers write to a file object
        file.write(b"partial")
        raise KeyboardInterrupt

    def write_dies_midway(self, data):              # the interruption while the bytes reach the disk
        with open(self, "wb") as f:
            f.write(data[:3])
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_save({"a": torch.zeros(2)}, target, dies_midway)
    with pytest.MonkeyPatch.context() as mp, pytest.raises(KeyboardInterrupt):
        mp.setattr(Path, "write_bytes", write_dies_midway)
        atomic_save({"a": torch.zeros(2)}, target)
    assert torch.equal(torch.load(target, weights_only=True)["a"], torch.ones(2))   # old file intact
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]                # no temp left


def test_amp_choice():
    cpu = torch.device("cpu")
    assert devices.amp_dtype("auto", cpu) is None
    assert devices.amp_dtype("bf16", cpu) is torch.bfloat16 and devices.amp_dtype("off", cpu) is None


def test_load_trained_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_trained(tmp_path)


def test_evaluating_less_often_changes_no_number(tiny_data, tmp_path):
    """The smoke profile evaluates every other epoch (train.eval_every=2) to save time: an evaluation
    draws nothing from the training streams, so a run that keeps its last epoch (smoke's train.selection)
    ends with the same weights and scores."""
    assert tiny_cfg(**{"train.eval_every": 2}).key() != tiny_cfg().key()
    split = make_split(tiny_data, 0)
    every, other = [train_run(tiny_cfg(**{"train.eval_every": n}), tiny_data, split, tmp_path / str(n),
                              progress=False) for n in (1, 2)]
    assert [("test" in e) for e in other["epochs"]] == [False, True, True]     # epoch 2, and the last
    assert other["final"] == every["final"] and other["predictions"] == every["predictions"]
    a, b = _weights(tmp_path / "1"), _weights(tmp_path / "2")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_schedule_value_by_hand():
    """DEIQT's step schedule: linear warm-up over 2 epochs of 10 updates, then x0.1 every 3 epochs."""
    train = TrainConfig(lr=1e-3, warmup_lr=1e-6, warmup_epochs=2, decay_epochs=3, decay_rate=0.1)
    assert schedule_value(0, 10, train) == pytest.approx(1e-6)
    assert schedule_value(10, 10, train) == pytest.approx(1e-6 + 10 * (1e-3 - 1e-6) / 20)
    assert schedule_value(20, 10, train) == pytest.approx(1e-3)            # 20 // 30 = 0 decays
    assert schedule_value(30, 10, train) == pytest.approx(1e-4)
    assert schedule_value(65, 10, train) == pytest.approx(1e-5)


def test_make_optimizer_starts_at_the_warm_up_rate_without_decay_on_norms():
    train = TrainConfig(lr=1e-3, warmup_lr=2e-7, weight_decay=0.05, betas=(0.9, 0.95))
    opt = make_optimizer(DEIQT("tiny", 32), train, torch.device("cpu"))
    assert {g["lr"] for g in opt.param_groups} == {2e-7}
    assert sorted(g["weight_decay"] for g in opt.param_groups) == [0.0, 0.05]
    assert opt.param_groups[0]["betas"] == (0.9, 0.95)


def test_set_rng_state_puts_every_stream_back():
    gen = torch.Generator().manual_seed(3)
    saved = rng_state(gen)
    first = (torch.rand(2), np.random.rand(), torch.randint(9, (3,), generator=gen))
    set_rng_state(saved, gen)
    again = (torch.rand(2), np.random.rand(), torch.randint(9, (3,), generator=gen))
    assert torch.equal(first[0], again[0]) and first[1] == again[1] and torch.equal(first[2], again[2])
