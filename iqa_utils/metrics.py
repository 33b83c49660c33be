"""Correlation metrics of NR-IQA on per-image scores, and their aggregation over splits.

DEIQT reports PLCC on the raw predictions (no logistic fit, docs/protocol.md §6); many papers fit the
VQEG 4-parameter logistic first. The kit reports both: `plcc` (raw) and `plcc_logistic`.
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import optimize, stats


class LogisticFitError(RuntimeError):
    pass


def _xy(pred, mos):
    x = np.asarray(pred, dtype=np.float64).ravel()
    y = np.asarray(mos, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"predictions ({x.size}) and labels ({y.size}) differ in length")
    if x.size < 2:
        raise ValueError(f"need at least 2 images for a correlation, got {x.size}")
    return x, y


def srcc(pred, mos) -> float:
    return float(stats.spearmanr(*_xy(pred, mos))[0])


def plcc(pred, mos) -> float:
    return float(stats.pearsonr(*_xy(pred, mos))[0])


def krcc(pred, mos) -> float:
    return float(stats.kendalltau(*_xy(pred, mos))[0])


def rmse(pred, mos) -> float:
    x, y = _xy(pred, mos)
    return float(np.sqrt(np.mean((x - y) ** 2)))


def logistic4(x, b1, b2, b3, b4):
    """VQEG 4-parameter logistic: b2 + (b1 - b2) / (1 + exp(-(x - b3) / |b4|))."""
    z = np.clip(-(x - b3) / (np.abs(b4) + 1e-12), -500, 500)
    return b2 + (b1 - b2) / (1.0 + np.exp(z))


def fit_logistic(pred, mos):
    """Fit the logistic mapping pred -> mos; returns a callable. Raises LogisticFitError when it fails."""
    x, y = _xy(pred, mos)
    mu, sd = x.mean(), x.std()
    if x.size < 5:
        raise LogisticFitError(f"a 4-parameter logistic fit needs at least 5 images, got {x.size}")
    if not np.isfinite(sd) or sd == 0:
        raise LogisticFitError("logistic fit impossible: the predictions are constant")
    z = (x - mu) / sd                         # standardised input: one set of initial values fits all scales
    rho = stats.spearmanr(x, y)[0]
    hi, lo = (y.min(), y.max()) if rho < 0 else (y.max(), y.min())   # DMOS: a falling curve
    # a few initial slopes, unbounded (Levenberg-Marquardt) first, then bounded (trf): a convex or
    # concave relation drives the free fit's asymptotes to infinity, the bounded one stops at the box
    span = (y.max() - y.min()) or 1.0
    box = ([y.min() - 10 * span, y.min() - 10 * span, -20.0, 1e-3],
           [y.max() + 10 * span, y.max() + 10 * span, 20.0, 1e3])
    tries = [dict(p0=[hi, lo, 0.0, b4], maxfev=20000) for b4 in (1.0, 0.3, 3.0)]
    tries.append(dict(p0=[hi, lo, 0.0, 1.0], bounds=box, max_nfev=20000))
    err = None
    for kw in tries:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                p, _ = optimize.curve_fit(logistic4, z, y, **kw)
        except (RuntimeError, ValueError) as e:
            err = e
            continue
        if np.all(np.isfinite(p)):
            return lambda v: logistic4((np.asarray(v, dtype=np.float64) - mu) / sd, *p)
    raise LogisticFitError(f"4-parameter logistic fit did not converge on {x.size} images ({err})")


def plcc_logistic(pred, mos) -> float:
    x, y = _xy(pred, mos)
    fitted = fit_logistic(x, y)(x)
    if np.ptp(fitted) == 0:
        raise LogisticFitError("logistic fit collapsed to a constant; PLCC after fitting is undefined")
    return float(stats.pearsonr(fitted, y)[0])


def all_metrics(pred, mos, logistic: bool = False) -> dict:
    """srcc, plcc, krcc, rmse (and plcc_logistic when asked; LogisticFitError propagates)."""
    out = {"srcc": srcc(pred, mos), "plcc": plcc(pred, mos), "krcc": krcc(pred, mos), "rmse": rmse(pred, mos)}
    if logistic:
        out["plcc_logistic"] = plcc_logistic(pred, mos)
    return out


def aggregate(df: pd.DataFrame, by, metrics=("srcc", "plcc", "plcc_logistic", "krcc", "rmse"),
              sort: bool = True) -> pd.DataFrame:
    """Median (the papers' statistic), mean, std and count of each metric per group of runs.

    Columns: the `by` columns, n, then <metric>_median, <metric>_mean, <metric>_std (sample std, NaN for
    one run). Metrics that are not columns of df are skipped; sort=False keeps the groups' first order.
    """
    by = [by] if isinstance(by, str) else list(by)
    metrics = [m for m in metrics if m in df.columns]
    d = df[by + metrics].copy()
    for m in metrics:
        d[m] = pd.to_numeric(d[m], errors="coerce")
    g = d.groupby(by, dropna=False, sort=sort)
    out = g[metrics].agg(["median", "mean", "std"])
    out.columns = [f"{m}_{stat}" for m, stat in out.columns]
    out.insert(0, "n", g.size())
    return out.reset_index()
