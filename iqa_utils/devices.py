"""Torch's side of the bottom floor: devices, precision, train/eval mode, torch.save through the atomic
write, and the environment a result records. Kept apart from `system.py` so that importing the kit's
error type and file helpers does not import torch (the command line's `--help` answers in a second)."""
from __future__ import annotations

import contextlib
import io
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

import safetensors.torch
import torch

from . import __version__
from .system import KitError, atomic_write_bytes, git_commit, package_version


def check_device(name: str | torch.device, what: str = "device") -> torch.device:
    """A device torch can use here, or one line saying why not (`what` names the flag or field): a name
    torch does not know, or CUDA on a machine where no (or not that) CUDA device is visible."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise KitError(f"{what} {name}: not a device name (cpu, cuda, cuda:0, ...)") from None
    if device.type == "cuda":
        n = torch.cuda.device_count()
        if n == 0:
            raise KitError(f"{what} {name}: no CUDA device is visible on this machine; use cpu")
        if device.index is not None and device.index >= n:
            raise KitError(f"{what} {name}: only {n} CUDA device(s) are visible (cuda:0 to cuda:{n - 1})")
    return device


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """"auto" (or None): CUDA when available, else the CPU; any other name is checked (check_device)."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return check_device(name)


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """auto: bf16 on CUDA when supported, else fp16 (with loss scaling); off on CPU."""
    if amp == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None, "fp32": None}[amp]


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


@dataclass(frozen=True)
class Precision:
    """How a forward runs: autocast to `dtype` (None: float32) and image batches in channels-last memory
    layout. The two travel together from the config (train.amp / train.eval_amp, train.channels_last)
    to every forward of training and evaluation."""
    dtype: torch.dtype | None = None
    channels_last: bool = False

    def __post_init__(self):
        if self.dtype is not None and not (isinstance(self.dtype, torch.dtype) and self.dtype.is_floating_point):
            raise KitError(f"Precision.dtype: {self.dtype!r} is not a floating torch dtype (or None for float32)")
        if not isinstance(self.channels_last, bool):
            raise KitError(f"Precision.channels_last: {self.channels_last!r} is not True or False")

    def autocast(self, device: torch.device):
        return autocast(device, self.dtype)

    def layout(self, x):
        """x in channels-last memory when asked and x is an image batch (B, C, H, W); else x itself."""
        if self.channels_last and isinstance(x, torch.Tensor) and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x


@contextlib.contextmanager
def train_mode(model: torch.nn.Module, mode: bool):
    """Run a block with the model in train (True) or eval (False) mode, then restore its mode."""
    was_training = model.training
    model.train(mode)
    try:
        yield model
    finally:
        model.train(was_training)


def device_name(device="cpu") -> str:
    """'NVIDIA H100 80GB HBM3' or the CPU model (from /proc/cpuinfo) with the thread count."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu} ({torch.get_num_threads()} threads)"


def save_safetensors(tensors: dict, file) -> None:
    """A saver for `atomic_save`: the tensors in the safetensors format."""
    file.write(safetensors.torch.save(tensors))


def atomic_save(obj, path, saver=torch.save) -> Path:
    """saver(obj, file) (torch.save by default) into memory, then the bytes through `atomic_write`.
    Writing through Python makes a full disk an OSError (ENOSPC) that names the file: torch's and
    safetensors' own file writers report it as a RuntimeError or SafetensorError without the errno."""
    buffer = io.BytesIO()
    saver(obj, buffer)
    return atomic_write_bytes(buffer.getbuffer(), path)


def environment(device=None) -> dict:
    """What produced a result: package versions, the git commit and the device."""
    dev = torch.device(device if device is not None else "cpu")
    versions = {"python": sys.version.split()[0], "torch": torch.__version__}
    versions.update({pkg: package_version(pkg) for pkg in ("timm", "transformers")})
    versions["iqa_kit"] = __version__
    return {"versions": versions, "git_commit": git_commit(), "device": f"{dev.type}: {device_name(dev)}"}
