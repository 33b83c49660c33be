import dataclasses
from dataclasses import dataclass

import pytest

from iqa_utils.config.check import check_field, decisions_table, make_config, override
from iqa_utils.config.fields import ConfigError, RunConfig, decision, setting


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
    assert a.key() == override(a, {"train.micro_batch": 8}).key()    # how a step is computed, not its numbers
    assert a.key() != override(a, {"csfiqa.set_size": 8}).key()
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


def test_choices_are_enforced_for_every_type_and_alternatives_only_listed():
    @dataclass
    class Demo:
        n: int = setting(2, choices=[1, 2, 4])
        w: float = decision(0.2, id="X1", source="test", alternatives=[0.1, 0.2], range="[0, 1]")
        s: str = decision("a", id="X2", source="test", choices=["a", "b"])

    meta = {f.name: f.metadata for f in dataclasses.fields(Demo)}
    assert check_field("n", int, meta["n"], 4) == 4
    with pytest.raises(ConfigError, match=r"n: 3 is not allowed; it accepts one of 1, 2, 4"):
        check_field("n", int, meta["n"], 3)                 # a closed numeric set is a closed set
    assert check_field("w", float, meta["w"], 0.25) == 0.25  # listed, not enforced: the range bounds it
    with pytest.raises(ConfigError, match="w: 1.5 is out of range"):
        check_field("w", float, meta["w"], 1.5)
    with pytest.raises(ConfigError, match="s: 'c' is not allowed; it accepts one of a, b"):
        check_field("s", str, meta["s"], "c")
    with pytest.raises(TypeError, match="not both"):
        decision(1, id="X3", source="test", choices=[1], alternatives=[2])


def test_numeric_decisions_list_alternatives_and_take_any_value_in_range():
    cfg = override(make_config("smoke", "csfiqa"), {"csfiqa.gamma1": 0.25, "lmliqa.k_crops": 5})
    assert cfg.csfiqa.gamma1 == 0.25 and cfg.lmliqa.k_crops == 5
    row = decisions_table(cfg).set_index("field").loc["csfiqa.gamma1"]
    assert row.alternatives == "0.1, 0.2, 0.3"
    with pytest.raises(ValueError, match="csfiqa.nsm: 'noisy' is not allowed"):
        override(cfg, {"csfiqa.nsm": "noisy"})
