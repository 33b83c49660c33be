"""Direct checks of small public helpers that the larger tests only reach through their callers."""
import pytest
import torch
from torch import nn

from iqa_utils.config.check import check_batch, make_config
from iqa_utils.config.fields import ConfigError
from iqa_utils.config.profiles import is_rehearsal, rehearsal_of
from iqa_utils.models.deiqt import float32_linear


def test_is_cross_needs_another_test_dataset():
    assert not make_config("smoke").is_cross()
    assert not make_config("smoke", "deiqt", {"test_dataset": "synthetic"}).is_cross()
    assert make_config("paper", "deiqt", {"data.dataset": "LIVE", "test_dataset": "CSIQ"}).is_cross()


def test_rehearsal_names():
    assert rehearsal_of("paper") == "paper-rehearsal" and is_rehearsal("paper-rehearsal")
    assert rehearsal_of("smoke") == "smoke" and not is_rehearsal("quick")
    with pytest.raises(ConfigError, match="profile: unknown profile"):
        rehearsal_of("huge")


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


def test_float32_linear_stays_float32_under_autocast():
    torch.manual_seed(0)
    layer, x = nn.Linear(8, 1), torch.randn(4, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(x).dtype == torch.bfloat16
        out = float32_linear(layer, x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, layer(x))
