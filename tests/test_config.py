import dataclasses

import pytest

from iqa_utils.config.check import decisions_table, make_config, override
from iqa_utils.config.fields import RunConfig


def test_override_unknown_field_is_an_error():
    with pytest.raises(KeyError, match="csfiqa.taus"):
        override(RunConfig(), {"csfiqa.taus": 0.3})


def test_override_sets_nested_field_and_copies():
    base = RunConfig()
    new = override(base, {"csfiqa.tau": 0.3, "train.epochs": 2})
    assert new.csfiqa.tau == 0.3 and new.train.epochs == 2
    assert base.csfiqa.tau == 0.1 and base.train.epochs == 9


def test_profiles_share_the_code_path_and_differ_in_size():
    smoke, paper = make_config("smoke"), make_config("paper")
    assert smoke.model.size == "tiny" and not smoke.model.pretrained   # chosen on validation (docs/datasets.md)
    assert paper.model.size == "small" and paper.model.pretrained
    with pytest.raises(ValueError, match="unknown profile"):
        make_config("huge")


def test_key_changes_with_method_knobs_of_its_own_model_only():
    a = make_config("smoke", "csfiqa")
    assert a.key() != override(a, {"csfiqa.tau": 0.2}).key()
    assert a.key() == override(a, {"lmliqa.tau": 0.2}).key()       # other model's knob
    assert a.key() == override(a, {"train.device": "cpu"}).key()    # where, not what
    assert a.key() != override(a, {"data.dataset": "LIVE"}).key()


def test_decisions_table_lists_every_decision_field_with_alternatives():
    df = decisions_table(make_config("smoke", "csfiqa", {"csfiqa.tau": 0.05}))
    n_fields = 0
    for f in dataclasses.fields(RunConfig):
        sub = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(sub):
            n_fields += sum("decision" in g.metadata for g in dataclasses.fields(sub))
    assert len(df) == n_fields > 30
    row = df[df.field == "csfiqa.tau"].iloc[0]
    assert row.value == 0.05 and row.default == 0.1 and "0.2" in row.alternatives
    assert (df["source of default"].str.len() > 0).all()
