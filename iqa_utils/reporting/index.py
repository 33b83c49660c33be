"""Where every output came from, and the index results/README.md that lists them.

Each table and figure a `notebook.Session` publishes (from a notebook or a script) is logged once to
results/outputs.jsonl with the notebook (or script) and profile that made it (`record_output`, which
also rewrites the index). `write_index` turns the log into results/README.md with the notebook run
times, the decision table and the environment. Nothing here keeps state between calls: every
function is told the results folder, the profile and the writer.
"""
from __future__ import annotations

import os
import platform
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..config.check import decisions_table, make_config
from ..config.profiles import is_rehearsal
from ..devices import device_name
from ..system import (
    KitError,
    append_jsonl,
    atomic_write_json,
    atomic_write_text,
    package_version,
    read_json,
    read_jsonl,
)

REHEARSAL_MARK = "REHEARSAL (toy budget, stand-in weights): not a result"
LOG = "outputs.jsonl"
TIMINGS = "timings.json"


def profile_reason(profile: str | None) -> str | None:
    """Why a profile's numbers cannot be set against the papers' (None: they can)."""
    if profile == "smoke":
        return "smoke profile (tiny models on the synthetic set, not the papers' data or budget)"
    if profile and is_rehearsal(profile):
        return "rehearsal (one epoch on a handful of images with stand-in weights)"
    return None


def marked(caption: str, profile: str) -> str:
    """The caption, marked as a rehearsal's when the profile is one."""
    rehearsal = is_rehearsal(profile)
    return f"{REHEARSAL_MARK}. {caption}" if rehearsal and not caption.startswith(REHEARSAL_MARK) else caption


def record_output(results_dir: str | os.PathLike, path: str | os.PathLike, kind: str, caption: str, *,
                  writer: str, profile: str) -> Path:
    """Log one table or figure of `writer` (a notebook's or a script's name) in results_dir and rewrite
    results/README.md with it; returns the index's path."""
    results = Path(results_dir)
    append_jsonl({"path": os.path.relpath(path, results), "kind": kind, "caption": marked(caption, profile),
                  "notebook": writer, "profile": profile, "time": time.strftime("%Y-%m-%d %H:%M:%S")},
                 results / LOG)
    return write_index(results, profile)


def _environment_rows() -> pd.DataFrame:
    """Versions and device for the index (the names the run records use)."""
    env = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("torch", "timm", "transformers", "papermill", "pandas", "numpy"):
        env[pkg] = package_version(pkg) or "not installed"
    env["device"] = device_name("cuda" if torch.cuda.is_available() else "cpu")
    return pd.Series(env).to_frame("version")


def _outputs_section(results: Path, entries: dict, kind: str, title: str) -> list[str]:
    rows = sorted((e for e in entries.values() if e["kind"] == kind and (results / e["path"]).exists()),
                  key=lambda e: (e["notebook"] or "", e["path"]))
    lines = [f"## {title}", ""]
    if not rows:
        return lines + ["_none yet_", ""]
    lines += ["| file | notebook | profile | caption |", "|---|---|---|---|"]
    lines += [f"| [{e['path']}]({e['path']}) | {e['notebook']} | {e['profile']} | "
              f"{e['caption'].replace('|', '/')} |" for e in rows]
    return lines + [""]


def _judged_cells(results: Path, entries: dict) -> pd.DataFrame:
    """Every reproduced cell with a reported value and a verdict, from the logged tables' CSV files."""
    frames = []
    for e in entries.values():
        csv = (results / e["path"]).with_suffix(".csv")
        if e["kind"] != "table" or not csv.exists():
            continue
        t = pd.read_csv(csv)
        if {"verdict", "reported", "median"} <= set(t.columns):
            t = t[t.reported.notna() & t.verdict.notna()]
            label = t.drop(columns=[c for c in t.columns if c not in ("method", "variant", "dataset", "pair",
                                                                    "metric")]).astype(str).agg(" ".join, axis=1)
            frames.append(t.assign(table=csv.stem, cell=label))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["verdict"])


def verdict_summary(results: Path, entries: dict, profile: str | None = None, n_gaps: int = 3) -> list[str]:
    """The line at the top of results/README.md: how many reported cells lie inside the reproduced
    interval (the bootstrap 95 % interval of the median over the split seeds), and the largest gaps."""
    if profile_reason(profile):
        return [f"**Reproduction verdict: not comparable: {profile_reason(profile)}.**", ""]
    cells = _judged_cells(results, entries)
    judged = cells[cells.verdict.str.startswith(("inside", "outside"))]
    if judged.empty:
        reasons = sorted(set(cells.verdict.str.replace(r"^not comparable: ", "", regex=True)) - {""})
        why = "; ".join(reasons) if reasons else "no table holds a reproduced cell with a reported value yet"
        return [f"**Reproduction verdict: not comparable: {why}.**", ""]
    inside = judged.verdict.str.startswith("inside")
    out = judged[~inside].assign(gap=lambda d: np.maximum(d.ci_low - d.reported, d.reported - d.ci_high))
    gaps = "; ".join(f"{r.table}: {r.cell} reported {r.reported:.3f} vs [{r.ci_low:.3f}, {r.ci_high:.3f}]"
                     for r in out.sort_values("gap", ascending=False).head(n_gaps).itertuples())
    line = f"**{int(inside.sum())} of {len(judged)} reported cells inside the reproduced interval**"
    return [line + (f"; the largest gaps: {gaps}." if gaps else "."), ""]


def _timings_section(results: Path, timings: dict | None) -> list[str]:
    """Run times of the latest execution of each notebook (a partial re-run keeps the others)."""
    tfile = results / TIMINGS
    try:
        all_t = read_json(tfile, "timings file") if tfile.exists() else {}
    except KitError as e:                  # the kit's own cache of run times: start it again
        warnings.warn(f"{e}; the notebook run times start afresh")
        all_t = {}
    all_t.update({k: round(v, 1) for k, v in (timings or {}).items()})
    if not all_t:
        return []
    atomic_write_json(dict(sorted(all_t.items())), tfile)
    lines = ["## Notebook run times (latest execution, seconds)", "", "| notebook | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in sorted(all_t.items())]
    return lines + [f"| total | {sum(all_t.values()):.0f} |", ""]


def write_index(results_dir: str | os.PathLike, profile: str, timings: dict | None = None) -> Path:
    """results/README.md: every table and figure with its notebook and profile, the decisions, the env."""
    results = Path(results_dir)
    entries = {e["path"]: e for e in read_jsonl(results / LOG)}        # the latest writer of a path wins
    lines = [f"# Results ({profile} profile)", "", "Generated by `iqa-kit reproduce`; do not edit by hand.", ""]
    lines += verdict_summary(results, entries, profile)
    if is_rehearsal(profile):
        lines += [f"**{REHEARSAL_MARK}.** Every table and figure below comes from one epoch on a handful of "
                  "images per dataset with random stand-in weights: it proves the code path, not the numbers.", ""]
    lines += _outputs_section(results, entries, "table", "Tables")
    lines += _outputs_section(results, entries, "figure", "Figures")
    lines += _timings_section(results, timings)
    lines += ["## Undecided paper details (value used in this profile)", "",
              "Each is a config field; change one line (`--set field=value` or the notebook's overrides) "
              "to try the alternative. What is known of each: docs/csfiqa.md, docs/lmliqa.md, "
              "docs/protocol.md.", "", decisions_table(make_config(profile)).to_markdown(index=False), ""]
    lines += ["## Environment", "", _environment_rows().to_markdown(), ""]
    return atomic_write_text("\n".join(lines), results / "README.md")
