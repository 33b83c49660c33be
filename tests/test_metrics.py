"""Metrics against scipy.stats and hand cases; aggregation over splits."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from iqa_utils.metrics import (LogisticFitError, aggregate, all_metrics, krcc, plcc, plcc_logistic, rmse,
                               srcc)


def test_against_scipy_on_random_data():
    rng = np.random.default_rng(0)
    for _ in range(5):
        mos = rng.uniform(0, 100, 80)
        pred = mos + rng.normal(0, 30, 80)
        assert srcc(pred, mos) == pytest.approx(stats.spearmanr(pred, mos)[0])
        assert plcc(pred, mos) == pytest.approx(stats.pearsonr(pred, mos)[0])
        assert krcc(pred, mos) == pytest.approx(stats.kendalltau(pred, mos)[0])
        assert rmse(pred, mos) == pytest.approx(np.sqrt(np.mean((pred - mos) ** 2)))
        m = all_metrics(pred, mos, logistic=True)
        assert m["plcc_logistic"] >= m["plcc"] - 1e-3       # the fit can only help (up to the optimiser)


def test_monotone_nonlinear_hand_case():
    x = np.linspace(-3, 3, 40)
    y = 10 + 80 / (1 + np.exp(-2.5 * x))                   # perfectly monotone, strongly nonlinear
    m = all_metrics(x, y, logistic=True)
    assert m["srcc"] == pytest.approx(1.0) and m["krcc"] == pytest.approx(1.0)
    assert m["plcc"] < 0.97
    assert m["plcc_logistic"] == pytest.approx(1.0, abs=1e-6)
    # a convex relation (asymptotes run away in a free fit) still fits, and DMOS-like falling curves too
    assert plcc_logistic(x, np.exp(x)) > 0.99
    assert plcc_logistic(x, -y) == pytest.approx(1.0, abs=1e-6)
    assert srcc(x, -y) == pytest.approx(-1.0)
    assert rmse([1, 2, 3], [1, 2, 5]) == pytest.approx(np.sqrt(4 / 3))


def test_failures_are_loud():
    with pytest.raises(LogisticFitError, match="constant"):
        plcc_logistic(np.ones(10), np.arange(10))
    with pytest.raises(LogisticFitError, match="at least 5"):
        plcc_logistic([1, 2, 3], [1, 2, 3])
    with pytest.raises(ValueError, match="differ in length"):
        srcc([1, 2, 3], [1, 2])


def test_aggregate_median_mean_std_n():
    df = pd.DataFrame({"model": ["a"] * 3 + ["b"] * 2, "dataset": "LIVE",
                       "srcc": [0.9, 0.8, 0.7, 0.5, 0.6], "plcc": [0.1, 0.2, 0.9, 0.4, 0.4]})
    out = aggregate(df, ["model", "dataset"], metrics=("srcc", "plcc", "krcc"))
    a = out.set_index("model").loc["a"]
    assert a["n"] == 3 and a["srcc_median"] == pytest.approx(0.8) and a["plcc_median"] == pytest.approx(0.2)
    assert a["plcc_mean"] == pytest.approx(0.4) and a["srcc_std"] == pytest.approx(np.std([0.9, 0.8, 0.7], ddof=1))
    assert "krcc_median" not in out.columns
    assert list(out.model) == ["a", "b"]
