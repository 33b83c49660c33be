"""Run records: paths, skip-if-done, resume through the work folder, flat tables, sharding."""
from __future__ import annotations

import json

import pytest

from iqa_utils import engine
from iqa_utils.data.splits import Split
from iqa_utils.runs import load_records, record_path, run_key, run_or_load, shard
from iqa_utils.system import git_commit
from test_engine import tiny_cfg, tiny_manifest


# tiny test splits (4 images) cannot carry a logistic fit; the engine says so in a warning
pytestmark = pytest.mark.filterwarnings("ignore:.*plcc_logistic left empty")


def cfg_for(**over):
    return tiny_cfg(**{"data.dataset": "tiny", "train.epochs": 2, **over})


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return tiny_manifest(tmp_path_factory.mktemp("tiny"), n=20)


@pytest.fixture(scope="module")
def done(manifest, tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    cfg = cfg_for()
    return cfg, results, run_or_load(cfg, results, manifest=manifest, progress=False)


def test_record_path_and_key():
    cfg = cfg_for()
    p = record_path(cfg, "res")
    assert p.as_posix() == f"res/runs/deiqt/tiny/{cfg.key()}-s0.json"
    cfg.test_dataset, cfg.split_seed = "LIVEC", 3
    assert record_path(cfg, "res").parent.name == "tiny-to-LIVEC"
    assert record_path(cfg, "res").name == f"{cfg.key()}-s3.json" == f"{run_key(cfg)}.json"


def test_record_contents_and_files(done):
    cfg, results, rec = done
    path = record_path(cfg, results)
    assert json.loads(path.read_text()) == json.loads(json.dumps(rec, default=str))
    assert rec["key"] == run_key(cfg) and rec["config"] == cfg.to_dict()
    assert rec["dataset"] == rec["test_dataset"] == "tiny"
    assert {"seed", "ratio", "fraction", "digest", "n_train", "n_test"} <= set(rec["split"])
    assert set(rec["final"]) >= {"srcc", "plcc", "plcc_logistic", "krcc", "rmse"}
    assert rec["selection"] == "last" and rec["selected_epoch"] == 2 and len(rec["epochs"]) == 2
    assert set(rec["versions"]) == {"python", "torch", "timm", "transformers", "iqa_kit"}
    assert len(rec["predictions"]["pred"]) == len(rec["predictions"]["label"]) == rec["split"]["n_test"]
    assert not (results / "work" / rec["key"]).exists()                   # checkpoint removed
    assert (results / "checkpoints" / rec["key"] / "model.safetensors").is_file()
    split = Split.load(results / rec["split"]["file"])
    assert split.digest() == rec["split"]["digest"] and split.test == rec["predictions"]["rows"]


def test_rerun_loads_instead_of_training(done, manifest, monkeypatch):
    cfg, results, rec = done

    def no_training(*a, **k):
        raise AssertionError("train_run called for a finished run")
    monkeypatch.setattr(engine, "train_run", no_training)
    assert run_or_load(cfg, results, manifest=manifest, progress=False) == json.loads(json.dumps(rec, default=str))


def test_interrupted_run_leaves_no_record_and_resumes(done, manifest, monkeypatch, tmp_path):
    cfg, _, rec = done
    real = engine.train_run
    monkeypatch.setattr(engine, "train_run", lambda *a, **k: real(*a, **k, stop_after_epoch=1))
    with pytest.raises(engine.TrainingInterrupted):
        run_or_load(cfg, tmp_path, manifest=manifest, progress=False)
    assert not record_path(cfg, tmp_path).exists()
    assert (tmp_path / "work" / run_key(cfg) / "checkpoint.pt").is_file()
    monkeypatch.setattr(engine, "train_run", real)
    again = run_or_load(cfg, tmp_path, manifest=manifest, progress=False)
    assert again["epochs"] == rec["epochs"] and again["final"] == rec["final"]


def test_load_records_and_filters(done, manifest):
    cfg, results, rec = done
    df = load_records(results)
    assert len(df) == 1
    row = df.iloc[0]
    assert (row.model, row.dataset, row.test_dataset, row.split_seed, row.selection) == \
        ("deiqt", "tiny", "tiny", 0, "last")
    assert row.srcc == rec["final"]["srcc"] and row["train.epochs"] == 2
    assert len(load_records(results, model=["deiqt", "csfiqa"], **{"train.epochs": 2})) == 1
    assert len(load_records(results, dataset="LIVE")) == 0
    with pytest.raises(KeyError):
        load_records(results, nonsense=1)
    assert load_records(results / "nothing").empty


def test_shard_and_git(tmp_path):
    items = list(range(10))
    parts = [shard(items, f"{i}/3") for i in range(3)]
    assert sorted(sum(parts, [])) == items and parts[0] == [0, 3, 6, 9]
    assert shard(items, None) == items
    for bad in ("3/3", "x", "1/0"):
        with pytest.raises(ValueError):
            shard(items, bad)
    assert git_commit(tmp_path) is None
    c = git_commit()
    assert c is None or len(c) == 40


def test_cross_dataset_run(manifest, tmp_path):
    target = tiny_manifest(tmp_path / "other", n=12, seed=5)
    target.name = "tiny2"
    cfg = cfg_for(**{"train.epochs": 1})
    cfg.test_dataset = "tiny2"
    rec = run_or_load(cfg, tmp_path / "res", manifest=manifest, test_manifest=target, progress=False)
    assert rec["test_dataset"] == "tiny2" and rec["split"]["n_test"] == 12
    assert rec["predictions"]["rows"] == list(range(12))
    assert record_path(cfg, tmp_path / "res").parent.name == "tiny-to-tiny2"
    assert load_records(tmp_path / "res", test_dataset="tiny2").shape[0] == 1
