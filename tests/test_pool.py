"""A sweep over a pool of devices, and two commands on one results folder: every run trained once.

Tiny DEIQT runs on the embedded synthetic set (built once for the module); `cpu,cpu` stands for a pool
of two GPUs. Who trained what is read back from results/claims.jsonl.
"""
from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from iqa_utils.config.check import make_config
from iqa_utils.data.registry import load_manifest
from iqa_utils.runs.experiments import configs, run_all
from iqa_utils.runs.pool import parse_devices
from iqa_utils.runs.records import CLAIMS_LOG, data_digest, load_records, record_path, run_key
from iqa_utils.system import read_jsonl

from helpers import dead_pid, plant_claim

SMOKE_BATCH = make_config("smoke").train.global_batch      # the profile's, whatever it is

ROOT = Path(__file__).resolve().parent.parent
TINY = {"train.epochs": 1, "data.crops_train": 1, "data.crops_test": 1, "train.warmup_epochs": 0,
        "data.train_fraction": 0.3, "train.num_threads": 1}
SEEDS = [0, 1, 2, 3]


def _trained(results) -> Counter:
    """How many times each run was claimed for training (a claim or a takeover starts a training)."""
    return Counter(e["run"] for e in read_jsonl(Path(results) / CLAIMS_LOG))


def test_parse_devices():
    assert parse_devices("cuda:0, cuda:1") == ["cuda:0", "cuda:1"]
    assert parse_devices("cpu") == ["cpu"] and parse_devices(None) == [] and parse_devices("") == []


@pytest.mark.slow
def test_two_workers_train_every_run_once(data_root, tmp_path):
    cfgs = configs("smoke", "deiqt", ["synthetic"], SEEDS, TINY)
    data = data_digest(load_manifest("synthetic", data_root))
    results = tmp_path / "results"
    dead = record_path(cfgs[0], results, data).with_suffix(".claim")
    plant_claim(dead, pid=dead_pid())                      # a worker that died mid-run: its claim is stale
    df = run_all([(c, "") for c in cfgs], results, str(data_root), progress=False, device="cpu,cpu")
    assert sorted(df.split_seed) == SEEDS and df.srcc.notna().all()
    assert len(load_records(results)) == 4 and not list(results.rglob("*.claim"))
    keys = {run_key(c, data) for c in cfgs}
    assert _trained(results) == Counter({k: 1 for k in keys})
    events = read_jsonl(results / CLAIMS_LOG)
    assert [e["event"] for e in events if e["run"] == run_key(cfgs[0], data)] == ["took over"]
    assert not (results / "work").exists() or not any((results / "work").iterdir())


SCRIPT = """
import json, sys
import torch
from iqa_utils.runs import claims
from iqa_utils.runs.experiments import configs, run_all
claims.POLL_S = 0.2                        # wait for the other process's runs without dawdling
torch.set_num_threads(1)
results, data_root, tiny, seeds = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
df = run_all([(c, "") for c in configs("smoke", "deiqt", ["synthetic"], seeds, tiny)], results, data_root,
             progress=False, device="cpu")
print(json.dumps(df.srcc.tolist()))
"""


@pytest.mark.slow
def test_two_commands_on_one_results_folder(data_root, tmp_path):
    results = tmp_path / "results"
    cmd = [sys.executable, "-c", SCRIPT, str(results), str(data_root), json.dumps(TINY), json.dumps(SEEDS)]
    procs = [subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    tables = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert tables[0] == tables[1] and len(tables[0]) == 4       # both see every run's record
    assert sorted(_trained(results).values()) == [1, 1, 1, 1]
    assert len(load_records(results)) == 4


@pytest.mark.slow
def test_torchrun_trains_one_run_over_two_processes(data_root, tmp_path):
    """The command line under torchrun (gloo on the CPU): one record, written once, by a group of two."""
    results = tmp_path / "results"
    sets = [f"{k}={v}" for k, v in TINY.items()]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "iqa_utils.cli", "train", "--dataset", "synthetic", "--data-root", str(data_root),
           "--results-dir", str(results), "--device", "cpu", "--seeds", "0", "--set", *sets]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("DEIQT") == 1                      # rank 0 prints for the group
    recs = load_records(results)
    assert len(recs) == 1 and _trained(results) == Counter({recs.key[0]: 1})
    rec = json.loads(Path(recs.path[0]).read_text())
    assert rec["processes"] == 2 and rec["global_batch"] == SMOKE_BATCH and rec["micro_batch"] == SMOKE_BATCH // 2
