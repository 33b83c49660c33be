"""The main job: every notebook, smoke profile, executed by papermill through the CLI."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from iqa_utils.cli import NOTEBOOKS, main

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebooks_are_stripped_and_parameterised(name):
    nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), f"{name} has outputs"
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1
    for p in ("profile", "data_root", "results_dir", "device", "shard", "drive_dir"):
        assert f"{p} =" in params[0].source


@pytest.mark.slow
def test_failing_notebook_is_named_with_its_cell(tmp_path, monkeypatch, capsys):
    bad = tmp_path / "nbs"
    bad.mkdir()
    nb = nbformat.v4.new_notebook()
    p = nbformat.v4.new_code_cell('profile = "smoke"\nresults_dir = "."\ndevice = "cpu"')
    p.metadata["tags"] = ["parameters"]
    nb.cells = [p, nbformat.v4.new_code_cell("x = 1"), nbformat.v4.new_code_cell("raise ValueError('boom')")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, bad / "00_data_prep.ipynb")
    monkeypatch.setattr("iqa_utils.cli.notebooks_dir", lambda: bad)
    rc = main(["reproduce", "--notebooks", "00", "--results-dir", str(tmp_path / "res")])
    err = capsys.readouterr().err
    assert rc == 1
    assert "00_data_prep" in err and "ValueError" in err and "boom" in err
    assert (tmp_path / "res" / "notebooks" / "00_data_prep.ipynb").exists()


@pytest.mark.slow
def test_smoke_reproduction_runs_every_notebook(tmp_path):
    results = tmp_path / "results"
    cmd = [sys.executable, "-m", "iqa_utils.cli", "reproduce", "--profile", "smoke", "--results-dir", str(results)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in NOTEBOOKS:
        assert (results / "notebooks" / f"{name}.ipynb").exists()
    tables = {p.stem for p in (results / "tables").glob("*.md")}
    for t in ("datasets", "csfiqa_main", "lmliqa_main", "lmliqa_data_efficient", "csfiqa_ablation_modules",
              "lmliqa_ablation_components", "cross_dataset", "cost", "csfiqa_sensitivity_lambda"):
        assert t in tables, f"table {t} missing; have {sorted(tables)}"
    figures = {p.stem for p in (results / "figures").glob("*.png")}
    assert len(figures) >= 8, sorted(figures)
    index = (results / "README.md").read_text()
    for t in tables:
        assert f"tables/{t}.md" in index
    assert "csfiqa.tau" in index            # the decisions table
    # a second run is incremental: every training run is loaded from its record
    runs_before = sorted(p.name for p in (results / "runs").rglob("*.json"))
    assert runs_before
    main_csv = (results / "tables" / "csfiqa_main.csv").read_text()
    assert "unknown" in main_csv            # no reported number exists for the synthetic set
