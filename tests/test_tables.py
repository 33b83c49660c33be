import pandas as pd
import pytest

from iqa_utils.data.registry import load_manifest
from iqa_utils.reporting import tables
from iqa_utils.reporting.paper_tables import dataset_summary


def test_reported_numbers_have_provenance():
    df = tables.reported_numbers()
    assert len(df) > 300
    assert set(df.provenance) <= {"abstract", "reviews", "official_code", "third_party_table", "recalled"}


def test_lookup_known_and_unknown_cells():
    v, prov = tables.lookup_reported("DEIQT", "LIVEC", "SRCC")
    assert v == pytest.approx(0.875) and "abstract" in prov
    # CSFIQA's KonIQ number is not in the known text: unknown, never a guess
    assert tables.lookup_reported("CSFIQA", "KonIQ-10k", "SRCC") == (None, "unknown")


def test_comparison_table_median_mean_and_delta():
    runs = pd.DataFrame({"method": ["DEIQT"] * 3, "dataset": ["LIVEC"] * 3,
                         "srcc": [0.80, 0.90, 0.85], "plcc": [0.8, 0.9, 1.0]})
    t = tables.comparison_table(runs)
    srcc = t[t.metric == "SRCC"].iloc[0]
    assert srcc["median"] == pytest.approx(0.85) and srcc["n_splits"] == 3
    assert srcc["std"] == pytest.approx(0.05)
    assert srcc["delta"] == pytest.approx(0.85 - 0.875)
    syn = tables.comparison_table(pd.DataFrame({"method": ["DEIQT"], "dataset": ["synthetic"],
                                                "srcc": [0.5], "plcc": [0.5]}))
    assert syn.reported.isna().all() and (syn.provenance == "unknown").all()
    md = tables.to_markdown(syn)
    assert "unknown" in md


def test_write_table_writes_md_and_csv(tmp_path):
    runs = pd.DataFrame({"method": ["DEIQT"], "dataset": ["LIVE"], "srcc": [0.9], "plcc": [0.9]})
    paths = tables.write_table(tables.comparison_table(runs), "t1", tmp_path, caption="Table 1")
    assert pd.read_csv(paths["csv"]).shape[0] == 2
    assert paths["md"].read_text().startswith("Table 1")
    assert not list((tmp_path / "tables").glob("*.tmp"))


def test_version_field_chooses_the_reported_numbers():
    """lmliqa.version picks which version's cells a table quotes; another paper's rows are not filtered."""
    assert tables.lookup_reported("LML-IQA", "LIVEC", "PLCC", versions={"LML-IQA": "v1"})[0] == pytest.approx(0.914)
    assert tables.lookup_reported("LML-IQA", "LIVEC", "PLCC", versions={"LML-IQA": "v2"}) == (None, "unknown")
    v2, prov = tables.lookup_reported("LML-IQA", "CSIQ", "PLCC", versions={"LML-IQA": "v2"})
    assert v2 == pytest.approx(0.977) and "v2" in prov
    assert tables.lookup_reported("DEIQT", "LIVEC", "SRCC", versions={"LML-IQA": "v1"})[0] == pytest.approx(0.875)


def _seeds(values, dataset="LIVEC"):
    return pd.DataFrame({"method": ["DEIQT"] * len(values), "dataset": [dataset] * len(values),
                         "srcc": values, "plcc": values})


def test_verdict_inside_and_outside_the_bootstrap_interval():
    """DEIQT reports 0.875 SRCC on LIVEC: inside an interval around it, outside one far below it."""
    near = tables.comparison_table(_seeds([0.86, 0.87, 0.875, 0.88, 0.89, 0.87]), metrics=("srcc",)).iloc[0]
    assert near["verdict"] == "inside" and near["ci_low"] <= 0.875 <= near["ci_high"]
    assert (near["min"], near["max"]) == (0.86, 0.89)
    low = tables.comparison_table(_seeds([0.70, 0.72, 0.71, 0.73, 0.69]), metrics=("srcc",)).iloc[0]
    assert low["verdict"].startswith("outside (reported above") and "outside min–max too" in low["verdict"]
    assert low["ci_high"] < 0.875 and low["delta"] == pytest.approx(0.71 - 0.875)
    md = tables.to_markdown(tables.comparison_table(_seeds([0.70, 0.72, 0.71, 0.73, 0.69]), metrics=("srcc",)))
    assert "95 % CI of median" in md and "outside" in md


def test_median_interval_is_scipys_bootstrap():
    v = [0.1, 0.5, 0.3, 0.9, 0.7, 0.2]
    lo, hi = tables.median_interval(v)
    assert lo < float(pd.Series(v).median()) < hi and lo >= 0.1 and hi <= 0.9
    assert tables.median_interval([0.4] * 5) == (0.4, 0.4)


def test_too_few_seeds_or_a_smoke_profile_is_not_comparable():
    few = tables.comparison_table(_seeds([0.86, 0.87, 0.88]), metrics=("srcc",)).iloc[0]
    assert few["verdict"] == "not comparable: 3 seeds (a verdict needs 5)" and few["delta"] is not None
    smoke = tables.comparison_table(_seeds([0.86] * 6), metrics=("srcc",), profile="smoke").iloc[0]
    assert smoke["verdict"].startswith("not comparable: smoke profile") and smoke["reported"] == 0.875
    assert smoke["delta"] is None and smoke["ci_low"] is None
    md = tables.to_markdown(tables.comparison_table(_seeds([0.86] * 6), metrics=("srcc",), profile="smoke"))
    assert "0.875" in md and "| —" in md and "+" not in md.split("\n")[-2]
    rehearsal = tables.comparison_table(_seeds([0.86] * 6), metrics=("srcc",), profile="paper-rehearsal")
    assert rehearsal.verdict.iloc[0].startswith("not comparable: rehearsal")
    unknown = tables.comparison_table(_seeds([0.5] * 6, "synthetic"), metrics=("srcc",)).iloc[0]
    assert unknown["verdict"] == "" and unknown["reported"] is None


def test_index_summary_line_counts_cells_inside_and_names_the_largest_gaps(tmp_path):
    from iqa_utils.reporting import index
    runs = pd.concat([_seeds([0.86, 0.87, 0.875, 0.88, 0.89]), _seeds([0.80, 0.81, 0.82, 0.80, 0.81], "LIVE")])
    paths = tables.write_table(tables.comparison_table(runs, metrics=("srcc",)), "main", tmp_path)
    text = index.record_output(tmp_path, paths["md"], "table", "", writer="01_x", profile="paper").read_text()
    first = [line for line in text.splitlines() if line.startswith("**")][0]
    assert first.startswith("**1 of 2 reported cells inside the reproduced interval**")
    assert "the largest gaps: main: DEIQT LIVE SRCC reported 0.9" in first
    assert "not comparable: smoke profile" in index.write_index(tmp_path, "smoke").read_text()


def test_verdicts_follow_their_own_groups_in_first_order_with_missing_keys():
    runs = pd.concat([_seeds([0.70, 0.72, 0.71, 0.73, 0.69]), _seeds([0.97, 0.98, 0.99, 0.98, 0.98], "LIVE")])
    runs = runs.sample(frac=1.0, random_state=0).assign(selection=None)        # interleaved rows, NaN key
    t = tables.comparison_table(runs, metrics=("srcc", "plcc")).set_index(["dataset", "metric"])
    assert t.loc[("LIVE", "SRCC"), "verdict"] == "inside" and t.loc[("LIVE", "SRCC"), "min"] == 0.97
    assert t.loc[("LIVEC", "SRCC"), "verdict"].startswith("outside") and t.loc[("LIVEC", "PLCC"), "max"] == 0.73


def test_dataset_summary_reads_what_each_manifest_holds(data_root, tiny_data):
    """Notebook 00's table: one row per dataset, its references and distortion types counted only where
    the set has them (a reference-split synthetic set against a per-image authentic-like one)."""
    syn = load_manifest("synthetic", data_root)
    t = dataset_summary({"synthetic": syn, "tiny": tiny_data}).set_index("dataset")
    assert t.loc["synthetic", "images"] == len(syn.df) and t.loc["tiny", "images"] == 20
    assert t.loc["synthetic", "references"] == syn.df.ref.nunique() > 1
    assert t.loc["synthetic", "distortion types"] == syn.df.distortion.nunique() > 1
    assert t.loc["synthetic", "split by"] == "ref" and t.loc["tiny", "split by"] == "image"
    assert pd.isna(t.loc["tiny", "references"]) and pd.isna(t.loc["tiny", "distortion types"])
    lo, hi = tiny_data.df.label.min(), tiny_data.df.label.max()
    assert t.loc["tiny", "label range"] == f"{lo:.3g}–{hi:.3g}"
