"""Memory known before a run: bytes saved for backward per sample, the peak estimate, the micro-batch
`train.micro_batch=auto` takes, and the table `iqa-kit plan` prints."""
import pytest
import torch

from iqa_utils import cli
from iqa_utils.config.check import make_config
from iqa_utils.models import costs, create_model
from iqa_utils.runs.estimate import memory_table


@pytest.fixture(scope="module")
def mem():
    model = create_model(make_config("smoke", "csfiqa", {"model.pretrained": False}))
    return model, costs.step_memory(model)


def test_saved_bytes_grow_with_the_batch_and_leave_the_weights_out(mem):
    model, m = mem
    two, four = costs.saved_bytes(model, 2), costs.saved_bytes(model, 4)
    assert 0 < two < four
    assert m["per_crop"] == pytest.approx((four - two) / 2)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    assert m["state"] >= weights + 3 * sum(p.numel() * 4 for p in model.parameters() if p.requires_grad)
    assert costs.saved_bytes(model, 4, dtype=torch.bfloat16) < four        # autocast keeps bf16 activations


def test_largest_micro_is_the_largest_divisor_that_fits():
    m = {"state": 1e9, "fixed": 0.0, "per_crop": 1e8 / costs.BACKWARD_OVERHEAD}
    assert costs.peak_bytes(m, 4) == pytest.approx(1.4e9)
    assert costs.largest_micro(12, m, 2e9, margin=1.0) == 6          # 1e9 + 6e8 fits, 1.2e9 + 1e9 does not
    assert costs.largest_micro(12, m, 1e9, margin=1.0) is None
    assert costs.cards_fitting(m, 512, cards=(16, 80), margin=1.0) == [80]


def test_memory_table_of_a_profile(tmp_path, monkeypatch):
    monkeypatch.setenv("IQA_KIT_CACHE", str(tmp_path))
    t = memory_table("smoke", models=("deiqt", "csfiqa"))
    assert list(t.model) == ["deiqt", "csfiqa"] and (t["global batch"] == make_config("smoke").train.global_batch).all()
    assert {"peak GiB at batch", "fits at batch", "micro on 16 GB", "micro on 141 GB"} <= set(t.columns)
    assert (t["MiB / sample"] > 0).all()
    assert len(list((tmp_path / "memory").glob("*.json"))) == 2                # measured once, cached


def test_estimate_covers_a_measured_cpu_step():
    """The estimate against the peak resident memory of a real training step (fwd, bwd, AdamW) on the CPU."""
    model = create_model(make_config("smoke", "deiqt", {"model.pretrained": False}))
    mem = costs.step_memory(model)
    measured = costs.peak_memory(model, batch=64, train=True)
    if measured["method"] != "cpu_vmhwm_delta":
        pytest.skip("no resettable peak RSS here")
    assert 0.8 < costs.peak_bytes(mem, 64) / 2**20 / measured["peak_mib"] < 1.5


def test_plan_prints_the_memory_per_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("IQA_KIT_CACHE", str(tmp_path))
    assert cli.main(["plan", "--profile", "smoke", "--results-dir", str(tmp_path / "results")]) == 0
    out = capsys.readouterr().out
    assert "GPU memory of a training step at bf16" in out and "| csfiqa  | synthetic |" in out
    assert "micro on 16 GB" in out
