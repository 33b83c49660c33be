"""The kit as a hostile or careless user meets it, through the command line: every case ends in the right
result or in ONE line `iqa-kit: <file or field>: <problem>` with exit status 2, no traceback, and nothing
partial or junk left in the results folder. (Bad release folders at the parser level: test_bad_data.py.)
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import native_fixtures as nf
import pytest
import torch

from iqa_utils import system
from iqa_utils.cli import main
from iqa_utils.data.registry import DATASET_FOLDERS, load_manifest
from iqa_utils.data.splits import make_split
from iqa_utils.models.deiqt import DEIQT
from iqa_utils.models.pretrained import save_weights
from iqa_utils.models.registry import register_model
from iqa_utils.reporting.index import write_index
from iqa_utils.training.checkpoint import save_checkpoint
from iqa_utils.training.engine import train_run
from iqa_utils.training.evaluation import NonFiniteError

from helpers import tiny_cfg, tiny_manifest

ROOT = Path(__file__).resolve().parent.parent
TINY = ["train.epochs=1", "data.crops_train=1", "data.crops_test=2", "train.warmup_epochs=0"]


def one_line(capsys, rc, *expected) -> str:
    """The command failed with status 2 and said so in one line naming what is wrong."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("iqa-kit: ")]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    for text in expected:
        assert text in lines[0], (text, lines[0])
    return lines[0]


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


# ---- settings: checked when the config is made, before any data is read -------------------------------
BAD_SETTINGS = {
    "csfiqa.tau=abc": "csfiqa.tau", "csfiqa.tau=0": "csfiqa.tau", "train.amp=bogus": "train.amp",
    "train.epochs=1.5": "train.epochs", "train.eval_every=0": "train.eval_every", "train.epochs=-2": "train.epochs",
    "data.split_ratio=1.0": "data.split_ratio", "train.global_batch=0": "train.global_batch",
    "train.lr=nan": "train.lr", "train.device=gpu": "train.device", "model.size=huge": "model.size",
    "data.resize_mode=stretch": "data.resize_mode", "train.betas=(0.9,)": "train.betas",
    "train.selection=val": "train.selection", "csfiqa.nsm=regional": "csfiqa.nsm",
    "lmliqa.teacher_init=checkpoint": "lmliqa.teacher_checkpoint", "train.epoch=1": "train.epoch",
    "train.micro_batch=5": "train.micro_batch", "csfiqa.set_size=64": "csfiqa.set_size",
    "lmliqa.set_size=12": "lmliqa.set_size", "no-equals-sign": "--set",
}


@pytest.mark.parametrize("setting", BAD_SETTINGS)
def test_bad_settings_are_one_line_naming_the_field(setting, tmp_path, capsys):
    extra = ["csfiqa.scale_mode=crop"] if setting.startswith("csfiqa.nsm") else []
    model = "lmliqa" if setting.startswith(("lmliqa", "train.micro")) else "csfiqa"
    rc = main(["train", "--model", model, "--results-dir", str(tmp_path / "res"), "--set", setting, *extra])
    one_line(capsys, rc, BAD_SETTINGS[setting])
    assert not (tmp_path / "res").exists()                    # refused before anything was written


def test_model_checkpoint_is_read(tmp_path, capsys):
    missing = tmp_path / "nowhere" / "model.safetensors"
    rc = main(["train", "--results-dir", str(tmp_path / "res"), "--data-root", str(tmp_path / "d"),
               "--set", f"model.checkpoint={missing}", *TINY])
    one_line(capsys, rc, str(missing))
    assert files_under(tmp_path / "res") == []                # no split, record or work folder left


# ---- data: `iqa-kit data` decodes every image and reports all that do not -----------------------------
@pytest.mark.parametrize("name", ["LIVEC", "KonIQ-10k", "TID2013", "LIVE"])
def test_data_reports_every_unreadable_image(name, tmp_path, capsys):
    root = nf.WRITERS[name](tmp_path / DATASET_FOLDERS[name])
    paths = [Path(p) for p in nf.load_fixture(name, root).df.path]
    paths[0].write_bytes(b"")
    paths[2].write_bytes(paths[2].read_bytes()[:40])
    paths[4].write_text("not an image")
    rc = main(["data", name, "--data-root", str(tmp_path), "--any-count", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    for p in (paths[0], paths[2], paths[4]):
        assert f"iqa-kit: {p}: " in err
    assert main(["data", name, "--data-root", str(tmp_path), "--any-count", "--no-decode"]) == 0


@pytest.mark.parametrize("name", ["LIVEC", "KonIQ-10k", "TID2013", "LIVE"])
def test_data_bad_release_is_one_line(name, tmp_path, capsys):
    rc = main(["data", name, "--data-root", str(tmp_path)])              # no release folder at all
    one_line(capsys, rc, name, str(tmp_path))
    root = nf.WRITERS[name](tmp_path / DATASET_FOLDERS[name])
    rc = main(["data", name, "--data-root", str(tmp_path)])              # a partial copy: the count
    one_line(capsys, rc, str(root), "expected")


# ---- predict misuse --------------------------------------------------------------------------------------
def test_predict_misuse(trained, tmp_path, capsys):
    ckpt = trained.checkpoint
    image = sorted((trained.data_root / "synthetic" / "images").glob("*.png"))[0]
    one_line(capsys, main(["predict", str(image), "--checkpoint", str(ckpt), "--crops", "0"]), "crops")
    one_line(capsys, main(["predict", str(tmp_path / "no.png"), "--checkpoint", str(ckpt)]), "no.png")
    one_line(capsys, main(["predict", str(image), "--checkpoint", str(tmp_path)]), "config.json")
    (tmp_path / "text.png").write_text("hello")
    one_line(capsys, main(["predict", str(tmp_path / "text.png"), "--checkpoint", str(ckpt)]), "text.png")
    for name, garbage in (("model.safetensors", b"\x00" * 64), ("config.json", b'{"config": {')):
        broken = tmp_path / f"broken-{name}"
        shutil.copytree(ckpt, broken)
        (broken / name).write_bytes(garbage)
        one_line(capsys, main(["predict", str(image), "--checkpoint", str(broken)]), str(broken / name))


# ---- corrupt state files -------------------------------------------------------------------------------
def test_corrupt_record_and_checkpoint_name_their_file(trained, capsys):
    args = trained.args
    record = next((trained.results / "runs").rglob("*.json"))
    saved = record.read_bytes()
    record.write_bytes(saved[: len(saved) // 2])                        # a record cut short
    one_line(capsys, main(args), str(record))
    record.write_bytes(saved)
    assert main(args) == 0


def test_truncated_resume_checkpoint(tmp_path):
    data = tiny_manifest(tmp_path / "data", n=12)
    cfg, split = tiny_cfg(**{"train.epochs": 1}), make_split(tiny_manifest(tmp_path / "data", n=12), 0)
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "checkpoint.pt").write_bytes(b"PK\x03\x04 cut")
    with pytest.raises(system.KitError, match="checkpoint.pt"):
        train_run(cfg, data, split, tmp_path / "work", progress=False)


def test_torn_outputs_log_and_timings(trained, tmp_path):
    res = tmp_path / "res"
    res.mkdir()
    (res / "outputs.jsonl").write_text('{"path": "tables/a.md", "kind": "table"}\n{"path": "tab')
    (res / "timings.json").write_text("{not json")
    with pytest.warns(UserWarning):
        path = write_index(res, "smoke", {"00_data_prep": 1.0})
    assert "00_data_prep" in path.read_text()
    assert json.loads((res / "timings.json").read_text()) == {"00_data_prep": 1.0}


# ---- the run itself: non-finite numbers never become a record ------------------------------------------
class NaNModel(DEIQT):
    def loss(self, batch):
        loss, logs = super().loss(batch)
        return loss * float("nan"), logs


@register_model("_test_nan")
def _nan(cfg):
    return NaNModel(cfg.model.size, cfg.data.crop_size)


def test_non_finite_loss_stops_the_run_and_writes_nothing(tmp_path):
    data = tiny_manifest(tmp_path / "data", n=12)
    with pytest.raises(NonFiniteError, match="NaN or infinite"):
        train_run(tiny_cfg(**{"model.name": "_test_nan", "train.epochs": 2}), data, make_split(data, 0),
                  tmp_path / "work", progress=False)
    assert files_under(tmp_path / "work") == []                       # no checkpoint, no weights


# ---- writes: atomic, unique, shareable; a full disk or an unwritable folder says so --------------------
def test_full_disk_and_unwritable_folder(tmp_path, capsys):
    def full(tmp):
        Path(tmp).write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(system.KitError, match="no space left on the device"):
        system.atomic_write(tmp_path / "x.json", full)
    assert files_under(tmp_path) == []
    (tmp_path / "file").write_text("")
    one_line(capsys, main(["train", "--results-dir", str(tmp_path / "file" / "res"), "--set", *TINY]),
             str(tmp_path / "file" / "res"))


def test_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = system.atomic_write_text("x", tmp_path / "shared.txt")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


@pytest.mark.slow
def test_two_reproduce_runs_on_one_folder(tmp_path):
    """Two processes writing the same results folder: both finish, nothing is torn or left half-written."""
    env = {**os.environ, "IQA_KIT_DATA": str(tmp_path / "data")}
    load_manifest("synthetic", tmp_path / "data")                       # the data built once, beforehand
    cmd = [sys.executable, "-m", "iqa_utils.cli", "reproduce", "--notebooks", "00", "--results-dir",
           str(tmp_path / "res")]
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    res = tmp_path / "res"
    assert not [f for f in files_under(res) if f.endswith(".tmp") or "/." in f or f.startswith(".")]
    assert all(json.loads(line) for line in (res / "outputs.jsonl").read_text().splitlines())
    assert "datasets.md" in (res / "README.md").read_text()


# ---- the first hour's remaining cases -------------------------------------------------------------------
def test_duplicated_image_under_two_names_is_named(tmp_path, capsys):
    """One LIVE image copied over another (a file listed under two names): `data` names both."""
    root = nf.WRITERS["LIVE"](tmp_path / DATASET_FOLDERS["LIVE"])
    paths = [Path(p) for p in nf.load_fixture("LIVE", root).df.path]
    paths[3].write_bytes(paths[1].read_bytes())
    rc = main(["data", "LIVE", "--data-root", str(tmp_path), "--any-count", "--quiet"])
    one_line(capsys, rc, f"iqa-kit: {paths[3]}: same pixels as {paths[1]}")


BAD_ARGUMENTS = {
    ("train", "--dataset", "NoSuchSet"): "--dataset: unknown dataset 'NoSuchSet'",
    ("train", "--test-dataset", "NoSuchSet"): "--test-dataset: unknown dataset 'NoSuchSet'",
    ("data", "NoSuchSet"): "unknown dataset 'NoSuchSet'; known: LIVE",
    ("train", "--shard", "half"): "--shard half: must look like i/N",
    ("train", "--shard", "2/2"): "--shard 2/2: out of range",
    ("reproduce", "--shard", "0/0"): "--shard 0/0: out of range",
    ("train", "--seeds", "0", "-1"): "--seeds: -1 is out of range",
    ("train", "--device", "warp"): "--device warp: not a device name",
}


@pytest.mark.parametrize("argv", BAD_ARGUMENTS, ids=" ".join)
def test_bad_arguments_are_one_line_naming_the_flag(argv, tmp_path, capsys):
    rc = main([*argv, "--results-dir", str(tmp_path / "res")] if argv[0] != "data" else list(argv))
    one_line(capsys, rc, BAD_ARGUMENTS[argv])
    assert not (tmp_path / "res").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible here")
def test_cuda_without_a_gpu_is_one_line(tmp_path, capsys):
    for flag, device in (("--device", "cuda"), ("--devices", "cuda:0,cuda:1")):
        rc = main(["train", flag, device, "--results-dir", str(tmp_path / "res")])
        one_line(capsys, rc, f"{flag} cuda", "no CUDA device is visible")


def test_predict_with_a_missing_checkpoint_folder_names_the_folder(tmp_path, capsys):
    image = tmp_path / "a.png"
    image.write_bytes(b"")
    rc = main(["predict", str(image), "--checkpoint", str(tmp_path / "nowhere")])
    line = one_line(capsys, rc, f"{tmp_path / 'nowhere'}: checkpoint folder not found")
    assert "config.json" not in line


def test_global_batch_larger_than_the_split_is_one_line(tmp_path, capsys):
    rc = main(["train", "--data-root", str(tmp_path / "d"), "--results-dir", str(tmp_path / "res"), "--device",
               "cpu", "--set", *TINY, "train.global_batch=4096"])
    one_line(capsys, rc, "train.global_batch: 4096 is more than")


def _full_disk(monkeypatch):
    """The disk fills during the write: half the bytes land, then the write fails with ENOSPC."""
    def write_bytes(self, data):
        with open(self, "wb") as f:
            f.write(bytes(data)[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device", str(self))
    monkeypatch.setattr(Path, "write_bytes", write_bytes)


def test_full_disk_while_saving_a_checkpoint_or_weights_keeps_the_previous_file(tmp_path, monkeypatch):
    model = DEIQT("tiny", 32)
    opt = torch.optim.AdamW(model.parameters())
    kw = dict(ident={"run": "x"}, model=model, opt=opt, scaler=torch.amp.GradScaler("cpu", enabled=False),
              state={"epoch": 1}, best_weights=None, shuffle_gen=torch.Generator())
    ckpt, weights = tmp_path / "checkpoint.pt", tmp_path / "model.safetensors"
    save_checkpoint(ckpt, **kw)
    save_weights(model, weights)
    before = {p: p.read_bytes() for p in (ckpt, weights)}
    with monkeypatch.context() as m:
        _full_disk(m)
        for path, save in ((ckpt, lambda: save_checkpoint(ckpt, **{**kw, "state": {"epoch": 2}})),
                           (weights, lambda: save_weights(DEIQT("tiny", 32), weights))):
            with pytest.raises(system.KitError, match=f"{path}: cannot write: no space left") as e:
                save()
            assert "\n" not in str(e.value)
    assert {p: p.read_bytes() for p in before} == before                # the previous files, intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "model.safetensors"]
