"""Pretrained encoder weights: a local file when offline, the hub when online; always strict.

Never `trust_remote_code`; `torch.load` only with weights_only=True; safetensors preferred.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ..system import KitError


class WeightsError(KitError, RuntimeError):
    """A weights file or folder is missing or does not match the model; the message says how to get it."""


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    obj = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict", "model_ema"):   # DeiT's .pth wraps the weights in "model"
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            return obj[key]
    return obj


def resolve_weights(source: str, filename: str = "model.safetensors") -> Path:
    """A local file (or folder holding `filename`), else a hub repo id downloaded to the HF cache."""
    p = Path(os.path.expanduser(source))
    if p.is_dir():
        p = p / filename
    if p.is_file():
        return p
    looks_local = source.startswith(("/", ".", "~")) or source.count("/") != 1 or \
        source.endswith((".safetensors", ".pth", ".pt", ".bin"))
    if looks_local:
        raise WeightsError(f"weights file {p} does not exist; download it on a machine with internet "
                           f"(e.g. `huggingface-cli download <repo> {filename}`) and pass its path.")
    try:
        from huggingface_hub import hf_hub_download
        return Path(hf_hub_download(source, filename))
    except Exception as e:  # offline, wrong id, gated repo
        raise WeightsError(
            f"could not get {filename} of {source!r} from the Hugging Face hub ({type(e).__name__}); "
            f"download it where there is internet (`huggingface-cli download {source} {filename}`) "
            f"and set model.weights to the local file.") from e


def map_deit_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """DeiT-III checkpoint names -> timm names (gamma_1/2 -> ls1/ls2.gamma); drop the ImageNet head."""
    out = {}
    for k, v in sd.items():
        if k.startswith(("head.", "fc_norm.")) and "head" in k:
            continue
        k = k.replace(".gamma_1", ".ls1.gamma").replace(".gamma_2", ".ls2.gamma")
        out[k] = v
    return out


def load_encoder_weights(encoder: nn.Module, source: str, key_map=map_deit_keys) -> Path:
    """Load strictly: every encoder tensor must come from the file, and nothing in it may be left over."""
    path = resolve_weights(source)
    sd = key_map(_read_state_dict(path))
    own = encoder.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    bad_shape = [k for k in own if k in sd and own[k].shape != sd[k].shape]
    if missing or unexpected or bad_shape:
        raise WeightsError(f"{path} does not match the encoder: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}, wrong shape {bad_shape[:5]}")
    encoder.load_state_dict(sd, strict=True)
    return path
