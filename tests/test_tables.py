import pandas as pd
import pytest

from iqa_utils.reporting import tables


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
