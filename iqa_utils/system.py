"""The bottom floor: the kit's error type, safe file writes, versions and the git commit.

Nothing here imports another module of the package, so every other module may import it, and nothing
here imports torch, so the command line answers `--help` and argument errors at once (torch's side of
the floor, devices and precision, is `devices.py`).

Every file the kit writes goes through `atomic_write` (or the helpers built on it): the content goes to
a temporary file with a unique name beside the target and is renamed over it only once complete, so an
interruption, a full disk or a second process writing the same file never leaves a partial file behind.
The file is created with the permissions the user's umask allows (not the 0600 of a bare temporary
file), so results can be shared on a multi-user server. JSON-lines logs are appended one whole line per
`write` call on an O_APPEND descriptor; a reader skips a torn last line (a crash mid-append) with a
warning instead of failing.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import tempfile
import warnings
from importlib import metadata
from pathlib import Path
from typing import Callable



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


# ---- files -----------------------------------------------------------------------------------------
def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def os_error(path, e: OSError, doing: str = "write") -> KitError:
    """An OSError as a KitError naming the file; a full disk or a read-only folder says so."""
    if e.errno == errno.ENOSPC:
        why = "no space left on the device (the disk is full)"
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


def atomic_write_bytes(data: bytes, path) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


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
