"""`--set csfiqa.version=v1` reaches the tables and their captions, through the notebooks' own calls."""
from __future__ import annotations

import json

import pandas as pd
import papermill as pm
import pytest

from iqa_utils import cli
from iqa_utils.config.check import make_config
from iqa_utils.reporting.notebook import setup
from iqa_utils.runs.experiments import sweep_configs, with_base

RUNS = pd.DataFrame([{"method": "CSFIQA", "dataset": "LIVEC", "srcc": 0.8 + s / 100, "plcc": 0.8,
                      "split_seed": s} for s in range(3)])


@pytest.mark.parametrize("overrides, reported, quoted", [
    ({}, None, "CSFIQA v2"), ({"csfiqa.version": "v1"}, 0.905, "CSFIQA v1")])
def test_set_version_reaches_the_table_and_its_caption(tmp_path, overrides, reported, quoted):
    # the cells of notebook 01: setup, then publish a comparison table quoting session.versions
    session = setup("01_train_csfiqa", "smoke", str(tmp_path), overrides=overrides)
    table = session.table(session.compare(RUNS, table="main"), "csfiqa_main", "CSFIQA, main table")
    srcc = table[table.metric == "SRCC"].iloc[0]
    assert (srcc.reported == reported) if reported else pd.isna(srcc.reported)
    md = (tmp_path / "tables" / "csfiqa_main.md").read_text()
    assert quoted in md and ("CSFIQA v2" in md) == (quoted == "CSFIQA v2")
    assert session.overrides == overrides


def test_every_notebook_takes_the_overrides_and_weights_and_hands_them_to_setup():
    for nb in cli.NOTEBOOKS:
        path = cli.notebooks_dir() / f"{nb}.ipynb"
        params = pm.inspect_notebook(str(path))
        assert params["overrides"]["default"] == "{}" and params["weights_dir"]["default"] == "None", nb
        code = "".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"])
        assert "overrides=overrides" in code and "weights_dir=weights_dir" in code, nb
        assert "run_kw" not in code and ".publish(" not in code, nb      # runs and outputs go through the session


def test_a_misspelt_field_stops_reproduce_before_any_notebook(tmp_path, capsys):
    assert cli.main(["reproduce", "--results-dir", str(tmp_path), "--set", "csfiqa.versoin=v1"]) == 2
    assert "csfiqa.versoin" in capsys.readouterr().err
    assert not (tmp_path / "notebooks").exists()


def test_overrides_set_the_base_and_a_row_s_own_field_wins():
    planned = sweep_configs("smoke", "csfiqa", "csfiqa.tau", [0.1, 0.2])
    got = [c for c, _ in with_base(planned, {"csfiqa.tau": 0.5, "csfiqa.lam": 0.5})]
    assert [c.csfiqa.tau for c in got] == [0.1, 0.2]        # the sweep's own field: each row its label
    assert all(c.csfiqa.lam == 0.5 for c in got)
    assert with_base(planned, {}) == planned


def test_the_quoted_version_does_not_change_the_run():
    for model in ("csfiqa", "lmliqa"):
        assert make_config("smoke", model, {f"{model}.version": "v1"}).key() == make_config("smoke", model).key()
    assert make_config("smoke", "csfiqa", {"csfiqa.tau": 0.2}).key() != make_config("smoke", "csfiqa").key()
