"""Scores per image (the mean over its test crops), the label scale, and the metrics of a run.

    LabelNorm(kind, label_range)           regression target: raw labels (DEIQT) or min-max scaled
    predict_rows(model, sampler, rows, crops=TestCrops(n, size))  per-image mean of the model's scores
    evaluate(model, sampler, rows, labels=, crops=)                (metrics, per-image predictions)
    final_metrics(pred, labels, what)      the run's metrics, with the logistic-fitted PLCC when it fits
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
from tqdm.auto import tqdm

from ..devices import Precision, train_mode
from ..metrics import LogisticFitError, all_metrics
from ..models.base import TestCrops
from ..system import KitError


class NonFiniteError(KitError):
    """A loss, a score or a metric became NaN or infinite: nothing is recorded."""


class LabelNorm:
    """cfg.train.label_norm: the regression target is raw (DEIQT) or min-max scaled by the label range
    of the training set's release; predictions are mapped back before metrics (RMSE in label units)."""

    def __init__(self, kind: str, label_range):
        lo, hi = label_range if label_range else (0.0, 1.0)
        self.kind, self.lo, self.span = kind, float(lo), float(hi - lo) or 1.0

    def __call__(self, y):
        return y if self.kind == "raw" else (y - self.lo) / self.span

    def inverse(self, p):
        return p if self.kind == "raw" else p * self.span + self.lo


def test_views(model, sampler, idx, *, crops: TestCrops):
    """A model's test views of the images idx (`IQAModel.test_views`; plain test crops for any other module)."""
    if hasattr(model, "test_views"):
        return model.test_views(sampler, idx, crops)
    return sampler.test_crops(idx, crops.n, crops.size, mode=crops.mode, seed=crops.seed)


@torch.no_grad()
def predict_rows(model, sampler, rows, *, crops: TestCrops, batch_size: int = 64,
                 precision: Precision = Precision(), progress: bool = False, desc: str = "eval") -> np.ndarray:
    """Per-image mean of the model's scores on the test crops of each row (model in eval mode)."""
    device = next(model.parameters()).device
    per = max(1, batch_size // crops.n)                     # images per forward
    rows = list(map(int, rows))
    out = []
    with train_mode(model, False):
        for i in tqdm(range(0, len(rows), per), desc=desc, leave=False, disable=not progress):
            chunk = rows[i:i + per]
            x = precision.layout(test_views(model, sampler, torch.tensor(chunk), crops=crops).to(device))
            with precision.autocast(device):
                scores = model(x)
            out.append(scores.float().view(len(chunk), crops.n).mean(1))
    return torch.cat(out).cpu().double().numpy() if out else np.zeros(0)


def evaluate(model, sampler, rows, *, labels, crops: TestCrops, batch_size: int = 64,
             precision: Precision = Precision(), denorm=None, logistic: bool = False, progress: bool = False,
             map_rows=None):
    """(metrics on the per-image means, per-image predictions).
    map_rows(fn, rows): how the rows are scored, e.g. split over torchrun ranks (Dist.map_rows)."""
    def predict(part):
        return predict_rows(model, sampler, part, crops=crops, batch_size=batch_size, precision=precision,
                            progress=progress)
    pred = map_rows(predict, rows) if map_rows else predict(rows)
    if denorm is not None:
        pred = denorm(pred)
    return all_metrics(pred, labels, logistic=logistic), pred


def require_finite(values: dict | np.ndarray, what: str) -> None:
    """NonFiniteError naming `what` when a metric (or a prediction) is NaN or infinite."""
    bad = [k for k, v in values.items() if isinstance(v, float) and not np.isfinite(v)] \
        if isinstance(values, dict) else ([] if np.isfinite(values).all() else ["predictions"])
    if bad:
        raise NonFiniteError(f"{what}: {', '.join(bad)} became NaN or infinite (diverged training, or "
                             f"constant predictions); no record written")


def final_metrics(pred: np.ndarray, labels: np.ndarray, what: str) -> dict:
    """srcc, plcc, krcc, rmse and plcc_logistic (None, with the reason, when the fit fails)."""
    require_finite(pred, what)
    final = all_metrics(pred, labels)
    require_finite(final, what)
    try:
        final["plcc_logistic"] = all_metrics(pred, labels, logistic=True)["plcc_logistic"]
    except LogisticFitError as e:
        warnings.warn(f"{what}: {e}; plcc_logistic left empty")
        final["plcc_logistic"], final["logistic_error"] = None, str(e)
    return final
