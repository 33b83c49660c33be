"""The few lines every notebook starts with, and the one object it runs and publishes through.

    session = setup("01_train_csfiqa", profile, results_dir, data_root, device, shard, drive_dir)
    runs = session.run(experiments.main_configs(session.profile, ("deiqt", "csfiqa")))
    session.table(session.compare(runs), "csfiqa_main", "caption")   # results/tables/<name>.md/.csv
    session.figure("02_x", "caption", plots.plot_...(...))            # results/figures/<name>.png

The Session carries the whole reporting context (writer's name, profile, results folder, overrides):
a table or figure it publishes is written atomically, stamped when the profile rehearses, logged and
indexed (results/README.md) in one place, from a notebook or from a script alike.
"""
from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from IPython import get_ipython
from IPython.display import Markdown, display
from matplotlib.figure import Figure

from ..config.check import make_config
from ..config.profiles import is_rehearsal, profile_scope
from ..data.cache import LOCAL_STORES_ENV, StoreCache
from ..models.pretrained import WEIGHTS_ENV
from ..runs.experiments import Planned, run_all
from ..runs.pool import parse_devices
from ..system import CACHE_ENV
from . import index, plots, tables
from .paper_tables import paper_versions


@dataclass
class Session:
    notebook: str                   # who writes the outputs: a notebook's name, or a script's
    profile: str
    results_dir: str
    data_root: str | None
    device: str                     # the one device of cost tables and figures: the first of `devices`
    shard: str | None
    scope: dict = field(default_factory=dict)    # what the profile covers (config.profiles.profile_scope)
    devices: str | None = None      # "cuda:0,cuda:1": training runs spread over these (pool.py)
    overrides: dict = field(default_factory=dict)   # dotted fields set on every run and table (--set)
    stores: StoreCache = field(default_factory=StoreCache, repr=False)   # the notebook's cells share stores

    @property
    def rehearsal(self) -> bool:
        return is_rehearsal(self.profile)

    @property
    def versions(self) -> dict:
        """The paper versions whose reported numbers the tables quote."""
        return paper_versions(self.profile, self.overrides)

    def run(self, planned: Planned, progress: bool = True) -> pd.DataFrame:
        """Run (or load) planned (config, label) pairs (the runs.experiments lists) with this session's
        results folder, data, shard, devices, overrides and stores (a dataset decoded once per notebook);
        one row per run."""
        return run_all(planned, results_dir=self.results_dir, data_root=self.data_root, shard=self.shard,
                       progress=progress, device=self.devices or self.device, overrides=self.overrides,
                       stores=self.stores)

    def compare(self, runs: pd.DataFrame, table: str = "main", **kw) -> pd.DataFrame:
        """tables.comparison_table judged for this profile (smoke and rehearsal: not comparable), quoting
        this session's paper versions."""
        return tables.comparison_table(runs, table=table, versions=self.versions, profile=self.profile, **kw)

    def table(self, table: pd.DataFrame, name: str, caption: str) -> pd.DataFrame:
        """Write results/tables/<name>.md and .csv, index them and show the table; a table with reported
        numbers says which papers' versions they come from."""
        if "provenance" in table.columns:
            caption += " (reported: " + ", ".join(f"{m} {v}" for m, v in self.versions.items()) + ")"
        caption = index.marked(caption, self.profile)
        paths = tables.write_table(table, name, self.results_dir, caption=caption)
        self._index(paths["md"], "table", caption)
        show(table, caption)
        return table

    def figure(self, name: str, caption: str, fig: Figure) -> Path:
        """Write a plots figure to results/figures/<name>.png (stamped when the profile rehearses), closed
        after, and index it with its caption."""
        stamp = index.REHEARSAL_MARK if self.rehearsal else None
        path = plots.save(fig, Path(self.results_dir) / "figures" / f"{name}.png", stamp=stamp)
        self._index(path, "figure", caption)
        return path

    def _index(self, path: Path, kind: str, caption: str) -> None:
        index.record_output(self.results_dir, path, kind, caption, writer=self.notebook, profile=self.profile)


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


def _weights_env(folder: str) -> None:
    """$IQA_KIT_WEIGHTS for this process: the models read it where they are built (models.pretrained), deep
    inside a run, and the worker processes of --devices inherit it; an environment variable, as for the
    cache folders above, rather than a field of every config (a weights folder does not change a run's key)."""
    os.environ[WEIGHTS_ENV] = str(Path(folder).expanduser().resolve())


def setup(notebook: str, profile: str = "smoke", results_dir: str = "../results", data_root: str | None = None,
          device: str = "auto", shard: str | None = None, drive_dir: str | None = None,
          overrides: dict | None = None, weights_dir: str | None = None) -> Session:
    """Resolve paths, mount Google Drive when asked (Colab), and return the Session that runs and
    publishes under this notebook's (or script's) name.

    device may list several devices ("cuda:0,cuda:1", `iqa-kit reproduce --devices`): the notebook's
    training runs are spread over them, one worker process each; the rest uses the first.

    With `drive_dir`, results (run records, checkpoints) and data live on Drive, so a Colab session that
    disconnects resumes where it stopped: finished runs are loaded from their records, an interrupted one
    continues from its last epoch checkpoint.

    overrides (`iqa-kit reproduce --set FIELD=VALUE`): dotted config fields for every run and table,
    e.g. {"csfiqa.version": "v1"} quotes CSFIQA v1's reported numbers; checked here, so a misspelt
    field stops the notebook at its first cell.

    weights_dir (`iqa-kit reproduce --rehearse` passes its stand-in weights): where the models' pretrained
    weights resolve, as $IQA_KIT_WEIGHTS of this process (see `_weights_env`).
    """
    scope = profile_scope(profile)
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
    if weights_dir:
        _weights_env(weights_dir)
    if os.environ.get("IQA_KIT_THREADS"):
        torch.set_num_threads(int(os.environ["IQA_KIT_THREADS"]))
    devices = parse_devices(device)
    return Session(notebook, profile, results_dir, data_root, devices[0] if devices else device, shard,
                   dict(scope), devices=device if len(devices) > 1 else None, overrides=overrides)


def show(table, caption: str = ""):
    """Display a table as Markdown in Jupyter, its Markdown text elsewhere (a script's Session)."""
    text = tables.to_markdown(table, caption) if "median" in table.columns else table.to_markdown(index=False)
    if get_ipython() is None:
        print(text)
    else:
        display(Markdown(text))
