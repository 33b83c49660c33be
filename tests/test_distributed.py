"""One run over several processes (torchrun's environment, gloo on the CPU) trains as one process does.

What makes the two match: every rank lists the same shuffled epoch and takes its share of each step's
global batch; a sample's crop depends only on (seed, step, its position in the global batch)
(CropStream), so the ranks cut the crops a single process cuts; DDP averages the gradients.
"""
from __future__ import annotations

import json
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp

from iqa_utils.config.check import make_config
from iqa_utils.data.splits import make_split
from iqa_utils.data.cache import open_store
from iqa_utils.data.store import CropSampler, CropStream
from iqa_utils.system import KitError
from iqa_utils.training import distributed, engine
from iqa_utils.training.distributed import Dist

from helpers import tiny_cfg, two_steps, two_steps_sampler

pytestmark = pytest.mark.filterwarnings("ignore:.*plcc_logistic left empty")

SMOKE_BATCH = make_config("smoke").train.global_batch      # the profile's, whatever it is


# ---- crops that do not depend on the split -------------------------------------------------------
def test_crop_streams_give_a_sample_its_crop_whatever_the_split(tiny_data):
    sampler = CropSampler(open_store(tiny_data, min_side=32, kind="ram", progress=False))
    idx = torch.tensor([3, 0, 7, 3, 11, 5, 2, 9])
    whole = sampler.random_crops(idx, 32, flip=True, generator=CropStream(7, 12, 0, 8))
    halves = [sampler.random_crops(idx[s:s + 4], 32, flip=True, generator=CropStream(7, 12, s, 4)) for s in (0, 4)]
    assert torch.equal(whole, torch.cat(halves))
    assert not torch.equal(whole[0], whole[3])                # the same image twice: two crops
    assert not torch.equal(whole, sampler.random_crops(idx, 32, True, CropStream(7, 13, 0, 8)))   # next step
    boxes = [sampler.crops_with_boxes(idx[s:s + n], 3, 32, CropStream(1, 0, s, n), mode="multiscale")[1]
             for s, n in ((0, 8), (0, 2), (2, 6))]
    torch.testing.assert_close(boxes[0], torch.cat(boxes[1:]))


# ---- what torchrun may and may not split ---------------------------------------------------------
def test_shares_and_refusals():
    assert [Dist(r, 4).share(16) for r in range(4)] == [slice(0, 4), slice(4, 8), slice(8, 12), slice(12, 16)]
    two = Dist(1, 2)
    assert engine._batching(tiny_cfg(), "tiny", 20, dist=two) == (8, 10, 4)
    assert engine._batching(tiny_cfg(**{"train.micro_batch": 2}), "tiny", 20, dist=two)[2] == 2
    with pytest.raises(KitError, match="does not split evenly"):
        engine._batching(tiny_cfg(**{"train.global_batch": 9}), "tiny", 20, dist=two)
    with pytest.raises(KitError, match="^train.micro_batch: 3 does not divide the 4 samples"):
        engine._batching(tiny_cfg(**{"train.micro_batch": 3, "train.global_batch": 12}), "tiny", 20, dist=Dist(0, 3))
    for model in ("csfiqa", "lmliqa"):          # contrastive sets over the global batch: split like any other
        assert engine._batching(make_config("smoke", model), "synthetic", 400, dist=two)[::2] == (SMOKE_BATCH, SMOKE_BATCH // 2)


def test_context_reads_torch_s_process_group_on_every_call(monkeypatch):
    """No joined flag of the kit's own: a group torch already holds is joined as it is, and once it is
    gone the next call joins afresh (here failing for want of torchrun's variables) instead of handing
    back the Dist of a group that no longer exists."""
    for var in ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")                       # as under torchrun: launched()
    torch_dist.init_process_group("gloo", store=torch_dist.HashStore(), rank=0, world_size=1)
    try:
        assert distributed.context("cpu") == distributed.context("cpu") == Dist(0, 1, torch.device("cpu"))
    finally:
        torch_dist.destroy_process_group()
    with pytest.raises(ValueError, match="env:// rendezvous"):
        distributed.context("cpu")


# ---- contrastive sets gathered over the ranks ------------------------------------------------------
GC_CASES = [("csfiqa", {"csfiqa.nsm": "regional"}, 4), ("csfiqa", {"csfiqa.nsm": "qfm"}, 2),
            ("lmliqa", {"lmliqa.queue_size": 24}, 4), ("lmliqa", {"lmliqa.queue_size": 24}, 2)]


def _grad_rank(rank: int, world: int, port: int, out: str) -> None:
    """One torchrun process: its share of the steps of every case, through DDP and the gathers."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    d = distributed.context("cpu")
    res = [two_steps_floats(name, over, two_steps_sampler(), micro, d) for name, over, micro in GC_CASES]
    if rank == 0:
        torch.save(res, os.path.join(out, "ddp.pt"))


def two_steps_floats(name, over, sampler, micro, d=None):
    """helpers.two_steps with the loss and logs as floats and the queue (what a rank sends back)."""
    grads, loss, logs, model = two_steps(name, over, sampler, micro, d)
    return grads, float(loss), {k: float(v) for k, v in logs.items()}, getattr(model, "queue", None)


@pytest.mark.slow
def test_two_processes_compute_the_contrastive_sets_of_one(tmp_path):
    """CSFIQA (regional NSM, QFM) and LML-IQA (with its queue), global batch 8: two gloo processes (with
    and without micro-batches) give the loss, the logs, the gradients (DDP-averaged) and the queue of one
    process computing the unsplit batch."""
    single = [two_steps_floats(name, over, two_steps_sampler(), 8) for name, over, _ in GC_CASES]
    mp.spawn(_grad_rank, args=(2, _free_port(), str(tmp_path)), nprocs=2)
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=False)
    for (g1, l1, logs1, q1), (g2, l2, logs2, q2), case in zip(single, ddp, GC_CASES):
        assert l2 == pytest.approx(l1, rel=1e-5), case
        assert logs2 == pytest.approx(logs1, rel=1e-4, abs=1e-6), case
        assert g1.keys() == g2.keys()
        for k in g1:
            torch.testing.assert_close(g2[k], g1[k], rtol=1e-4, atol=1e-6, msg=f"{case} {k}")
        if q1 is not None:
            torch.testing.assert_close(q2, q1)


# ---- two processes --------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, cfg, manifest, split, out: str) -> None:
    """One torchrun process: the environment torchrun sets, then a run interrupted after epoch 1 and
    resumed (rank 0 writes the checkpoint; every rank reads it back)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    try:
        engine.train_run(cfg, manifest, split, out, progress=False, stop_after_epoch=1)
    except engine.TrainingInterrupted:
        pass
    result = engine.train_run(cfg, manifest, split, out, progress=False)
    with open(os.path.join(out, f"result{rank}.json"), "w") as f:
        json.dump(result, f)


@pytest.mark.slow
def test_two_processes_train_like_one_with_accumulation(tiny_data, tmp_path):
    split = make_split(tiny_data, 1)
    over = {"train.selection": "max_test_plcc", "train.global_batch": 8, "train.epochs": 2,
            "data.crops_train": 2, "train.decay_epochs": 1}            # 3 steps per epoch: a short test
    single = engine.train_run(tiny_cfg(**over, **{"train.micro_batch": 4}), tiny_data, split, tmp_path / "one",
                              progress=False)
    mp.spawn(_rank, args=(2, _free_port(), tiny_cfg(**over), tiny_data, split, str(tmp_path / "ddp")), nprocs=2)
    ranks = [json.loads((tmp_path / "ddp" / f"result{r}.json").read_text()) for r in range(2)]
    timings = ("time_s", "train_time_s", "eval_time_s", "train_crops_per_s", "eval_crops_per_s")
    same = [{k: v for k, v in r.items() if k not in timings} for r in ranks]
    assert same[0] == same[1]                                     # every rank holds the same result
    ddp = ranks[0]
    assert ddp["processes"] == 2 and single["processes"] == 1
    assert ddp["micro_batch"] == single["micro_batch"] == 4 and ddp["global_batch"] == 8
    assert [e["epoch"] for e in ddp["epochs"]] == [1, 2] and ddp["selected_epoch"] == single["selected_epoch"]
    for a, b in zip(ddp["epochs"], single["epochs"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["test"] == pytest.approx(b["test"], rel=1e-3, abs=1e-4)
    np.testing.assert_allclose(ddp["predictions"]["pred"], single["predictions"]["pred"], rtol=1e-3, atol=1e-3)
    assert ddp["final"]["srcc"] == pytest.approx(single["final"]["srcc"], abs=1e-6)
    files = sorted(p.name for p in (tmp_path / "ddp").iterdir())     # rank 0's files, written once
    assert files == ["checkpoint.pt", "config.json", "model.safetensors", "result0.json", "result1.json"]
