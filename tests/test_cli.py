"""iqa-kit train / predict / decisions / data from the command line, on the embedded synthetic set."""
import json
from pathlib import Path

import pytest

from iqa_utils import cli
from iqa_utils.cli import main
from iqa_utils.models import proxy
from iqa_utils.system import CACHE_ENV, DATA_ROOT_ENV

ENCODERS = ["crossvit_tiny.safetensors", "vit_tiny.safetensors"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    results = root / "results"
    args = ["train", "--model", "deiqt", "--dataset", "synthetic", "--data-root", str(root / "data"),
            "--results-dir", str(results), "--seeds", "0", "--device", "cpu",
            "--set", "train.epochs=1", "data.crops_train=1", "data.crops_test=2", "train.warmup_epochs=0"]
    assert main(args) == 0
    return root, results, args


def test_train_writes_a_record_and_a_rerun_skips_it(trained, capsys):
    root, results, args = trained
    records = list((results / "runs" / "deiqt" / "synthetic").glob("*.json"))
    assert len(records) == 1
    rec = json.loads(records[0].read_text())
    assert rec["config"]["train"]["epochs"] == 1 and rec["config"]["data"]["crops_test"] == 2
    mtime = records[0].stat().st_mtime_ns
    capsys.readouterr()
    assert main(args) == 0                         # loaded from the record, not retrained
    assert records[0].stat().st_mtime_ns == mtime
    assert "DEIQT" in capsys.readouterr().out


def test_predict_scores_images_with_the_checkpoint(trained, capsys):
    root, results, _ = trained
    ckpt = next((results / "checkpoints").iterdir())
    images = sorted((root / "data" / "synthetic" / "images").glob("*.png"))[:3]
    capsys.readouterr()
    assert main(["predict", *map(str, images), "--checkpoint", str(ckpt), "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    scores = [float(l.split("\t")[0]) for l in lines]
    assert all(-50 < s < 150 for s in scores)      # label units (0-100), not the min-max scale
    assert [l.split("\t")[1] for l in lines] == list(map(str, images))


def test_unknown_override_and_missing_checkpoint_are_clear_errors(tmp_path, capsys):
    assert main(["train", "--results-dir", str(tmp_path), "--set", "train.epoch=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("iqa-kit: train.epoch") and err.count("\n") == 1 and "Traceback" not in err
    assert main(["predict", str(tmp_path / "x.png"), "--checkpoint", str(tmp_path)]) == 2
    assert "x.png" in capsys.readouterr().err                      # the missing image is named first
    (tmp_path / "x.png").write_bytes(b"")
    assert main(["predict", str(tmp_path / "x.png"), "--checkpoint", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "config.json" in err and err.count("\n") == 1
    with pytest.raises(KeyError, match="train.epoch"):              # --debug: the error itself
        main(["--debug", "train", "--results-dir", str(tmp_path), "--set", "train.epoch=1"])


def test_decisions_lists_the_open_paper_details(capsys):
    assert main(["decisions", "--markdown"]) == 0
    out = capsys.readouterr().out
    assert "csfiqa.afs_k" in out and "lmliqa.saliency" in out and "reviews" in out


@pytest.fixture
def proxy_cache(tmp_path, monkeypatch):
    """A temporary kit cache, and the proxy recipes at a test's budget (3 steps); the folder the smoke
    profile's proxy weights go to."""
    for name, recipe in proxy.RECIPES.items():
        monkeypatch.setitem(proxy.RECIPES, name, {**recipe, "steps": 3, "batch": 6, "warmup_steps": 1})
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)
    return tmp_path / "cache" / "synthetic" / "pretrained" / proxy.DEFAULT_RECIPE


def test_proxy_builds_the_tiny_encoders_into_the_kit_cache(proxy_cache, capsys):
    assert main(["proxy"]) == 0
    out = capsys.readouterr().out
    assert sorted(p.name for p in proxy_cache.glob("*.safetensors")) == ENCODERS
    assert out.count("proxy pretraining: building") == 2                 # DEIQT and LML-IQA share vit_tiny
    assert f"{proxy_cache}: {', '.join(ENCODERS)} (current)" in out
    assert main(["proxy"]) == 0 and "building" not in capsys.readouterr().out      # built once
    assert main(["proxy", "--profile", "paper"]) == 2 and "not tiny" in capsys.readouterr().err


def test_reproduce_builds_the_proxy_weights_before_the_notebooks(proxy_cache, tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(cli, "_run_notebook", lambda name, *a: seen.append(
        sorted(p.name for p in proxy_cache.glob("*.safetensors"))) or 1.0)
    args = ["reproduce", "--notebooks", "00", "--results-dir", str(tmp_path / "results")]
    assert main(args) == 0 and seen == [[]]                                # from scratch: nothing built
    assert main(args + ["--set", "model.pretrained=True"]) == 0 and seen[1] == ENCODERS
