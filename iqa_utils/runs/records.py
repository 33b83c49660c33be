"""Run records: one JSON file per (model config, dataset, split seed, protocol); what is done is skipped.

    results/runs/<model>/<dataset>[-to-<test dataset>]/<run key>.json   the record; run key =
                             <cfg.key()>-s<split seed>-d<data digest>  (config, split, the data itself)
    results/splits/<dataset>/<digest>.json                              the split drawn
    results/runs/<model>/<dataset>/<run key>.claim   while a process trains it (claims.py)
    results/work/<key>/checkpoint.pt                 while training (a rerun resumes; removed when done)
    results/checkpoints/<key>/model.safetensors      the final (selected) weights + config.json

`run_or_load(cfg, results_dir)` trains only when the record is missing, so notebooks, a Colab session
that reconnects, and sweeps sharded over machines (`config.profiles.shard(items, "i/N")`) all pick up where they stopped.
A claim file keeps two processes (pool workers, or two commands started on one results folder) from
training the same run; under torchrun, rank 0 claims and writes for the whole process group.
"""
from __future__ import annotations

import hashlib
import shutil
import warnings
from pathlib import Path

import pandas as pd

from ..config.fields import RunConfig
from ..data.registry import load_manifest
from ..data.splits import make_split
from ..devices import environment, resolve_device
from ..system import atomic_write_json, read_json
from ..training import distributed, engine
from ..training.checkpoint import CHECKPOINT
from ..training.predict import CONFIG, WEIGHTS
from . import claims

TABLE_COLUMNS = ["model", "size", "dataset", "test_dataset", "split_seed", "train_fraction", "val_fraction",
                 "selection", "selected_epoch", "srcc", "plcc", "plcc_logistic", "krcc", "rmse", "profile",
                 "pretrained", "epochs", "n_train", "n_test", "split_digest", "time_s", "train_crops_per_s",
                 "eval_crops_per_s", "device", "key", "path"]


def data_digest(manifest, test_manifest=None) -> str:
    """The data a run sees (its training set, and its test set in a cross-dataset run), as one hash."""
    parts = [manifest.digest()] + ([test_manifest.digest()] if test_manifest is not None else [])
    return hashlib.sha1("+".join(parts).encode()).hexdigest()[:8]


def run_key(cfg: RunConfig, data: str) -> str:
    """What decides a run's numbers: the config, the split seed and the data (data_digest)."""
    return f"{cfg.key()}-s{cfg.split_seed}-d{data}"


def _dataset_dir(dataset: str, test_dataset: str | None) -> str:
    # "-to-" rather than "->": '>' is not allowed in Windows file names
    return f"{dataset}-to-{test_dataset}" if test_dataset and test_dataset != dataset else dataset


def record_path(cfg: RunConfig, results_dir, data: str) -> Path:
    return (Path(results_dir) / "runs" / cfg.model.name / _dataset_dir(cfg.data.dataset, cfg.test_dataset)
            / f"{run_key(cfg, data)}.json")


def records_on_other_data(cfg: RunConfig, results_dir, data: str) -> list[Path]:
    """Records of the same config and split seed made on other data (a corrected label file, another copy
    of the dataset): they are never reused, and the notebooks say they exist."""
    here = record_path(cfg, results_dir, data)
    return sorted(p for p in here.parent.glob(f"{cfg.key()}-s{cfg.split_seed}-d*.json") if p != here)


def load_record(path) -> dict:
    return read_json(path, "run record")


def build_record(cfg: RunConfig, result: dict, manifest, test_manifest, split, split_file: str) -> dict:
    """The run record: what ran (key, config, data, split) + what the engine returned + the environment."""
    data = data_digest(manifest, test_manifest)
    test = test_manifest if test_manifest is not None else manifest
    return {"key": run_key(cfg, data), "config": cfg.to_dict(), "dataset": manifest.name,
            "test_dataset": test.name,
            "data": {"digest": data, "train": manifest.digest(), "test": test.digest(), "root": str(manifest.root),
                     "test_root": str(test.root), "n_images": len(manifest), "n_test_images": len(test)},
            "split": {**split.summary(), "n_test": len(result["predictions"]["rows"]), "file": split_file},
            **result, **environment(resolve_device(cfg.train.device))}


def _publish_weights(work: Path, final_dir: Path) -> None:
    final_dir.mkdir(parents=True, exist_ok=True)
    for name in (WEIGHTS, CONFIG):
        (work / name).replace(final_dir / name)


CLAIMS_LOG = "claims.jsonl"


def _manifests(cfg: RunConfig, manifest, test_manifest):
    manifest = manifest or load_manifest(cfg.data.dataset, cfg.data.data_root)
    if test_manifest is None and cfg.test_dataset and cfg.test_dataset != cfg.data.dataset:
        test_manifest = load_manifest(cfg.test_dataset, cfg.data.data_root)
    return manifest, test_manifest


def run_or_load(cfg: RunConfig, results_dir="results", manifest=None, test_manifest=None,
                progress: bool = True, wait: bool = True, stores=None) -> dict | None:
    """The record of cfg on this data: read from disk when done, else trained (resuming any checkpoint)
    and written. Records of the same config made on other data are never reused (a warning says so).

    When another live process holds the run's claim, wait for its record (wait=True), or return None
    (wait=False: a pool worker moves on to the next run). stores: the caller's data.cache.StoreCache,
    so the runs it trains one after another share their decoded images."""
    results_dir = Path(results_dir)
    manifest, test_manifest = _manifests(cfg, manifest, test_manifest)
    data = data_digest(manifest, test_manifest)
    path = record_path(cfg, results_dir, data)
    dist = distributed.context(cfg.train.device)
    claim = None
    if dist.main and not path.exists():
        claim = claims.claim_output(path, wait)
    if not dist.broadcast(claim is not None):            # rank 0 decides for its torchrun group
        return load_record(path) if path.exists() else None
    try:
        record = _train_and_record(cfg, results_dir, data, manifest, test_manifest, progress, dist, stores)
        if claim is not None:                            # the log lists runs trained, not attempts
            claim.log(results_dir / CLAIMS_LOG, path.stem)
        return record
    finally:
        if claim is not None:
            claim.release()


def _warn_other_data(cfg: RunConfig, results_dir: Path, data: str, manifest) -> None:
    stale = records_on_other_data(cfg, results_dir, data)
    if stale:
        warnings.warn(f"{cfg.model.name} on {manifest.name}, split seed {cfg.split_seed}: {len(stale)} record(s) "
                      f"of this run were made on other data (a changed label file or image, or another copy of "
                      f"the dataset), e.g. {stale[0].name}; training on the data as it is now")


def source_split(cfg: RunConfig, manifest):
    """The split a run trains on: split_seed's train/val/test split, or in a cross-dataset run with
    data.cross_train="whole" (kit X1) every source image for training (less any val carve-out)."""
    ratio = 1.0 if cfg.is_cross() and cfg.data.cross_train == "whole" else cfg.data.split_ratio
    return make_split(manifest, cfg.split_seed, ratio, cfg.data.train_fraction, cfg.data.val_fraction)


def _train_and_record(cfg: RunConfig, results_dir: Path, data: str, manifest, test_manifest, progress: bool,
                      dist: distributed.Dist, stores=None) -> dict:
    """Train cfg (resuming its checkpoint) and write its record; under torchrun only rank 0 writes."""
    _warn_other_data(cfg, results_dir, data, manifest)
    split = source_split(cfg, manifest)
    key = run_key(cfg, data)
    work = results_dir / "work" / key
    result = engine.train_run(cfg, manifest, split, work, test_manifest=test_manifest, progress=progress,
                              stores=stores)
    # the split is written with the record, so a run that fails leaves nothing but its resumable checkpoint
    split_file = results_dir / "splits" / manifest.name / f"{split.digest()}.json"
    record = build_record(cfg, result, manifest, test_manifest, split, str(split_file.relative_to(results_dir)))
    record["checkpoint"] = str((results_dir / "checkpoints" / key).relative_to(results_dir))
    if dist.main:
        split.save(split_file)
        _publish_weights(work, results_dir / "checkpoints" / key)
        atomic_write_json(record, record_path(cfg, results_dir, data))
        (work / CHECKPOINT).unlink(missing_ok=True)
        shutil.rmtree(work, ignore_errors=True)
    dist.barrier()                                       # the other ranks return once the record exists
    return record


def record_row(rec: dict, path=None) -> dict:
    """One flat row: the table columns, then every config field under its dotted name (for ablations)."""
    c = rec["config"]
    final = rec.get("final") or {}
    row = {"model": c["model"]["name"], "size": c["model"]["size"], "dataset": rec.get("dataset"),
           "test_dataset": rec.get("test_dataset"), "split_seed": c["split_seed"],
           "train_fraction": c["data"]["train_fraction"], "val_fraction": c["data"]["val_fraction"],
           "selection": rec.get("selection"), "selected_epoch": rec.get("selected_epoch"),
           **{m: final.get(m) for m in ("srcc", "plcc", "plcc_logistic", "krcc", "rmse")},
           "profile": c["profile"], "pretrained": c["model"]["pretrained"], "epochs": c["train"]["epochs"],
           "n_train": rec["split"].get("n_train"), "n_test": rec["split"].get("n_test"),
           "split_digest": rec["split"].get("digest"), "time_s": rec.get("time_s"),
           "train_crops_per_s": rec.get("train_crops_per_s"), "eval_crops_per_s": rec.get("eval_crops_per_s"),
           "device": rec.get("device"), "key": rec.get("key"), "path": str(path) if path else None}
    for k, v in pd.json_normalize(c).iloc[0].items():
        row.setdefault(k, tuple(v) if isinstance(v, list) else v)
    return row


def load_records(results_dir="results", **filters):
    """All run records under results_dir as a DataFrame, one row each (see record_row).

    filters: column=value or column=[values]; dotted config names via **{"csfiqa.tau": 0.1}.
    """
    paths = sorted((Path(results_dir) / "runs").glob("*/*/*.json"))
    df = pd.DataFrame([record_row(load_record(p), p) for p in paths])
    if df.empty:
        return pd.DataFrame(columns=TABLE_COLUMNS)
    for col, want in filters.items():
        if col not in df.columns:
            raise KeyError(f"no column {col!r} in the run records; columns: {list(df.columns)[:30]} ...")
        want = list(want) if isinstance(want, (list, tuple, set)) else [want]
        df = df[df[col].isin(want)]
    return df.reset_index(drop=True)
