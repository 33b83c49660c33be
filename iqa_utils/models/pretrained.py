"""Pretrained encoder weights: a local file when offline, the hub when online; always strict.

Never `trust_remote_code`; `torch.load` only with weights_only=True; safetensors preferred.
"""
from __future__ import annotations

import functools
import math
import os
import pickle
import socket
import zipfile
from pathlib import Path
from urllib.parse import urlparse

import huggingface_hub
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from timm.layers import resample_abs_pos_embed
from torch import nn

from ..devices import atomic_save, save_safetensors
from ..system import KitError, MissingFile


class WeightsError(KitError, RuntimeError):
    """A weights file or folder is missing or does not match the model; the message says how to get it."""


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = load_file(str(path)) if path.suffix == ".safetensors" else \
            torch.load(path, map_location="cpu", weights_only=True)
    except (SafetensorError, OSError, RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
        raise WeightsError(f"{path}: unreadable weights file (truncated, or not a checkpoint: "
                           f"{str(e).splitlines()[0][:120]}); download it again") from None
    for key in ("model", "state_dict", "model_ema"):   # DeiT's .pth (and kit checkpoints) wrap them
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            return obj[key]
    return obj


HOW_TO_DOWNLOAD = ("download it on a machine with internet (`iqa-kit weights --dir W` fetches every file the "
                   "quick and paper profiles need) and pass its local path")

# Where pretrained weights come from when a config names none: the hub repos below, or, when the
# environment variable is set (machines without internet), the folder it names, filled by
# `iqa-kit weights --dir W` with one subfolder per repo (named after the repo).
WEIGHTS_ENV = "IQA_KIT_WEIGHTS"
DEIT_HUB_ID = "timm/deit3_small_patch16_224.fb_in1k"
LLAMA_HUB_ID = "huggyllama/llama-7b"           # LLaMA-7B (v1) in safetensors shards, as LM4VisualEncoding used


def crossvit_hub_id(encoder: str) -> str:
    return f"timm/{encoder.split('.')[0]}.in1k"


def weights_source(hub_id: str) -> str:
    """$IQA_KIT_WEIGHTS/<repo name> when the variable is set, else the hub repo id itself."""
    root = os.environ.get(WEIGHTS_ENV)
    if not root:
        return hub_id
    folder = Path(root).expanduser() / hub_id.split("/")[-1]
    if not folder.is_dir():
        raise WeightsError(f"{folder}: folder not found ({WEIGHTS_ENV}={root}); fill it with "
                           f"`iqa-kit weights --dir {root}` on a machine with internet")
    return str(folder)


def looks_local(source: str) -> bool:
    """A path rather than a hub repo id ("org/name")."""
    return source.startswith(("/", ".", "~")) or source.count("/") != 1 or \
        source.endswith((".safetensors", ".pth", ".pt", ".bin", ".json"))


HUB_PROBE_S = 3.0                 # one connection attempt to the hub's host, instead of the client's retries


@functools.lru_cache(maxsize=None)
def _unreachable(endpoint: str) -> str | None:
    """Why endpoint's host cannot be reached (one TCP connection, HUB_PROBE_S at most), or None."""
    url = urlparse(endpoint)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                 timeout=HUB_PROBE_S).close()
    except OSError as e:
        return f"{url.hostname} cannot be reached: {e.strerror or type(e).__name__}"
    return None


def hub_offline() -> str | None:
    """Why the Hugging Face hub is out of reach (HF_HUB_OFFLINE set, or its host not answering: probed
    once per process), or None. Behind an HTTPS proxy the client is left to decide."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "on", "yes", "true") or \
            huggingface_hub.constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    if os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy"):
        return None
    return _unreachable(huggingface_hub.constants.ENDPOINT)


class HubOffline(OSError):
    """The hub is out of reach and the file is not in the local hub cache."""


def hub_download(repo: str, filename: str, **kw) -> str:
    """huggingface_hub.hf_hub_download; offline, only the local hub cache is read (without the client,
    which would still try the network), so a file that is not there fails at once instead of after the
    client's retries (about 40 s)."""
    offline = hub_offline()
    if not offline:
        return huggingface_hub.hf_hub_download(repo, filename, **kw)
    cached = None if kw else huggingface_hub.try_to_load_from_cache(repo, filename)
    if isinstance(cached, str):
        return cached
    raise HubOffline(f"{repo}/{filename} is not in the local hub cache ({offline})")


def resolve_weights(source: str, filename: str = "model.safetensors") -> Path:
    """A local file (or folder holding `filename`), else `filename` of a hub repo id, downloaded to the
    Hugging Face cache. A missing file is one WeightsError sentence saying how to get it."""
    p = Path(os.path.expanduser(source))
    if p.is_dir():
        folder, p = p, p / filename
        pth = sorted(folder.glob("*.pth"))
        if not p.is_file() and filename == "model.safetensors" and len(pth) == 1:
            p = pth[0]                                 # DeiT's own checkpoint format, e.g. deit_3_small_224_1k.pth
    if p.is_file():
        return p
    if looks_local(source):
        raise WeightsError(f"weights file {p} does not exist; {HOW_TO_DOWNLOAD}.")
    try:
        return Path(hub_download(source, filename))
    except Exception as e:  # offline, wrong id, gated repo, missing file
        offline = hub_offline()
        raise WeightsError(f"could not get {filename} of {source!r} from the Hugging Face hub "
                           f"({type(e).__name__}{'; ' + offline if offline else ''}); {HOW_TO_DOWNLOAD}.") from e


def kit_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state a kit checkpoint or weights file holds: everything but what the model rebuilds from its
    source (`source_state_keys`: CSFIQA's frozen 0.4 GB LLaMA layer is read again, not saved per run)."""
    model = getattr(model, "_orig_mod", model)
    skip = model.source_state_keys() if hasattr(model, "source_state_keys") else set()
    return {k: v for k, v in model.state_dict().items() if k not in skip}


def state_mismatch(own: dict, sd: dict, skip=frozenset()) -> tuple[list, list, list]:
    """What keeps `sd` from loading strictly into a module whose state is `own`: the keys missing (but
    those in skip), the keys left over, the keys of another shape."""
    missing = sorted(set(own) - set(sd) - set(skip))
    unexpected = sorted(set(sd) - set(own))
    wrong = sorted(k for k in sd if k in own and sd[k].shape != own[k].shape)
    return missing, unexpected, wrong


def load_kit_state(model: nn.Module, sd: dict, where) -> None:
    """kit_state's counterpart, strict: every other entry must be there, nothing may be left over."""
    model = getattr(model, "_orig_mod", model)
    own = model.state_dict()
    skip = model.source_state_keys() if hasattr(model, "source_state_keys") else set()
    missing, unexpected, wrong = state_mismatch(own, sd, skip)
    if missing or unexpected or wrong:
        raise WeightsError(f"{where}: not the weights of this model (missing {missing[:3]}, unexpected "
                           f"{unexpected[:3]}, wrong shape {wrong[:3]})")
    model.load_state_dict(sd, strict=False)


def save_weights(model: nn.Module, path) -> Path:
    """kit_state(model) as safetensors, atomically (a full disk is one line naming the file)."""
    state = {k: v.detach().contiguous() for k, v in kit_state(model).items()}
    return atomic_save(state, path, save_safetensors)


def load_weights(model: nn.Module, path) -> Path:
    """A kit run's model.safetensors (or the run folder holding it) into model, strictly; a missing,
    truncated or mismatched file is one KitError naming it."""
    path = Path(path).expanduser()
    path = path / "model.safetensors" if path.is_dir() else path
    if not path.is_file():
        raise MissingFile(f"{path}: weights file missing; the run may not have finished")
    try:
        sd = load_file(str(path))
    except (SafetensorError, OSError, RuntimeError) as e:
        raise WeightsError(f"{path}: unreadable weights file ({str(e).splitlines()[0][:160]})") from None
    load_kit_state(model, sd, path)
    return path


def map_deit_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """DeiT-III checkpoint names -> timm names (gamma_1/2 -> ls1/ls2.gamma); drop the ImageNet head."""
    out = {}
    for k, v in sd.items():
        if k.startswith(("head.", "fc_norm.")) and "head" in k:
            continue
        k = k.replace(".gamma_1", ".ls1.gamma").replace(".gamma_2", ".ls2.gamma")
        out[k] = v
    return out


def fit_pos_embed(v: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
    """A (1, prefix + g*g, D) position embedding resampled (timm's resample_abs_pos_embed) to the grid of
    `own`, the encoder's; prefix tokens (a CLS, or none with no_embed_class) are kept as they are."""
    if v.shape == own.shape or v.dim() != 3 or v.shape[-1] != own.shape[-1]:
        return v                                   # anything else is the strict loader's to report
    n = own.shape[1]
    prefix = n - math.isqrt(n) ** 2
    side = math.isqrt(n - prefix)
    return resample_abs_pos_embed(v, new_size=[side, side], num_prefix_tokens=prefix)


def vit_key_map(encoder: nn.Module):
    """DeiT-III names -> timm names (map_deit_keys), then the position embedding resampled when the
    encoder's input size differs from the checkpoint's (as timm does when it loads pretrained weights)."""
    own = encoder.state_dict()

    def key_map(sd):
        out = map_deit_keys(sd)
        if "pos_embed" in out and "pos_embed" in own:
            out["pos_embed"] = fit_pos_embed(out["pos_embed"], own["pos_embed"])
        return out
    return key_map


def load_encoder_weights(encoder: nn.Module, source: str, key_map=map_deit_keys) -> Path:
    """Load strictly: every encoder tensor must come from the file, and nothing in it may be left over."""
    path = resolve_weights(source)
    sd = key_map(read_state_dict(path))
    missing, unexpected, bad_shape = state_mismatch(encoder.state_dict(), sd)
    if missing or unexpected or bad_shape:
        raise WeightsError(f"{path} does not match the encoder: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}, wrong shape {bad_shape[:5]}")
    encoder.load_state_dict(sd, strict=True)
    return path
