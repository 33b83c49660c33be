"""Small data, configs and fakes that several test files build the same way (fixtures: conftest.py).

    tiny_manifest(root, n)        n learnable PNGs (label = grey level); tiny_cfg(**over) a DEIQT config for them
    coded_manifest(root, sizes)   PNGs whose pixels say where they are (R = row, G = column, B = noise)
    dead_pid(), plant_claim(path) a claim file as another (possibly dead) process would have left it
    FakeCSFIQASampler, FakeLMLIQASampler
                                  the CropSampler contract on random pixels, for a model's train_batch
    two_steps(name, over, sampler, micro)
                                  a contrastive model's second training step, computed in micro-batches

Test files import these by name (`from helpers import tiny_manifest`); they never import each other.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from iqa_utils.config.check import make_config
from iqa_utils.data.manifest import Manifest
from iqa_utils.data.store import CropSampler, ImageStore
from iqa_utils.models import create_model
from iqa_utils.runs import claims
from iqa_utils.training import engine


# ---- tiny learnable images and the config that trains on them ---------------------------------------
def tiny_manifest(root, n=20, size=(40, 48), seed=0) -> Manifest:
    """n PNGs: grey level g (the label, 0-100) + a strong colour tint that leaves the grey level as is
    + smooth texture. Learnable in a few steps, while an untrained net's random colour mix is not."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        low = torch.from_numpy(rng.uniform(-1, 1, (1, 1, 4, 4)).astype(np.float32))
        texture = torch.nn.functional.interpolate(low, size=size, mode="bilinear")[0].numpy()
        g = rng.uniform(0.3, 0.7)
        a, b = rng.uniform(-0.25, 0.25, 2)
        tint = np.array([a, b - a, -b])[:, None, None]          # sums to zero over RGB
        arr = (np.clip(g + tint + 0.1 * texture, 0, 1).transpose(1, 2, 0) * 255).round().astype(np.uint8)
        path = root / f"img{i:02d}.png"
        Image.fromarray(arr).save(path)
        rows.append({"path": str(path), "label": 100 * g, "direction": "MOS",
                     "ref": None, "distortion": None, "level": None})
    return Manifest("tiny", root, pd.DataFrame(rows), split_unit="image")


def tiny_cfg(**over):
    """The smoke DEIQT config sized for tiny_manifest: 32-px crops, batch 8, three short epochs, each
    evaluated (tests read every epoch's test metrics)."""
    base = {"data.crop_size": 32, "data.crops_train": 4, "data.crops_test": 2, "train.global_batch": 8,
            "train.epochs": 3, "train.warmup_epochs": 1, "train.decay_epochs": 2, "train.num_threads": 2,
            "train.eval_every": 1}
    return make_config("smoke", "deiqt", {**base, **over})


# ---- images that tell where a crop was cut from -----------------------------------------------------
CODED_SIZES = [(120, 200), (200, 150), (100, 100), (160, 130)]  # (H, W), all < 256 so R/G hold positions


def coded_image(h, w, seed):
    rng = np.random.default_rng(seed)
    rr, cc = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    return np.stack([rr, cc, rng.integers(0, 256, (h, w))], -1).astype(np.uint8)


def coded_manifest(root: Path, sizes=CODED_SIZES, **kw) -> Manifest:
    """One coded PNG per size under root, labelled 0.5, 10.5, 20.5, ..."""
    rows = []
    for k, (h, w) in enumerate(sizes):
        p = root / f"img{k}.png"
        Image.fromarray(coded_image(h, w, k)).save(p)
        rows.append({"path": str(p), "label": 10.0 * k + 0.5, "direction": "MOS", "ref": None,
                     "distortion": None, "level": None})
    return Manifest("coded", root, pd.DataFrame(rows), **kw)


# ---- claims another process left behind -------------------------------------------------------------
def dead_pid() -> int:
    """The pid of a process that has exited."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def plant_claim(path, **info):
    """A claim file as another process would have left it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"pid": 1, "host": claims.HOST, "boot": claims.BOOT, "started": None,
                                "time": time.time(), "token": "theirs", **info}))


# ---- fake crop samplers: random pixels of the requested shapes --------------------------------------
class FakeCSFIQASampler:
    """The crops CSFIQA's train_batch asks for, with a log of the calls (kind, ratios, size)."""

    def __init__(self):
        self.calls = []

    def random_crops(self, idx, size, flip=False, generator=None):
        self.calls.append(("random", size))
        return torch.randn(len(idx), 3, size, size, generator=generator)

    def resized_crops(self, idx, ratio, size, flip=False, generator=None):
        self.calls.append(("resized", ratio, size))
        return torch.randn(len(idx), 3, size, size, generator=generator)

    def nested_crops(self, idx, ratio_small, ratio_large, size, flip=False, generator=None):
        self.calls.append(("nested", ratio_small, ratio_large, size))
        x = torch.randn(2, len(idx), 3, size, size, generator=generator)
        return x[0], x[1], torch.zeros(len(idx), 2, 4)


class FakeLMLIQASampler:
    """The CropSampler contract on random pixels (tests only need the shapes and the boxes)."""

    def __init__(self):
        self.g = torch.Generator().manual_seed(1)

    def random_crops(self, idx, size, flip=False, generator=None):
        return torch.randn(len(idx), 3, size, size, generator=self.g)

    def global_views(self, idx, size):
        return torch.randn(len(idx), 3, size, size, generator=self.g)

    def crops_with_boxes(self, idx, k, size, generator=None, mode="native", flip=False, max_iou=1.0):
        boxes = torch.rand(len(idx), k, 4, generator=self.g) * 0.5
        return torch.randn(len(idx), k, 3, size, size, generator=self.g), boxes

    def crops_at(self, idx, centres, size, flip=False, generator=None):
        assert centres.shape == (len(idx), 2) and ((centres >= 0) & (centres <= 1)).all()
        return torch.randn(len(idx), 3, size, size, generator=self.g)


# ---- the gradient cache: one step computed whole or in micro-batches --------------------------------
CPU = torch.device("cpu")
TINY_MODEL = {"model.pretrained": False, "train.global_batch": 8}


def two_steps_sampler():
    """Ten random images of three heights, labelled 0..1."""
    g = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, 112 + 8 * (i % 3), 120), dtype=torch.uint8, generator=g) for i in range(10)]
    return CropSampler(ImageStore(images, torch.linspace(0, 1, 10)))


def two_steps(name, over, sampler, micro, dist=None):
    """The gradients, loss and logs of a model's second step (the queue filled and the teacher moved by
    the first), computed in chunks of `micro` of a batch of 8; under torchrun (dist) this rank's share
    through DDP, the gradients averaged over the ranks."""
    torch.manual_seed(0)
    model = create_model(make_config("smoke", name, {**TINY_MODEL, **over})).train()
    idx, labels = torch.tensor([0, 3, 5, 3, 9, 2, 1, 7]), torch.linspace(0, 1, 10)
    loss_fn = dist.wrap(model) if dist else None
    for step in range(2):
        model.zero_grad(set_to_none=True)
        loss, logs = engine.forward_backward(model, sampler, idx.roll(step), labels=labels,
                                             streams=engine.crop_streams(0, step), micro=micro, device=CPU,
                                             loss_fn=loss_fn, dist=dist, share=dist.share(8) if dist else None)
        if dist:
            loss, logs = dist.mean(loss), {k: dist.mean(v) for k, v in logs.items()}
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        with torch.no_grad():                                   # a plain SGD step, so step 2 differs
            for p in model.parameters():
                if p.grad is not None:
                    p.sub_(0.1 * p.grad)
        model.after_step()
    return grads, loss, logs, model
