"""The GPU budget `iqa-kit plan` prints (runs.estimate): crops per run counted by hand, the GPU-hours of
the runs without a record, each run counted once, exact counts only when the datasets are on disk.

Hand counts use release image counts (no dataset on disk): n images, split_ratio 0.8 -> train, a
val_fraction of train carved out, the rest tested; a step takes global_batch crops."""
import math

import pytest

from iqa_utils.cli import main
from iqa_utils.config.check import make_config
from iqa_utils.config.fields import ConfigError
from iqa_utils.runs.estimate import _row, check_rate, plan_table, relative_cost, run_crops
from iqa_utils.runs.experiments import manifest_for, notebook_runs
from iqa_utils.runs.records import data_digest, record_path
from iqa_utils.system import KitError

from helpers import tiny_cfg

SMALL = {"data.dataset": "LIVEC", "train.global_batch": 16, "data.crops_train": 2, "data.crops_test": 3,
         "train.epochs": 4, "train.eval_every": 3, "data.val_fraction": 0.1}


def no_data(name):
    """The datasets are not on disk: release counts."""
    return None


def paper(model="deiqt", **over):
    return make_config("paper", model, {**SMALL, **over})


# ---- crops of one run -------------------------------------------------------------------------------
def test_crops_of_a_run_by_hand():
    # LIVEC 1162: train round(0.8 * 1162) = 930, val round(0.1 * 930) = 93 -> 837 train, 232 test
    # steps/epoch (837 * 2) // 16 = 104; evaluations ceil(4 / 3) = 2, each over test + val
    assert run_crops(paper(), no_data) == {"train_crops": 4 * 104 * 16, "test_crops": 2 * (232 + 93) * 3,
                                           "exact": False}
    capped = run_crops(paper(**{"train.max_steps_per_epoch": 50}), no_data)
    assert capped["train_crops"] == 4 * 50 * 16                       # the rehearsals' cap on an epoch
    untrained = run_crops(paper(**{"train.epochs": 0}), no_data)
    assert untrained == {"train_crops": 0, "test_crops": 1 * (232 + 93) * 3, "exact": False}


def test_a_cross_run_trains_on_the_whole_source_and_tests_on_the_target():
    cfg = paper(**{"data.dataset": "LIVE", "test_dataset": "CSIQ", "data.val_fraction": 0.0, "train.epochs": 1})
    # LIVE 779 all train: (779 * 2) // 16 = 97 steps; CSIQ's 866 images tested once
    assert run_crops(cfg, no_data) == {"train_crops": 97 * 16, "test_crops": 866 * 3, "exact": False}


def test_lmliqa_counts_its_global_views_and_extra_crops():
    # global batch 16, K = 4 crops, con_share 0.5: m = max(2, round(0.5 * 16 / 4)) = 2 images per step
    per_step = {"match_deiqt": 16 + 2 * 2, "extra": 16 + 2 * 2 + 2 * 4}    # + student/teacher views (+ K crops)
    for budget, crops in per_step.items():
        cfg = paper("lmliqa", **{"lmliqa.budget": budget, "lmliqa.k_crops": 4, "lmliqa.con_share": 0.5})
        assert run_crops(cfg, no_data)["train_crops"] == 4 * 104 * crops, budget
    wide = paper("lmliqa", **{"lmliqa.budget": "extra", "lmliqa.k_crops": 4, "lmliqa.con_share": 1.0})
    assert run_crops(wide, no_data)["train_crops"] == 4 * 104 * (16 + 2 * 4 + 4 * 4)   # m = 4


def test_crops_from_the_dataset_on_disk_are_exact(tiny_data):
    # 20 images: 16 train, 4 test; (16 * 4) // 8 = 8 steps an epoch, 3 epochs, 3 evaluations of 2 crops
    assert run_crops(tiny_cfg(), lambda name: tiny_data) == {"train_crops": 3 * 8 * 8, "test_crops": 3 * 4 * 2,
                                                            "exact": True}


# ---- GPU-hours ------------------------------------------------------------------------------------------
def test_gpu_hours_count_the_runs_without_a_record():
    deiqt = make_config("smoke", "deiqt")
    runs = [(deiqt, {"train_crops": 3_000_000, "test_crops": 1_200_000, "exact": True}, False),
            (deiqt, {"train_crops": 1_000_000, "test_crops": 0, "exact": False}, True)]      # has a record
    row = _row("nb", runs, crops_per_s=1000.0)
    # a training crop costs three forward passes, a test crop one: (3 * 3e6 + 1.2e6) / (3 * 1000) = 3400 s
    assert row == {"notebook": "nb", "runs": 2, "with records": 1, "train crops (M)": 4.0,
                   "test crops (M)": 1.2, "GPU-hours left": round(3400 / 3600, 2), "counts": "≈ release counts"}
    assert "GPU-hours left" not in _row("nb", runs, None)


def test_models_cost_their_macs_relative_to_deiqt():
    assert relative_cost("paper", "deiqt") == 1.0
    assert 8 < relative_cost("paper", "csfiqa") < 12                 # the LLaMA-7B layer: about ten DEIQTs


# ---- the table -----------------------------------------------------------------------------------------
def test_every_run_is_counted_once_and_the_total_sums_the_notebooks(data_root, tmp_path):
    table = plan_table("smoke", tmp_path, str(data_root)).set_index("notebook")
    planned = {(c.key(), c.split_seed, c.test_dataset) for runs in notebook_runs("smoke").values() for c, _ in runs}
    notebooks = table.drop("total")
    assert table.loc["total", "runs"] == notebooks.runs.sum() == len(planned)
    assert table.loc["06_visualizations", "runs"] == 0                 # its runs are the main tables', counted there
    assert table.loc["total", "train crops (M)"] == pytest.approx(notebooks["train crops (M)"].sum())
    assert (table["with records"] == 0).all() and (table.counts == "exact").all()


def test_a_record_takes_its_run_off_the_hours_left(data_root, tmp_path):
    before = plan_table("smoke", tmp_path, str(data_root), crops_per_s=1.0).set_index("notebook")
    cfg = notebook_runs("smoke")["01_train_csfiqa"][0][0]
    record = record_path(cfg, tmp_path, data_digest(manifest_for("smoke", cfg.data.dataset, str(data_root))))
    record.parent.mkdir(parents=True)
    record.write_text("{}")
    after = plan_table("smoke", tmp_path, str(data_root), crops_per_s=1.0).set_index("notebook")
    assert after.loc["01_train_csfiqa", "with records"] == after.loc["total", "with records"] == 1
    assert after.loc["01_train_csfiqa", "GPU-hours left"] < before.loc["01_train_csfiqa", "GPU-hours left"]
    assert after.loc["02_train_lmliqa", "GPU-hours left"] == before.loc["02_train_lmliqa", "GPU-hours left"]


def test_without_the_datasets_counts_are_the_releases_and_any_record_of_the_run_counts(tmp_path):
    table = plan_table("quick", tmp_path, str(tmp_path / "no-data")).set_index("notebook")
    assert table.loc["total", "counts"] == "≈ release counts" and table.loc["total", "with records"] == 0
    cfg = notebook_runs("quick")["01_train_csfiqa"][0][0]
    folder = record_path(cfg, tmp_path, "x").parent
    folder.mkdir(parents=True)
    (folder / f"{cfg.key()}-s{cfg.split_seed}-dsomewhere.json").write_text("{}")   # data digest unknown here
    table = plan_table("quick", tmp_path, str(tmp_path / "no-data")).set_index("notebook")
    assert table.loc["01_train_csfiqa", "with records"] == 1


# ---- bad input: one line -------------------------------------------------------------------------------
@pytest.mark.parametrize("rate", [0.0, -5.0, math.nan, math.inf])
def test_a_rate_that_is_not_positive_is_refused(rate, tmp_path, capsys):
    with pytest.raises(KitError, match=f"^crops_per_s: {rate} is not a positive number"):
        plan_table("smoke", tmp_path, crops_per_s=rate)
    assert main(["plan", "--crops-per-s", str(rate), "--no-memory", "--results-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == f"iqa-kit: --crops-per-s: {rate} is not a positive number of training crops per second\n"


def test_an_unknown_profile_or_data_root_is_one_line(tmp_path, capsys):
    with pytest.raises(ConfigError, match="^profile: unknown profile 'huge'"):
        plan_table("huge", tmp_path)
    assert main(["plan", "--data-root", str(tmp_path / "nowhere"), "--no-memory"]) == 2
    assert capsys.readouterr().err == f"iqa-kit: --data-root: folder not found: {tmp_path / 'nowhere'}\n"


@pytest.mark.parametrize("rate", [-5.0, 0.0, math.nan, math.inf])
def test_check_rate_refuses_what_would_print_nonsense_hours(rate):
    with pytest.raises(KitError, match=r"^--crops-per-s: .* is not a positive number"):
        check_rate(rate, "--crops-per-s")
    assert check_rate(None) is None and check_rate(8000.0) == 8000.0
