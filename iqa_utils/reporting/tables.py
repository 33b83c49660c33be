"""Paper tables: reported | reproduced (median over splits, mean ± std, min–max, 95 % interval) | delta |
verdict.

Reported numbers come from `iqa_utils/reference/reported_numbers.csv` (what it holds and how to read
its provenance: docs/reported_numbers.md). A cell the papers' known text does not give is "unknown" —
never a guess. Method names are the model registry's display names (models.display_name).
"""
from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import bootstrap

from ..metrics import aggregate
from ..system import atomic_write_text
from .index import profile_reason

METRICS = ("SRCC", "PLCC")
UNKNOWN = "unknown"
MIN_SEEDS = 5                 # a verdict needs at least this many reproduced seeds
NOT_COMPARABLE = "not comparable"
INSIDE, OUTSIDE = "inside", "outside"


def reported_numbers() -> pd.DataFrame:
    """Every reported number we know: paper, version, table, method, dataset, metric, value, provenance."""
    with resources.files("iqa_utils.reference").joinpath("reported_numbers.csv").open() as f:
        df = pd.read_csv(f, dtype={"value": float}, keep_default_na=False, na_values=[""])
    df["dataset"] = df["dataset"].fillna("")
    return df


def lookup_reported(method: str, dataset: str, metric: str, table: str = "main",
                    paper: str | None = None, version: str | None = None,
                    versions: dict | None = None) -> tuple[float | None, str]:
    """(value, provenance) of one cell, or (None, 'unknown'). A method's own paper wins over other sources;
    among several sources the provenance lists them all and the first is used. versions ({"CSFIQA":
    "v2", ...}, from csfiqa.version / lmliqa.version) keeps only that version of a method's own paper."""
    df = reported_numbers()
    rows = df[(df.method == method) & (df.dataset == dataset) & (df.metric == metric) & (df.table == table)]
    if paper is not None:
        rows = rows[rows.paper == paper]
    if version is not None:
        rows = rows[rows.version == version]
    if versions and method in versions:
        rows = rows[(rows.paper != method) | (rows.version == versions[method])]
    if rows.empty:
        return None, UNKNOWN
    own = rows[rows.paper == method]
    rows = pd.concat([own, rows.drop(own.index)])
    first = rows.iloc[0]
    prov = "; ".join(f"{r.paper} {r.version}: {r.provenance}" for r in rows.itertuples())
    return float(first.value), prov


def summarize(runs: pd.DataFrame, by: list[str], metrics=("srcc", "plcc")) -> pd.DataFrame:
    """metrics.aggregate in long form: one row per group and metric (median, mean, std, n_splits), groups
    in their first order; the std of a single split is shown as 0."""
    wide = aggregate(runs, by, metrics, sort=False)
    rows = []
    for r in wide.to_dict("records"):
        for m in metrics:
            rows.append({**{k: r[k] for k in by}, "metric": m.upper(), "median": float(r[f"{m}_median"]),
                         "mean": float(r[f"{m}_mean"]), "std": float(r[f"{m}_std"]) if r["n"] > 1 else 0.0,
                         "n_splits": int(r["n"])})
    return pd.DataFrame(rows)


def median_interval(values, confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Bootstrap (scipy.stats.bootstrap, percentile) interval of the median of the per-seed values."""
    v = np.asarray(values, dtype=float)
    if np.ptp(v) == 0:                                # every seed alike: the interval is that value
        return float(v[0]), float(v[0])
    res = bootstrap((v,), np.median, confidence_level=confidence, method="percentile", n_resamples=9999,
                    rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def verdict(reported: float | None, values, reason: str | None = None) -> dict:
    """Spread of the reproduced values (min, max, 95 % interval of the median) and whether the reported
    value lies inside it: "inside" (the interval), "outside (...)", or "not comparable: <why>"."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    out = {"min": float(v.min()) if len(v) else None, "max": float(v.max()) if len(v) else None,
           "ci_low": None, "ci_high": None, "verdict": ""}
    if reported is None or not len(v):
        return out
    if reason is None and len(v) < MIN_SEEDS:
        reason = f"{len(v)} seed{'s' * (len(v) != 1)} (a verdict needs {MIN_SEEDS})"
    if reason is not None:
        return {**out, "verdict": f"{NOT_COMPARABLE}: {reason}"}
    lo, hi = median_interval(v)
    if lo <= reported <= hi:
        text = INSIDE
    else:
        span = "inside min–max" if v.min() <= reported <= v.max() else "outside min–max too"
        text = f"{OUTSIDE} (reported {'above' if reported > hi else 'below'} the interval; {span})"
    return {**out, "ci_low": lo, "ci_high": hi, "verdict": text}


def comparison_table(runs: pd.DataFrame, table: str = "main", paper: str | None = None,
                     version: str | None = None, versions: dict | None = None,
                     by: tuple[str, ...] = ("method", "dataset"), metrics=("srcc", "plcc"), dataset_col: str = "dataset",
                     reported_method_col: str = "method", profile: str | None = None) -> pd.DataFrame:
    """One row per (group, metric): reported value and provenance | reproduced median, mean ± std, min–max,
    bootstrap 95 % interval of the median | delta | verdict (`verdict`).

    runs: one row per finished run with at least the `by` columns and the metric columns (lower-case),
    e.g. from `runs.load_records` with a `method` column added. `selection` is carried if present.
    profile: the profile the runs were made in (a notebook's `Session.compare` passes its own); smoke and
    rehearsal tables keep the reported column for orientation, with no delta and the verdict "not
    comparable: <why>". None judges the runs as a real profile's.
    """
    by = list(by)
    extra = [c for c in ("selection",) if c in runs.columns and c not in by]
    summary = summarize(runs, by + extra, metrics)
    reason = profile_reason(profile)
    # the groups in summarize's order (one summary row per group and metric), by position: NaN keys never match
    groups = [g for _, g in runs.groupby(by + extra, dropna=False, sort=False)]
    out = []
    for i, r in enumerate(summary.itertuples(index=False)):
        r = r._asdict()
        value, prov = lookup_reported(r[reported_method_col], r[dataset_col], r["metric"], table, paper, version,
                                      versions)
        values = pd.to_numeric(groups[i // len(metrics)][r["metric"].lower()], errors="coerce")
        out.append({**r, "reported": value, "provenance": prov,
                    "delta": None if value is None or reason else r["median"] - value,
                    **verdict(value, values, reason)})
    return pd.DataFrame(out)


def baseline_rows(table: str, datasets: list[str], methods: list[str] | None = None,
                  metrics=METRICS) -> pd.DataFrame:
    """Reported-only rows (methods the kit does not retrain) for the same datasets, with provenance."""
    df = reported_numbers()
    df = df[(df.table == table) & df.dataset.isin(datasets) & df.metric.isin(metrics)]
    if methods is not None:
        df = df[df.method.isin(methods)]
    return df[["method", "dataset", "metric", "value", "paper", "version", "provenance"]].reset_index(drop=True)


def _cell(x, digits=3):
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return UNKNOWN
    return f"{x:.{digits}f}"


SPREAD = ("min", "max", "ci_low", "ci_high", "verdict")


def _delta_cell(r: dict) -> str:
    if str(r.get("verdict", "")).startswith(NOT_COMPARABLE) and (r["delta"] is None or pd.isna(r["delta"])):
        return "—"                                  # smoke / rehearsal: the reported value is for orientation
    return UNKNOWN if r["delta"] is None or pd.isna(r["delta"]) else f"{r['delta']:+.3f}"


def to_markdown(table: pd.DataFrame, caption: str = "") -> str:
    """Render a comparison table: reported | reproduced median (mean ± std, n) | delta."""
    keys = [c for c in table.columns if c not in
            ("metric", "median", "mean", "std", "n_splits", "reported", "provenance", "delta", *SPREAD)]
    rows = []
    for r in table.to_dict("records"):
        judged = str(r.get("verdict", "")).startswith((INSIDE, OUTSIDE))
        rows.append({**{k: r[k] for k in keys}, "metric": r["metric"],
                     "reported": _cell(r["reported"]),
                     "reproduced (median)": _cell(r["median"]),
                     "mean ± std (n)": f"{_cell(r['mean'])} ± {_cell(r['std'])} ({r['n_splits']})",
                     "min–max": f"{_cell(r.get('min'))}–{_cell(r.get('max'))}",
                     "95 % CI of median": f"[{_cell(r['ci_low'])}, {_cell(r['ci_high'])}]" if judged else "—",
                     "delta": _delta_cell(r),
                     "verdict": r.get("verdict") or "—",
                     "provenance of reported": r["provenance"]})
    body = pd.DataFrame(rows).to_markdown(index=False) if rows else "_no runs yet_"
    return (f"{caption}\n\n" if caption else "") + body + "\n"


def write_table(table: pd.DataFrame, name: str, results_dir: str | os.PathLike = "results",
                caption: str = "", markdown: str | None = None) -> dict[str, Path]:
    """Write results/tables/<name>.csv and .md atomically; returns both paths (a `Session` publishes a
    table: it writes it through here and indexes it)."""
    out = Path(results_dir) / "tables"
    paths = {"csv": out / f"{name}.csv", "md": out / f"{name}.md"}
    md = markdown if markdown is not None else (
        to_markdown(table, caption) if "median" in table.columns else
        (f"{caption}\n\n" if caption else "") + table.to_markdown(index=False) + "\n")
    for kind, text in (("csv", table.to_csv(index=False)), ("md", md)):
        atomic_write_text(text, paths[kind])
    return paths
