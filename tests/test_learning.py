"""Each method learns: a check that can fail.

A small learnable task built here (tiny_manifest: the label is the image's grey level under a strong
colour tint and texture). Each method, trained briefly at a tiny size with its full loss, must reach a
test SRCC well above the same model untrained (epochs = 0: the same initial weights), and the same
run on labels shuffled among the images (nothing to learn) must stay near chance. A change that
silently breaks a method's learning (a loss that no longer reaches the score, a detached head, labels
that no longer meet their images) fails here.
"""
from __future__ import annotations


import numpy as np
import pytest

from iqa_utils.config.check import make_config, override
from iqa_utils.data.manifest import Manifest
from iqa_utils.data.splits import make_split
from iqa_utils.training.engine import train_run

from helpers import tiny_manifest

# 40 images, half for testing: the SRCC of 20 unrelated pairs has a standard deviation of ~0.23
N_IMAGES, FLOOR, CHANCE = 40, 0.7, 0.5
BASE = {"data.crop_size": 32, "data.crops_train": 4, "data.crops_test": 2, "train.global_batch": 16,
        "train.epochs": 4, "train.warmup_epochs": 1, "train.decay_epochs": 3, "train.lr": 2e-3,
        "train.eval_every": 4,
        "train.label_norm": "minmax", "train.num_threads": 2, "model.pretrained": False}
METHODS = {
    "deiqt": {},
    "csfiqa": {"data.crop_size": 36, "csfiqa.input_size": 36},
    "lmliqa": {"lmliqa.k_crops": 2},
}
pytestmark = pytest.mark.filterwarnings("ignore:.*plcc_logistic left empty")


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """The learnable set, the same images with their labels shuffled among them, and a 50/50 split."""
    data = tiny_manifest(tmp_path_factory.mktemp("learn"), n=N_IMAGES, seed=3)
    df = data.df.copy()
    df["label"] = np.random.default_rng(0).permutation(df["label"].to_numpy())
    shuffled = Manifest("tiny-shuffled", data.root, df, split_unit="image")
    return data, shuffled, make_split(data, 0, ratio=0.5)


def _srcc(cfg, manifest, split, out) -> float:
    return train_run(cfg, manifest, split, out, progress=False)["final"]["srcc"]


@pytest.mark.slow          # three short trainings: 20-160 s per method on a shared 2-core CPU
@pytest.mark.parametrize("model", list(METHODS))
def test_method_learns_and_shuffled_labels_stay_near_chance(model, task, tmp_path):
    data, shuffled, split = task
    cfg = make_config("smoke", model, {**BASE, **METHODS[model]})
    untrained = _srcc(override(cfg, {"train.epochs": 0}), data, split, tmp_path / "untrained")
    learned = _srcc(cfg, data, split, tmp_path / "learned")
    noise = _srcc(cfg, shuffled, split, tmp_path / "shuffled")
    assert learned > max(FLOOR, untrained + 0.3), (learned, untrained)
    assert abs(noise) < CHANCE, noise
