"""Run records: paths, skip-if-done, resume through the work folder, flat tables, sharding."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from test_engine import tiny_cfg, tiny_manifest

from iqa_utils.config.check import override
from iqa_utils.config.profiles import shard
import iqa_utils.data.cache as cache
from iqa_utils.data.cache import StoreCache
from iqa_utils.data.splits import Split
from iqa_utils.runs.records import data_digest, load_records, record_path, run_key, run_or_load, source_split
from iqa_utils.system import git_commit
from iqa_utils.training import engine

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
    p = record_path(cfg, "res", "abcd1234")
    assert p.as_posix() == f"res/runs/deiqt/tiny/{cfg.key()}-s0-dabcd1234.json"
    cfg = override(cfg, {"test_dataset": "LIVEC", "split_seed": 3})
    assert record_path(cfg, "res", "x").parent.name == "tiny-to-LIVEC"
    assert record_path(cfg, "res", "x").name == f"{cfg.key()}-s3-dx.json" == f"{run_key(cfg, 'x')}.json"


def test_record_contents_and_files(done):
    cfg, results, rec = done
    path = record_path(cfg, results, rec["data"]["digest"])
    assert json.loads(path.read_text()) == json.loads(json.dumps(rec, default=str))
    assert rec["key"] == run_key(cfg, rec["data"]["digest"]) and rec["config"] == cfg.to_dict()
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
    assert not record_path(cfg, tmp_path, rec["data"]["digest"]).exists()
    assert (tmp_path / "work" / rec["key"] / "checkpoint.pt").is_file()
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
    cfg = cfg_for(**{"train.epochs": 1, "test_dataset": "tiny2"})
    rec = run_or_load(cfg, tmp_path / "res", manifest=manifest, test_manifest=target, progress=False)
    assert rec["test_dataset"] == "tiny2" and rec["split"]["n_test"] == 12
    assert rec["split"]["n_train"] == len(manifest) == 20          # the whole source trains (kit X1)
    assert rec["predictions"]["rows"] == list(range(12))
    assert record_path(cfg, tmp_path / "res", rec["data"]["digest"]).parent.name == "tiny-to-tiny2"
    assert load_records(tmp_path / "res", test_dataset="tiny2").shape[0] == 1


def test_cross_source_split_is_the_whole_source_unless_asked(manifest):
    cross = cfg_for(**{"test_dataset": "tiny2"})
    assert source_split(cross, manifest).train == list(range(len(manifest)))
    assert len(source_split(override(cross, {"data.cross_train": "split"}), manifest).train) == 16
    assert len(source_split(cfg_for(), manifest).train) == 16               # not a cross run: 80 %
    carved = source_split(override(cross, {"data.val_fraction": 0.1}), manifest)
    assert sorted(carved.train + carved.val) == list(range(len(manifest))) and len(carved.val) == 2
    # the choice is part of a cross run's key only
    assert cfg_for().key() == override(cfg_for(), {"data.cross_train": "split"}).key()
    assert cross.key() != override(cross, {"data.cross_train": "split"}).key()


def test_runs_sharing_a_store_cache_decode_their_data_once(manifest, tmp_path, monkeypatch):
    decoded, real = [], cache.decode_image
    monkeypatch.setattr(cache, "decode_image", lambda path, size_fn=None: decoded.append(path) or real(path, size_fn))
    stores, cfg = StoreCache(), cfg_for(**{"train.epochs": 1, "data.store": "ram"})
    for seed in (1, 2):                            # a sweep over split seeds, as run_all hands it down
        run_or_load(override(cfg, {"split_seed": seed}), tmp_path, manifest=manifest, progress=False, stores=stores)
    assert len(decoded) == len(manifest) and stores.opened == 1
    run_or_load(override(cfg, {"split_seed": 3}), tmp_path, manifest=manifest, progress=False)
    assert len(decoded) == 2 * len(manifest)       # the process kept nothing: a run without one decodes


def test_changed_label_means_a_new_run(tmp_path):
    """A record belongs to its data: correct one label and the run is trained again, on the new labels."""
    m = tiny_manifest(tmp_path / "data", n=20)
    cfg = cfg_for(**{"train.epochs": 1})
    first = run_or_load(cfg, tmp_path / "res", manifest=m, progress=False)
    again = run_or_load(cfg, tmp_path / "res", manifest=m, progress=False)                   # same data: loaded
    assert again == json.loads(json.dumps(first, default=str))
    fixed = m.subset(range(len(m)))
    fixed.df.loc[3, "label"] += 10.0
    with pytest.warns(UserWarning, match="other data"):
        second = run_or_load(cfg, tmp_path / "res", manifest=fixed, progress=False)
    assert second["key"] != first["key"] and second["data"]["digest"] != first["data"]["digest"]
    assert sorted(second["predictions"]["label"]) != sorted(first["predictions"]["label"]) or \
        3 not in second["predictions"]["rows"]
    assert len(list((tmp_path / "res" / "runs" / "deiqt" / "tiny").glob("*.json"))) == 2
    touched = m.subset(range(len(m)))
    Path(touched.df.path[5]).touch()                     # the same labels, an image file rewritten
    assert os.stat(touched.df.path[5]).st_mtime_ns != 0
    assert data_digest(touched) != first["data"]["digest"]
