"""Cost counters: exact on hand-checkable modules, DEIQT's published size, timing helpers run."""
import math

import pytest
import torch
from torch import nn

from iqa_utils import devices
from iqa_utils.config.check import make_config
from iqa_utils.config.profiles import PROFILE_SCOPE
from iqa_utils.models import costs, create_model
from iqa_utils.models.deiqt import DEIQT
from iqa_utils.reporting.paper_tables import cost_analysis

DEIQT_PARAMS = 24_043_776          # docs/protocol.md §1
DEIQT_GMACS = 4.67                 # encoder ≈4.60 + decoder ≈0.07 at 224


def test_linear_macs_exact():
    # Flatten (3*4*5 = 60 features) -> Linear(60, 7): 60 * 7 multiply-adds per sample; bias not counted
    model = nn.Sequential(nn.Flatten(), nn.Linear(60, 7))
    assert costs.count_macs(model, (4, 5)) * 1e9 == pytest.approx(420)
    assert costs.count_macs(model, (4, 5), batch=3) * 1e9 == pytest.approx(420)   # per crop


def test_conv_and_explicit_inputs_exact():
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)      # 8 * 6*6 outputs * 3*3*3 each
    assert costs.count_macs(conv, 6) * 1e9 == pytest.approx(8 * 36 * 27)
    lin = nn.Linear(10, 4)
    assert costs.count_macs(lin, inputs=torch.zeros(2, 10)) * 1e9 == pytest.approx(40)


def test_frozen_params_counted_as_frozen():
    model = nn.Sequential(nn.Linear(10, 5), nn.Linear(5, 2))      # 55 + 12
    model[0].requires_grad_(False)
    assert costs.count_params(model) == {"total": 67, "trainable": 12, "frozen": 55}


@pytest.fixture(scope="module")
def deiqt_small():
    torch.manual_seed(0)
    model = DEIQT("small")
    return model, costs.count_macs(model, 224, by_op=True)


def test_deiqt_full_size_params_and_macs(deiqt_small):
    model, (gmacs, ops) = deiqt_small
    assert costs.count_params(model) == {"total": DEIQT_PARAMS, "trainable": DEIQT_PARAMS, "frozen": 0}
    assert gmacs == pytest.approx(DEIQT_GMACS, abs=0.02)
    # attention matmuls (~0.36 G) must be counted: CPU's fused SDPA kernel would hide them
    assert ops["aten.bmm"] == pytest.approx(0.36, abs=0.01)
    assert model.training                            # counting left the mode as it was


def test_meta_device_matches_real(deiqt_small):
    with torch.device("meta"):
        meta = DEIQT("small")
    assert costs.count_params(meta)["total"] == DEIQT_PARAMS
    assert costs.count_macs(meta, 224) == pytest.approx(deiqt_small[1][0], rel=1e-6)


def test_timing_memory_and_table():
    torch.manual_seed(0)
    tiny = DEIQT("tiny", img_size=96)
    before = [p.detach().clone() for p in tiny.parameters()]
    assert 0 < costs.latency(tiny, device="cpu", warmup=1, iters=2) < 1e4
    assert costs.throughput(tiny, device="cpu", batch=4, warmup=1, iters=2) > 0
    assert costs.throughput(tiny, device="cpu", batch=4, train=True, warmup=1, iters=1) > 0
    assert all(torch.equal(a, b) for a, b in zip(before, tiny.parameters()))   # lr 0: weights kept
    mem = costs.peak_memory(tiny, device="cpu", batch=2)
    assert mem["peak_mib"] >= 0 and mem["method"].startswith("cpu_")

    with torch.device("meta"):
        meta = DEIQT("tiny", img_size=96)
    df = costs.cost_table({"tiny": tiny, "tiny-meta": meta}, device="cpu", crops_per_image=4, memory=True,
                          timing=costs.Timing(batch=2, train_batch=2, warmup=1, iters=2))
    assert list(df["model"]) == ["tiny", "tiny-meta"]
    assert df.loc[0, "GMACs_per_crop"] == pytest.approx(df.loc[1, "GMACs_per_crop"])
    assert df.loc[0, "GMACs_per_image"] == pytest.approx(4 * df.loc[0, "GMACs_per_crop"])
    assert df.loc[0, "latency_ms"] > 0 and math.isnan(df.loc[1, "latency_ms"])
    assert df.loc[0, "device"] and df.loc[0, "device"] == devices.device_name("cpu")


@pytest.mark.parametrize("name, over", [
    ("csfiqa", {"csfiqa.scale_mode": "crop", "csfiqa.nsm": "pooled"}),                                   # nested crops
    ("lmliqa", {"lmliqa.anchor": "native_crop", "lmliqa.queue_size": 32}),       # crops_at, the queue
])
def test_training_throughput_runs_the_models_own_views(name, over):
    torch.manual_seed(0)
    model = create_model(make_config("smoke", name, over))
    assert costs.throughput(model, device="cpu", batch=8, train=True, warmup=1, iters=1) > 0


@pytest.mark.parametrize("name,low,high", [("deiqt", 23e6, 25e6), ("csfiqa", 200e6, 260e6), ("lmliqa", 47e6, 50e6)])   # LML-IQA: the student and its EMA teacher
def test_full_size_models_are_shapes_only(name, low, high):
    """Notebook 05 and `iqa-kit plan` count the paper-size models on the meta device: nothing allocated,
    read or downloaded, CSFIQA with the LLaMA-7B layer at its real shape (233M reported)."""
    model = costs.full_size_model(name)
    params = list(model.parameters())
    assert all(p.device.type == "meta" for p in params)
    assert low < sum(p.numel() for p in params) < high


def test_cost_analysis_counts_paper_size_and_times_the_profile_models(monkeypatch):
    """Notebook 05's table: the three models at full size (params, MACs; no timing) and at the profile's
    size on the device, at the profile's Timing (shrunk here to one repetition)."""
    monkeypatch.setitem(PROFILE_SCOPE["smoke"], "cost", {"batch": 1, "train_batch": 2, "warmup": 0, "iters": 1})
    t = cost_analysis("smoke", "cpu")
    assert t["size"].tolist() == ["full (paper)"] * 3 + ["tiny (smoke)"] * 3
    assert t["model"].tolist()[:3] == t["model"].tolist()[3:] == ["DEIQT", "CSFIQA", "LML-IQA"]
    full, tiny = t.iloc[:3].set_index("model"), t.iloc[3:].set_index("model")
    assert 200 < full.filter(like="params").iloc[:, 0]["CSFIQA"] < 260          # millions, LLaMA layer included
    assert (tiny.filter(like="params").iloc[:, 0] < 5).all()
