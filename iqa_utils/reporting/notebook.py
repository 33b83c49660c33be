"""The few lines every notebook starts with, and the calls it publishes its tables and figures through.

    session = setup("01_train_csfiqa", profile, results_dir, data_root, device, shard, drive_dir)
    session.publish(table, "csfiqa_main", "caption")    # results/tables/<name>.md/.csv, logged, shown
    session.figure(plots.plot_...(..., session.figure_path("02_x")), "caption")   # logged once
    experiments.main_runs(session.profile, **session.run_kw)
"""
from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from IPython.display import Markdown, display

from ..config.check import make_config
from ..config.profiles import is_rehearsal, plan
from ..data.cache import LOCAL_STORES_ENV, StoreCache
from ..runs.pool import parse_devices
from ..system import CACHE_ENV
from . import index, plots, tables
from .paper_tables import paper_versions


@dataclass
class Session:
    notebook: str
    profile: str
    results_dir: str
    data_root: str | None
    device: str                     # the one device of cost tables and figures: the first of `devices`
    shard: str | None
    plan: dict = field(default_factory=dict)
    devices: str | None = None      # "cuda:0,cuda:1": training runs spread over these (pool.py)
    overrides: dict = field(default_factory=dict)   # dotted fields set on every run and table (--set)
    stores: StoreCache = field(default_factory=StoreCache, repr=False)   # the notebook's cells share stores

    @property
    def rehearsal(self) -> bool:
        return is_rehearsal(self.profile)

    def figure(self, path, caption: str) -> Path:
        """Log a figure a plots function wrote, with its caption, for results/README.md."""
        index.record_output(path, "figure", caption)
        return Path(path)

    def figure_path(self, name: str) -> str:
        return str(Path(self.results_dir) / "figures" / f"{name}.png")

    @property
    def versions(self) -> dict:
        """The paper versions whose reported numbers the tables quote."""
        return paper_versions(self.profile, self.overrides)

    def publish(self, table: pd.DataFrame, name: str, caption: str) -> pd.DataFrame:
        """Write results/tables/<name>.md and .csv (logged for the index) and show the table; a table
        with reported numbers says which papers' versions they come from."""
        if "provenance" in table.columns:
            caption += " (reported: " + ", ".join(f"{m} {v}" for m, v in self.versions.items()) + ")"
        caption = index.marked(caption)
        tables.write_table(table, name, self.results_dir, caption=caption)
        show(table, caption)
        return table

    @property
    def run_kw(self) -> dict:
        """Keyword arguments for the iqa_utils.runs.experiments functions."""
        return {"results_dir": self.results_dir, "data_root": self.data_root, "shard": self.shard,
                "device": self.devices or self.device, "overrides": self.overrides, "stores": self.stores}


def in_colab() -> bool:
    return "google.colab" in sys.modules


def _mount_drive() -> None:
    if in_colab() and not Path("/content/drive").exists():
        from google.colab import drive  # type: ignore  # only exists on Colab
        drive.mount("/content/drive")


def _drive_caches(base: Path) -> None:
    """With results on Drive, the kit's cache (image stores, synthetic set, weights stand-ins) lives there
    too, so a new Colab session does not decode every image again; each session maps a copy of a store
    on the VM's local disk (data.cache.local_copy), since crops read through Drive's mount are slow.
    Environment variables, because training may run in worker processes (--devices), which inherit them;
    values the user set are kept."""
    os.environ.setdefault(CACHE_ENV, str(base / "cache"))
    os.environ.setdefault(LOCAL_STORES_ENV, str(Path(tempfile.gettempdir()) / "iqa-kit-stores"))


def setup(notebook: str, profile: str = "smoke", results_dir: str = "../results", data_root: str | None = None,
          device: str = "auto", shard: str | None = None, drive_dir: str | None = None,
          overrides: dict | None = None) -> Session:
    """Resolve paths, mount Google Drive when asked (Colab), and log outputs to this notebook's name.

    device may list several devices ("cuda:0,cuda:1", `iqa-kit reproduce --devices`): the notebook's
    training runs are spread over them, one worker process each; the rest uses the first.

    With `drive_dir`, results (run records, checkpoints) and data live on Drive, so a Colab session that
    disconnects resumes where it stopped: finished runs are loaded from their records, an interrupted one
    continues from its last epoch checkpoint.

    overrides (`iqa-kit reproduce --set FIELD=VALUE`): dotted config fields for every run and table,
    e.g. {"csfiqa.version": "v1"} quotes CSFIQA v1's reported numbers; checked here, so a misspelt
    field stops the notebook at its first cell.
    """
    runs = plan(profile)
    overrides = dict(overrides or {})
    for model in ("deiqt", "csfiqa", "lmliqa"):
        make_config(profile, model, overrides)
    if drive_dir:
        _mount_drive()
        base = Path(drive_dir).expanduser()
        results_dir = str(base / "results")
        data_root = data_root or str(base / "data")
        _drive_caches(base)
    results_dir = str(Path(results_dir).expanduser().resolve())
    if data_root:
        data_root = str(Path(data_root).expanduser().resolve())
    index.context(notebook, profile, results_dir)
    plots.set_stamp(index.REHEARSAL_MARK if is_rehearsal(profile) else None)
    if os.environ.get("IQA_KIT_THREADS"):
        torch.set_num_threads(int(os.environ["IQA_KIT_THREADS"]))
    devices = parse_devices(device)
    return Session(notebook, profile, results_dir, data_root, devices[0] if devices else device, shard,
                   dict(runs), devices=device if len(devices) > 1 else None, overrides=overrides)


def show(table, caption: str = ""):
    """Display a table as Markdown in Jupyter, plain text elsewhere."""
    text = tables.to_markdown(table, caption) if "median" in table.columns else table.to_markdown(index=False)
    display(Markdown(text))
