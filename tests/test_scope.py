"""What each profile runs: the main tables over `seeds`, the other tables over `side_seeds`."""
import pytest

from iqa_utils.config.profiles import PROFILE_SCOPE, profile_scope
from iqa_utils.runs import experiments as E


@pytest.mark.parametrize("profile", list(PROFILE_SCOPE))
def test_every_plan_names_its_side_seeds(profile):
    p = profile_scope(profile)
    assert p["side_seeds"] and set(p["side_seeds"]) <= set(p["seeds"])


def test_smoke_main_tables_take_three_seeds_and_the_others_one():
    p = profile_scope("smoke")
    assert p["seeds"] == [0, 1, 2] and p["side_seeds"] == [0]
    seeds = lambda planned: sorted({c.split_seed for c, _ in planned})
    assert seeds(E.main_configs("smoke")) == [0, 1, 2]
    assert seeds(E.untrained_configs("smoke", "csfiqa")) == [0, 1, 2]
    assert seeds(E.variant_configs("smoke", "csfiqa", E.ABLATIONS["csfiqa"])) == [0]
    assert seeds(E.named_sweep_configs("smoke", "lmliqa", "tau")) == [0]
    assert seeds(E.fraction_configs("smoke", ("deiqt",))) == [0]
    assert seeds(E.cross_configs("smoke", ("deiqt",))) == [0]


def test_notebooks_run_the_main_tables_on_every_seed():
    nb = E.notebook_runs("smoke")
    for notebook, models in (("01_train_csfiqa", ("deiqt", "csfiqa")), ("02_train_lmliqa", ("deiqt", "lmliqa"))):
        keys = {(c.key(), c.split_seed) for c, _ in nb[notebook]}
        assert {(c.key(), c.split_seed) for c, _ in E.main_configs("smoke", models)} <= keys


def test_cross_runs_vary_the_training_seed_over_the_side_seeds():
    planned = E.cross_configs("paper", ("deiqt",), pairs=[("LIVE", "CSIQ")])
    assert [c.train.seed for c, _ in planned] == profile_scope("paper")["side_seeds"] == list(range(10))
    assert all(c.split_seed == c.train.seed and c.test_dataset == "CSIQ" and c.data.cross_train == "whole"
               for c, _ in planned)


def test_smoke_spends_its_budget_on_the_main_runs():
    """The main runs (and notebook 06's, which reuse them) train at the profile's budget; the other
    tables at the scope's cheaper side budget."""
    steps = lambda c: c.train.epochs * (448 * c.data.crops_train // c.train.global_batch)
    main = {c.key(): c for c, _ in E.main_configs("smoke")}
    assert {c.key() for c, _ in E.visual_configs("smoke")} <= set(main)
    side = (E.variant_configs("smoke", "csfiqa", E.ABLATIONS["csfiqa"]) + E.fraction_configs("smoke", ("deiqt",))
            + E.cross_configs("smoke", ("deiqt",)) + E.named_sweep_configs("smoke", "lmliqa", "tau"))
    assert all(c.train.epochs == profile_scope("smoke")["side_budget"]["train.epochs"] for c, _ in side)
    assert min(steps(c) for c in main.values()) >= 4 * max(steps(c) for c, _ in side)
    assert all(profile_scope(p)["side_budget"] == {} for p in PROFILE_SCOPE if p != "smoke")
