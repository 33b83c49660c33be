"""The paper path, proven on a CPU: every notebook of the paper and quick profiles, rehearsed at full size."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from native_fixtures import write_rehearsal_root

from iqa_utils.cli import NOTEBOOKS
from iqa_utils.config.profiles import PAPER_DATASETS
from iqa_utils.data.registry import load_manifest
from iqa_utils.reporting.index import REHEARSAL_MARK

ROOT = Path(__file__).resolve().parent.parent


def _reproduce(profile, data, pool, results, cache):
    cmd = [sys.executable, "-m", "iqa_utils.cli", "reproduce", "--profile", profile, "--rehearse",
           "--data-root", str(data), "--pool-dir", str(pool), "--results-dir", str(results)]
    env = {**os.environ, "IQA_KIT_CACHE": str(cache)}
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800, env=env)


@pytest.mark.slow
def test_paper_and_quick_rehearsals(tmp_path):
    data, pool = write_rehearsal_root(tmp_path)
    results = tmp_path / "results"
    proc = _reproduce("paper", data, pool, results, tmp_path / "cache")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in NOTEBOOKS:
        assert (results / "notebooks" / f"{name}.ipynb").exists()
    # every table and figure says it is a rehearsal, in the files and in the index
    index = (results / "README.md").read_text()
    assert "paper-rehearsal" in index and REHEARSAL_MARK in index
    md = sorted((results / "tables").glob("*.md"))
    assert len(md) >= 15 and all(p.read_text().startswith(REHEARSAL_MARK) for p in md)
    log = [json.loads(line) for line in (results / "outputs.jsonl").read_text().splitlines()]
    assert log and all(e["caption"].startswith(REHEARSAL_MARK) for e in log)
    # the full-size models ran on every dataset layout, and the LIVEFB patch labels made their figure
    main = pd.read_csv(results / "tables" / "csfiqa_main.csv")
    assert set(PAPER_DATASETS) <= set(main.dataset)
    records = [json.loads(p.read_text()) for p in (results / "runs").rglob("*.json")]
    assert {r["config"]["model"]["size"] for r in records} == {"small"}
    assert {r["config"]["csfiqa"]["input_size"] for r in records if r["config"]["model"]["name"] == "csfiqa"} == {240}
    assert any("patches used" in e["caption"] for e in log)
    # quick: the same code path, its runs already made by the paper rehearsal
    quick = _reproduce("quick", data, pool, results, tmp_path / "cache")
    assert quick.returncode == 0, quick.stdout[-3000:] + quick.stderr[-3000:]
    assert "quick-rehearsal" in (results / "README.md").read_text()


def test_rehearsal_data_is_a_handful_spread_over_the_labels(tmp_path):
    """Ten images (or three references of three images) spread from low to high label; the release's count
    is not checked; a real profile keeps the whole dataset."""
    from iqa_utils.runs.experiments import manifest_for
    data, _ = write_rehearsal_root(tmp_path)
    livec = manifest_for("paper-rehearsal", "LIVEC", data)
    assert len(livec) == 10
    tid = manifest_for("paper-rehearsal", "TID2013", data)
    assert tid.df.ref.nunique() == 3 and len(tid) == 9
    every = load_manifest("TID2013", data, check_count=False).df
    for ref, kept in tid.df.groupby("ref"):                  # each reference's lowest and highest label kept
        assert kept.label.min() == every[every.ref == ref].label.min()
        assert kept.label.max() == every[every.ref == ref].label.max()
    with pytest.raises(Exception, match="expected 10073"):
        manifest_for("paper", "KonIQ-10k", data)
