"""Trained models on disk: what a run saves, how it is loaded back, and scoring image files with it.

    save_trained(model, cfg, manifest, out_dir=)  model.safetensors + config.json (working resolution,
                                                  label scale): all `iqa-kit predict` needs
    load_trained(path) -> (model, cfg)            from a run folder, its model.safetensors or a checkpoint.pt
    predict_images(model, paths)                  scores of image files, in label units
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..config.check import config_from_dict, override
from ..config.fields import RunConfig
from ..data.cache import open_store
from ..data.manifest import Manifest
from ..data.store import CropSampler
from ..models import create_model
from ..models.base import TestCrops
from ..models.pretrained import load_kit_state, load_weights, save_weights
from ..devices import Precision, amp_dtype, resolve_device
from ..system import KitError, MissingFile, atomic_write_text, read_json
from .checkpoint import read_checkpoint
from .evaluation import LabelNorm, predict_rows

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def save_trained(model, cfg: RunConfig, manifest, *, out_dir, min_side: int, selected_epoch=None) -> Path:
    """model.safetensors + config.json: all `iqa-kit predict` needs (working resolution, label scale)."""
    out_dir = Path(out_dir)
    save_weights(model, out_dir / WEIGHTS)
    meta = {"config": cfg.to_dict(), "dataset": manifest.name, "selected_epoch": selected_epoch,
            "label_range": list(manifest.label_range) if manifest.label_range else None,
            "direction": manifest.direction,
            "working": {"resize_mode": cfg.data.resize_mode, "parity_size": manifest.parity_size,
                        "keep_aspect_short_side": manifest.keep_aspect_short_side,
                        "max_side": cfg.data.max_side, "min_side": min_side}}
    atomic_write_text(json.dumps(meta, indent=1, default=str), out_dir / CONFIG)
    return out_dir / WEIGHTS


def load_trained(path, device: str | None = "cpu"):
    """(model, cfg) from a run folder, its model.safetensors, or a training checkpoint.pt."""
    path = Path(path)
    if not path.exists():
        raise MissingFile(f"{path}: checkpoint folder not found; pass a run's checkpoint folder "
                          f"(results/checkpoints/<key>/)")
    folder = path if path.is_dir() else path.parent
    if not (folder / CONFIG).is_file():
        raise MissingFile(f"{folder / CONFIG} is missing: pass a run's checkpoint folder "
                                f"(results/checkpoints/<key>/) holding {WEIGHTS} and {CONFIG}")
    meta = read_json(folder / CONFIG, "run config")
    try:
        cfg = override(config_from_dict(meta["config"]), {"model.pretrained": False, "model.checkpoint": None})
    except (KeyError, TypeError) as e:
        raise KitError(f"{folder / CONFIG}: not a kit run config ({e})") from None
    model = create_model(cfg)                  # the weights come from the file, not the hub
    if path.is_dir() or path.suffix == ".safetensors":
        load_weights(model, path / WEIGHTS if path.is_dir() else path)
    else:
        load_kit_state(model, read_checkpoint(path)["model"], path)
    model.kit_meta = meta
    return model.to(resolve_device(device)).eval(), cfg


def predict_images(model, paths, cfg: RunConfig | None = None, *, n_crops: int | None = None,
                   mode: str | None = None, seed: int = 0, batch_size: int = 64, device: str | None = None,
                   amp: str = "off", progress: bool = False) -> np.ndarray:
    """Scores of image files: decode at the training set's working resolution, test crops (n_crops and
    mode default to the run's config), mean."""
    meta = getattr(model, "kit_meta", {})
    if n_crops is not None and n_crops < 1:
        raise KitError(f"crops: {n_crops} test crops per image; it must be at least 1")
    cfg = cfg or (config_from_dict(meta["config"]) if meta else RunConfig())
    working = meta.get("working", {})
    resize_mode = working.get("resize_mode", cfg.data.resize_mode)
    dev = resolve_device(device) if device else next(model.parameters()).device
    model.to(dev).eval()
    size = model.input_size
    files = Manifest.of_files(paths, parity_size=working.get("parity_size"),
                              keep_aspect_short_side=working.get("keep_aspect_short_side"))
    store = open_store(files, resize_mode=resize_mode, max_side=working.get("max_side", cfg.data.max_side),
                       min_side=working.get("min_side", max(size, cfg.data.crop_size)), kind="ram", progress=progress)
    norm = LabelNorm(cfg.train.label_norm, meta.get("label_range"))
    crops = TestCrops(n=n_crops if n_crops is not None else cfg.data.crops_test, size=size,
                      mode=mode or cfg.data.test_crops, seed=seed)
    pred = predict_rows(model, CropSampler(store, device=dev), range(len(store)), crops=crops,
                        batch_size=batch_size, precision=Precision(amp_dtype(amp, dev)), progress=progress)
    return norm.inverse(pred)
