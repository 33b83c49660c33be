"""The bottom floor: the kit's error type, devices and precision, safe file writes, the environment.

Nothing here imports another module of the package, so every other module may import it.

Every file the kit writes goes through `atomic_write` (or the helpers built on it): the content goes to
a temporary file with a unique name beside the target and is renamed over it only once complete, so an
interruption, a full disk or a second process writing the same file never leaves a partial file behind.
The file is created with the permissions the user's umask allows (not the 0600 of a bare temporary
file), so results can be shared on a multi-user server. JSON-lines logs are appended one whole line per
`write` call on an O_APPEND descriptor; a reader skips a torn last line (a crash mid-append) with a
warning instead of failing.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import warnings
from importlib import metadata
from pathlib import Path
from typing import Callable

import torch

from . import __version__


CACHE_ENV = "IQA_KIT_CACHE"          # the kit's cache folder (synthetic set, image stores, stand-in weights)
DATA_ROOT_ENV = "IQA_KIT_DATA"       # the datasets' folder when no data_root is given


def cache_dir(part: str) -> Path:
    """<$IQA_KIT_CACHE or ~/.cache/iqa-kit>/<part>: where the kit keeps what it can rebuild."""
    return Path(os.environ.get(CACHE_ENV) or "~/.cache/iqa-kit").expanduser() / part


class KitError(Exception):
    """A problem with the user's input (a file, a field, a folder), explained in one line that names it.

    The command line prints these as `iqa-kit: <message>` without a traceback (`--debug` shows it).
    """


class MissingFile(KitError, FileNotFoundError):
    """A file the kit needs is not there; the message names it and says where it comes from."""


# ---- devices and precision -------------------------------------------------------------------------
def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """"auto" (or None): CUDA when available, else the CPU."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """auto: bf16 on CUDA when supported, else fp16 (with loss scaling); off on CPU."""
    if amp == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None, "fp32": None}[amp]


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


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


# ---- files -----------------------------------------------------------------------------------------
def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def os_error(path, e: OSError, doing: str = "write") -> KitError:
    """An OSError as a KitError naming the file; a full disk or a read-only folder says so."""
    if e.errno == errno.ENOSPC:
        why = "the disk is full"
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        why = "permission denied (read-only folder?)"
    else:
        why = e.strerror or str(e)
    return KitError(f"{path}: cannot {doing}: {why}")


def atomic_write(path, writer: Callable[[str], None]) -> Path:
    """writer(tmp_path) writes the content; the result appears at `path` whole or not at all."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
    except OSError as e:
        raise os_error(path, e) from e
    try:
        writer(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise os_error(path, e) from e
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_save(obj, path, saver=torch.save) -> Path:
    """saver(obj, tmp_path) (torch.save by default) through `atomic_write`."""
    return atomic_write(path, lambda tmp: saver(obj, tmp))


def atomic_write_text(text: str, path) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def atomic_write_json(obj, path) -> Path:
    return atomic_write_text(json.dumps(obj, indent=1, default=str), path)


def file_sha256(path) -> str:
    """The SHA-256 of a file, read in 4 MiB blocks (weight shards are gigabytes)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def read_json(path, what: str = "JSON file") -> dict:
    """A JSON file, or a KitError naming it (missing, unreadable, truncated or not JSON)."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise KitError(f"{path}: {what} not found") from None
    except OSError as e:
        raise os_error(path, e, "read") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise KitError(f"{path}: not a valid {what} ({e}); delete it to start again") from None


def append_jsonl(obj: dict, path) -> None:
    """Append one JSON line with a single write on an O_APPEND descriptor (whole lines, any process)."""
    path = Path(path)
    line = (json.dumps(obj, default=str) + "\n").encode()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
    except OSError as e:
        raise os_error(path, e) from e


def read_jsonl(path) -> list[dict]:
    """Every whole line of a JSON-lines file; a torn or garbled line is skipped with a warning."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    for i, line in enumerate(path.read_text(errors="replace").splitlines()):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            warnings.warn(f"{path}: line {i + 1} is not whole JSON (an interrupted write?); skipped")
    return out


def check_writable(folder) -> Path:
    """Create `folder` if needed and prove a file can be written there, before any long work starts."""
    folder = Path(folder).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-check.")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise os_error(folder, e, "write to the folder") from e
    return folder


# ---- environment -------------------------------------------------------------------------------------
def package_version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def git_commit(path=None) -> str | None:
    """HEAD of the git checkout holding `path` (default: this package); None outside a checkout."""
    cwd = Path(path or __file__).resolve()
    cwd = cwd if cwd.is_dir() else cwd.parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def environment(device=None) -> dict:
    """What produced a result: package versions, the git commit and the device."""
    dev = torch.device(device if device is not None else "cpu")
    versions = {"python": sys.version.split()[0], "torch": torch.__version__}
    versions.update({pkg: package_version(pkg) for pkg in ("timm", "transformers")})
    versions["iqa_kit"] = __version__
    return {"versions": versions, "git_commit": git_commit(), "device": f"{dev.type}: {device_name(dev)}"}
