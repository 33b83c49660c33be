"""The run config: overrides, profiles, the key that names a run, decisions and their table, and every
check made when a config is made (a bad value is one ConfigError line naming its field)."""
import dataclasses
from dataclasses import dataclass

import pytest

from iqa_utils.config.check import check_batch, check_field, config_from_dict, decisions_table, make_config, override
from iqa_utils.config.fields import ConfigError, RunConfig, decision, setting
from iqa_utils.config.profiles import is_rehearsal, rehearsal_of


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


def test_rehearsal_names():
    assert rehearsal_of("paper") == "paper-rehearsal" and is_rehearsal("paper-rehearsal")
    assert rehearsal_of("smoke") == "smoke" and not is_rehearsal("quick")
    with pytest.raises(ConfigError, match="profile: unknown profile"):
        rehearsal_of("huge")


# ---- checked where the config is made: one line naming the field ---------------------------------
def test_csfiqa_choices_are_checked_where_the_config_is_made():
    for bad in ({"csfiqa.scl_pool": "prefusion"}, {"csfiqa.ic_norm": "none"}, {"csfiqa.crop_nesting": "centre"},
                {"csfiqa.nsm": "regional_weight", "csfiqa.scale_mode": "crop"}, {"csfiqa.nsm_weight": -1.0}):
        with pytest.raises(ConfigError):
            make_config("smoke", "csfiqa", bad)


def test_lmliqa_fields_are_checked_where_the_config_is_made():
    for bad in ({"lmliqa.max_iou": 0.0}, {"lmliqa.max_iou": 1.5}, {"lmliqa.queue_size": -1},
                {"lmliqa.anchor": "salient_crop"}, {"lmliqa.flip_crops": "yes"}):
        with pytest.raises(ConfigError):
            make_config("smoke", "lmliqa", bad)


@pytest.mark.parametrize("over,field", [({"train.micro_batch": 3}, "train.micro_batch"),
                                        ({"csfiqa.set_size": 16}, "csfiqa.set_size"),
                                        ({"csfiqa.set_size": 3}, "csfiqa.set_size")])
def test_bad_splits_name_the_field(over, field):
    with pytest.raises(ConfigError, match=f"^{field}: "):
        make_config("smoke", "csfiqa", {"model.pretrained": False, "train.global_batch": 8, **over})


def test_check_batch_names_the_field():
    cfg = make_config("smoke", "csfiqa", {"train.micro_batch": 4})
    with pytest.raises(ConfigError, match="train.micro_batch: 4 does not divide the 18"):
        check_batch(cfg, 18)              # a dataset's own batch, known only when the run starts
    with pytest.raises(ConfigError, match="train.global_batch: 15 does not split evenly over 2"):
        check_batch(make_config("smoke"), 15, world=2)
    cfg = make_config("smoke", "csfiqa", {"csfiqa.set_size": 8})
    with pytest.raises(ConfigError, match="csfiqa.set_size: sets of 8 samples do not tile the global batch of 12"):
        check_batch(cfg, 12)
    check_batch(make_config("smoke", "csfiqa", {"train.micro_batch": 4, "csfiqa.set_size": 8}), 16)


def test_micro_batch_auto_is_the_default():
    assert make_config("smoke", "csfiqa", {"train.micro_batch": "auto"}).train.micro_batch is None


# ---- what names a run: the key, cross runs, records written by older versions -------------------
def test_the_quoted_version_does_not_change_the_run():
    for model in ("csfiqa", "lmliqa"):
        assert make_config("smoke", model, {f"{model}.version": "v1"}).key() == make_config("smoke", model).key()
    assert make_config("smoke", "csfiqa", {"csfiqa.tau": 0.2}).key() != make_config("smoke", "csfiqa").key()


def test_is_cross_needs_another_test_dataset():
    assert not make_config("smoke").is_cross()
    assert not make_config("smoke", "deiqt", {"test_dataset": "synthetic"}).is_cross()
    assert make_config("paper", "deiqt", {"data.dataset": "LIVE", "test_dataset": "CSIQ"}).is_cross()


def test_config_round_trip():
    cfg = make_config("smoke", "deiqt", {"train.lr": 3e-4})
    back = config_from_dict(cfg.to_dict())
    assert back.key() == cfg.key() and back.train.betas == (0.9, 0.999)
    with pytest.raises(KeyError):
        config_from_dict({**cfg.to_dict(), "bogus": 1})


def test_old_records_afs_switch_reads_as_today_s_choice():
    for old, new in ((True, "topk"), (False, "dense")):
        d = make_config("smoke", "csfiqa").to_dict()
        d["csfiqa"]["afs"] = old
        assert config_from_dict(d).csfiqa.afs == new
