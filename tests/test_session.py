"""The notebook Session carries the whole reporting context: what it publishes is written, stamped,
logged and indexed in one place, from a notebook or a script, with no state left in the process."""
from __future__ import annotations

import json
import os

import nbformat
import pandas as pd
import pytest

from iqa_utils import cli
from iqa_utils.models.pretrained import WEIGHTS_ENV
from iqa_utils.reporting import plots
from iqa_utils.reporting.index import REHEARSAL_MARK, profile_reason
from iqa_utils.reporting.paper_tables import paper_versions
from iqa_utils.reporting.notebook import Session, setup
from iqa_utils.runs import experiments


def _log(results) -> list[dict]:
    return [json.loads(line) for line in (results / "outputs.jsonl").read_text().splitlines()]


def test_a_session_made_in_a_script_indexes_its_table_and_figure(tmp_path, capsys):
    session = Session("make_extra.py", "paper", str(tmp_path), None, "cpu", None)
    session.table(pd.DataFrame({"method": ["DEIQT"], "value": [1.0]}), "extra", "An extra table")
    assert "| DEIQT    |       1 |" in capsys.readouterr().out       # the table's text, not an IPython object
    session.figure("extra", "An extra figure", plots.plot_not_made("extra", "nothing to show"))
    readme = (tmp_path / "README.md").read_text()
    assert "[tables/extra.md](tables/extra.md) | make_extra.py | paper | An extra table" in readme
    assert "[figures/extra.png](figures/extra.png) | make_extra.py | paper | An extra figure" in readme
    assert (tmp_path / "tables" / "extra.csv").exists() and (tmp_path / "figures" / "extra.png").exists()


def test_two_sessions_in_one_process_stamp_and_mark_their_own_outputs(tmp_path):
    rehearsal = setup("01_a", "paper-rehearsal", str(tmp_path / "r"))
    smoke = setup("01_b", "smoke", str(tmp_path / "s"))              # made last: nothing of it leaks back
    plain = plots.save(plots.plot_not_made("t", "w"), tmp_path / "plain.png").read_bytes()
    for session in (rehearsal, smoke, rehearsal):
        session.figure("f", "a figure", plots.plot_not_made("t", "w"))
        session.table(pd.DataFrame({"a": [1]}), "t", "a table")
    assert (tmp_path / "s" / "figures" / "f.png").read_bytes() == plain
    assert (tmp_path / "r" / "figures" / "f.png").read_bytes() != plain        # stamped
    assert (tmp_path / "r" / "tables" / "t.md").read_text().startswith(REHEARSAL_MARK)
    assert not (tmp_path / "s" / "tables" / "t.md").read_text().startswith(REHEARSAL_MARK)
    assert all(e["caption"].startswith(REHEARSAL_MARK) for e in _log(tmp_path / "r"))
    assert not any(e["caption"].startswith(REHEARSAL_MARK) for e in _log(tmp_path / "s"))


def test_compare_judges_by_the_session_s_profile(tmp_path):
    runs = pd.DataFrame({"method": "DEIQT", "dataset": "LIVEC", "srcc": [0.86, 0.87, 0.875, 0.88, 0.89],
                         "plcc": 0.89, "split_seed": range(5)})
    judged = setup("01_x", "paper", str(tmp_path)).compare(runs, metrics=("srcc",)).iloc[0]
    smoke = setup("01_x", "smoke", str(tmp_path)).compare(runs, metrics=("srcc",)).iloc[0]
    assert judged.verdict == "inside" and smoke.verdict.startswith("not comparable: smoke profile")


@pytest.mark.slow
def test_session_run_uses_its_results_folder_and_overrides(tmp_path):
    """session.run(planned): the session's results folder, --set overrides and stores, no keyword list per
    cell."""
    session = setup("01_x", "smoke", str(tmp_path), device="cpu",
                    overrides={"model.pretrained": False, "data.crops_test": 2})
    rows = session.run(experiments.untrained_configs("smoke", "deiqt", seeds=[0]), progress=False)
    assert list(rows.variant) == ["untrained"] and len(rows) == 1
    records = [json.loads(p.read_text()) for p in (tmp_path / "runs").rglob("*.json")]
    assert [r["config"]["data"]["crops_test"] for r in records] == [2]
    opened = session.stores.opened
    session.run(experiments.untrained_configs("smoke", "deiqt", seeds=[1]), progress=False)     # a later cell
    assert session.stores.opened == opened > 0       # its run reads the stores the first cell opened


@pytest.mark.slow
def test_reproduce_hands_the_weights_folder_to_the_notebooks_not_to_its_own_environment(tmp_path, monkeypatch):
    """A rehearsal's stand-in weights reach the notebooks as their `weights_dir` parameter (setup points
    the kernel's models there); the reproduce process's own environment stays as it was."""
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    stand_ins = tmp_path / "stand-ins"
    stand_ins.mkdir()
    monkeypatch.setattr(cli, "_rehearsal_weights", lambda profile: stand_ins)    # real ones are gigabytes
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('profile = "smoke"\nresults_dir = "."\nweights_dir = None')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(
        "import os\nfrom iqa_utils.reporting.notebook import setup\n"
        "session = setup('00_data_prep', profile, results_dir, weights_dir=weights_dir)\n"
        f"open(os.path.join(results_dir, 'weights.txt'), 'w').write(os.environ.get({WEIGHTS_ENV!r}, ''))")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, nbs / "00_data_prep.ipynb")
    monkeypatch.setattr(cli, "notebooks_dir", lambda: nbs)
    results = tmp_path / "res"
    assert cli.main(["reproduce", "--profile", "paper", "--rehearse", "--notebooks", "00",
                     "--results-dir", str(results)]) == 0
    assert (results / "weights.txt").read_text() == str(stand_ins)
    assert WEIGHTS_ENV not in os.environ


def test_profile_reason_says_why_a_profile_cannot_be_compared():
    assert "smoke profile" in profile_reason("smoke")
    assert "rehearsal" in profile_reason("paper-rehearsal") and "rehearsal" in profile_reason("quick-rehearsal")
    assert profile_reason("paper") is None and profile_reason("quick") is None and profile_reason(None) is None


def test_paper_versions_follow_the_overrides():
    """`--set csfiqa.version=v1` quotes CSFIQA v1's numbers; LML-IQA keeps the profile's version."""
    assert paper_versions("paper") == {"CSFIQA": "v2", "LML-IQA": "v2"}
    assert paper_versions("paper", {"csfiqa.version": "v1"}) == {"CSFIQA": "v1", "LML-IQA": "v2"}
