"""The few lines every notebook starts with: paths (local or Google Drive), output context, threads."""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from . import report
from .config import PROFILE_PLAN


@dataclass
class Session:
    notebook: str
    profile: str
    results_dir: str
    data_root: str | None
    device: str
    shard: str | None
    plan: dict = field(default_factory=dict)

    def figure(self, path, caption: str) -> Path:
        """Log a figure a viz function wrote, with its caption, for results/README.md."""
        report.record_output(path, "figure", caption)
        return Path(path)

    @property
    def run_kw(self) -> dict:
        """Keyword arguments for the iqa_utils.experiments functions."""
        return {"results_dir": self.results_dir, "data_root": self.data_root, "shard": self.shard,
                "device": self.device}


def in_colab() -> bool:
    return "google.colab" in sys.modules


def setup(notebook: str, profile: str = "smoke", results_dir: str = "../results", data_root: str | None = None,
          device: str = "auto", shard: str | None = None, drive_dir: str | None = None) -> Session:
    """Resolve paths, mount Google Drive when asked (Colab), and log outputs to this notebook's name.

    With `drive_dir`, results (run records, checkpoints) and data live on Drive, so a Colab session that
    disconnects resumes where it stopped: finished runs are loaded from their records, an interrupted one
    continues from its last epoch checkpoint.
    """
    if profile not in PROFILE_PLAN:
        raise ValueError(f"unknown profile {profile!r}; choose one of {sorted(PROFILE_PLAN)}")
    if drive_dir:
        if in_colab() and not Path("/content/drive").exists():
            from google.colab import drive  # type: ignore
            drive.mount("/content/drive")
        base = Path(drive_dir).expanduser()
        results_dir = str(base / "results")
        data_root = data_root or str(base / "data")
    results_dir = str(Path(results_dir).expanduser().resolve())
    if data_root:
        data_root = str(Path(data_root).expanduser().resolve())
    report.context(notebook, profile, results_dir)
    if os.environ.get("IQA_KIT_THREADS"):
        import torch
        torch.set_num_threads(int(os.environ["IQA_KIT_THREADS"]))
    return Session(notebook, profile, results_dir, data_root, device, shard, dict(PROFILE_PLAN[profile]))


def show(table, caption: str = ""):
    """Display a table as Markdown in Jupyter, plain text elsewhere."""
    from .tables import to_markdown
    text = to_markdown(table, caption) if "median" in table.columns else table.to_markdown(index=False)
    try:
        from IPython.display import Markdown, display
        display(Markdown(text))
    except ImportError:
        print(text)
