"""Decoded stores that outlive the process: a uint8 cache file on disk, read through a memory map.

`open_store` is the one entry point: it serves a manifest's pixels from the GPU, from RAM or from a
memory-mapped cache file, choosing from the decoded size (known before decoding, from the image headers
and `working_size`) and the free memory, and says which and why (`store.kind`, `store.reason`). Its
images come from one decode loop (`decode_images`), whether they go into a cache file, RAM or the GPU.
Reuse across runs is explicit: whoever runs several runs holds a `StoreCache` and passes it down
(`open_store(stores=)`), so a sweep decodes a dataset once; the process keeps no store of its own.

File format (one file per dataset file list and resize settings, `<name>-<mode>-<digest>.u8`):
every image's uint8 (3, H, W) pixels back to back from byte 0, then a JSON index (format version, source
fingerprint, shapes, a CRC32 per image), then a 16-byte trailer: the index length (little-endian uint64)
and the magic b"IQASTOR1". numpy alone reads it: `np.memmap(path, np.uint8, "r", shape=(data_bytes,))`.
Why this format:
- One file: pixels and index appear together in one atomic rename (`system.atomic_write`), so a kill
  mid-build leaves only a uniquely named temporary file, never something mistaken for a cache, and two
  processes building at once each rename a whole copy. A truncated file has lost its trailer.
- A raw memory map needs no dependency, and the OS page cache is the cache: shared by processes, warm
  across runs, evicted under memory pressure instead of killing the kernel. It works on any file system
  that supports mmap (Colab's Google Drive mount is a FUSE file system that does; not tested here).
- HDF5 (h5py) reads through its own chunk cache and copies (no view of variable-size images) and a
  killed writer can corrupt the whole file; zarr stores a file per chunk (tens of thousands of small
  files: slow on Drive); safetensors mmaps too, but puts its header first and carries no checksums.
The map is opened read-only and shared (mmap mode "r"): a copy-on-write map (mode "c", which PyTorch
would accept without warning) is charged to the commit limit, so a 20 GB cache fails with ENOMEM on a
12 GB Colab machine. PyTorch's one "not writable" warning is silenced where the map is wrapped; the kit
never writes into store images (a write would end the process with a segmentation fault; it could never
reach the file).
Touched pages of a map count in the process's RSS although the kernel can drop them at will; to keep
RSS bounded the store unmaps them (madvise DONTNEED, the page cache keeps them) every `release_bytes`
served (default `RELEASE_BYTES`). That costs page faults: on a 2-core VM, about 20-30% of the CPU time
of cutting crops (benchmarks/bench_cache.py); `release_bytes=None` serves as fast as RAM once all pages
are mapped, and RSS then counts the mapped page cache, which the kernel reclaims as it needs.

Reuse: the file name hashes the dataset name, each image's path relative to the dataset root and the
resize settings; the index records each file's size and modification time and the decoder (the source of
`decode_image` and `working_size`, the Pillow version). A cache whose sources or decoder changed is
rebuilt in place. A corrupt cache (no trailer, garbled index, wrong size, bad checksum of the first or
last image) is rebuilt with a warning naming the file; `read_index` alone raises `CacheError`, and
`read_index(path, verify=True)` checks every image's checksum (it reads the whole file, so opening
does not: damage inside the pixel data of a file of the right size goes unseen until then).
"""
from __future__ import annotations

import hashlib
import inspect
import json
import mmap
import os
import re
import shutil
import struct
import time
import warnings
import zlib
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import PIL
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..system import CACHE_ENV, KitError, atomic_write, cache_dir
from .manifest import DatasetError, Manifest
from .store import ImageStore, decode_image, resize_settings, working_size

try:  # optional: more portable than /proc/meminfo
    import psutil
except ImportError:  # pragma: no cover - depends on the machine
    psutil = None

FORMAT_VERSION = 1
MAGIC = b"IQASTOR1"
TRAILER = struct.Struct("<Q8s")          # index length, magic
RELEASE_BYTES = 512 * 2**20              # unmap the touched pages after serving this many image bytes
STALE_TEMP_S = 3600                      # a build's temp file unchanged this long was left by a killed build
KINDS = ("auto", "gpu", "ram", "disk")
LOCAL_STORES_ENV = "IQA_KIT_LOCAL_STORES"   # a fast local folder for copies of the cache files (Colab)
DECODER_CODE = (decode_image, working_size)  # their code is part of the cache key (captured at import)


class CacheError(KitError):
    """A store cache file is unreadable or inconsistent; the message names the file."""


def default_cache_dir() -> Path:
    """$IQA_KIT_CACHE/stores, else ~/.cache/iqa-kit/stores."""
    return cache_dir("stores")


def local_copy(path: Path, local_dir) -> Path:
    """The cache file copied to a fast local folder, once: Colab keeps the cache on Google Drive across
    sessions, but reading crops through Drive's FUSE mount is slow, so each session maps a local copy.
    The copy is reused while its size and modification time match the original's (a rebuilt cache has a
    new time); it is written whole or not at all (`atomic_write`)."""
    local = Path(local_dir).expanduser() / path.name
    if local.resolve() == path.resolve():
        return path
    src = path.stat()
    if local.exists() and (local.stat().st_size, local.stat().st_mtime_ns) == (src.st_size, src.st_mtime_ns):
        return local
    local.parent.mkdir(parents=True, exist_ok=True)
    _check_free_space(local.parent, src.st_size)

    def write(tmp):
        shutil.copyfile(path, tmp)
        os.utime(tmp, ns=(src.st_atime_ns, src.st_mtime_ns))   # the rename keeps it: the reuse test above
    atomic_write(local, write)
    return local


def _gib(n: float) -> str:
    """Bytes in words: GiB, or MiB below one GiB."""
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


# ---- threads: file system calls and decoding (PIL and os.stat release the GIL) ---------------------
def _ordered(fn: Callable, items: Iterable, workers: int = 8) -> Iterator:
    """fn over items in threads, results in order, at most 4 x workers in flight (bounded memory)."""
    pool = ThreadPoolExecutor(max(1, workers))
    pending: deque = deque()
    try:
        for x in items:
            pending.append(pool.submit(fn, x))
            if len(pending) >= 4 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _chunked_map(fn: Callable, items: Sequence, chunk: int = 256) -> list:
    """fn over many cheap items (a stat, a header): chunks, so thread overhead stays small."""
    chunks = [items[k:k + chunk] for k in range(0, len(items), chunk)]
    return [y for ys in _ordered(lambda c: [fn(x) for x in c], chunks, workers=16) for y in ys]


def _stat(path: str) -> list[int]:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise DatasetError(f"image file is missing: {path}") from None
    return [st.st_size, st.st_mtime_ns]


def _header_size(path: str) -> tuple[int, int]:
    """(H, W) from the image header (PIL reads pixels lazily)."""
    try:
        with Image.open(path) as im:
            return im.height, im.width
    except FileNotFoundError:
        raise DatasetError(f"image file is missing: {path}") from None
    except Exception as e:  # PIL raises several types for unknown files
        raise DatasetError(f"cannot read image {path}: {type(e).__name__}: {e}") from None


def decoded_nbytes(paths: Sequence[str], size: dict) -> int:
    """Bytes the decoded uint8 store will take, from the image headers alone."""
    return _offsets([working_size(h, w, **size) for h, w in _chunked_map(_header_size, paths)])[-1]


def _offsets(shapes: Sequence) -> list[int]:
    """Where each (3, H, W) uint8 image starts when they lie back to back, and (last) where they end."""
    return np.cumsum([0] + [3 * h * w for h, w in shapes]).tolist()


def decode_images(paths: Sequence[str], size: dict, progress: bool, desc: str) -> Iterator[torch.Tensor]:
    """The one decode loop: each file as uint8 (3, H, W) at its working size, in order, decoded in threads
    (PIL releases the GIL). Both a cache file's build and a store decoded into RAM or onto the GPU read
    their pixels from here, so they hold the same bytes."""
    size_fn = partial(working_size, **size)
    images = _ordered(lambda p: decode_image(p, size_fn), paths, workers=min(8, os.cpu_count() or 1))
    return tqdm(images, total=len(paths), desc=desc, unit="img", disable=not progress)


# ---- the cache file ----------------------------------------------------------------------------------
def decoder_tag() -> str:
    """Changes whenever decoding could give other pixels: the kit's decode code or Pillow's version."""
    try:
        src = "".join(inspect.getsource(f) for f in DECODER_CODE).encode()
    except (OSError, TypeError):  # no source shipped: the bytecode changes with the code too
        src = b"".join(f.__code__.co_code for f in DECODER_CODE)
    return f"pillow {PIL.__version__}, code {hashlib.sha256(src).hexdigest()[:12]}"


@dataclass
class CacheFile:
    """Where a manifest's cache lives and what it must have been built from."""
    path: Path
    slot: str            # hash of the name, the relative paths and the resize settings
    expect: dict         # what the index must record for the cache to be current
    problem: str | None = None
    corrupt: bool = False

    @classmethod
    def locate(cls, manifest: Manifest, resize_mode: str, size: dict, cache_dir=None) -> "CacheFile":
        paths = [str(p) for p in manifest.df.path]
        files = [Path(os.path.relpath(p, manifest.root)).as_posix() for p in paths]
        key = json.dumps([FORMAT_VERSION, manifest.name, resize_mode, size, files], default=list)
        slot = hashlib.sha256(key.encode()).hexdigest()
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", manifest.name)
        path = Path(cache_dir or default_cache_dir()).expanduser() / f"{name}-{resize_mode}-{slot[:16]}.u8"
        expect = {"format": FORMAT_VERSION, "slot": slot, "dataset": manifest.name, "resize_mode": resize_mode,
                  "size": size, "files": files, "decoder": decoder_tag(), "sources": _chunked_map(_stat, paths)}
        return cls(path, slot, expect)

    def stale_because(self, index: dict) -> str | None:
        """Why a sound cache no longer matches its sources (None when current)."""
        if index["decoder"] != self.expect["decoder"]:
            return f"the decoder changed ({index['decoder']} -> {self.expect['decoder']})"
        changed = [f for f, a, b in zip(self.expect["files"], self.expect["sources"], index["sources"]) if a != b]
        if changed:
            more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
            return f"{len(changed)} source images changed since it was built ({', '.join(changed[:3])}{more})"
        return None

    def current_index(self) -> dict | None:
        """The index of a sound, current cache; else None, with `problem` (and `corrupt`) saying why."""
        self.problem, self.corrupt = None, False
        if not self.path.exists():
            return None
        try:
            index = read_index(self.path, self.slot)
        except CacheError as e:
            self.problem, self.corrupt = str(e), True
            return None
        why = self.stale_because(index)
        if why:
            self.problem = f"store cache {self.path} is out of date: {why}"
        return None if why else index

    def report(self, action: str, progress: bool) -> None:
        """Say why the cache file is not used as it is (a warning when corrupt: never silent)."""
        if self.corrupt:
            warnings.warn(f"{self.problem}; {action}", stacklevel=4)
        elif self.problem and progress:
            print(f"{self.problem}; {action}")

    def build(self, paths: Sequence[str], nbytes: int, progress: bool = True) -> dict:
        """Decode every image into a new cache file, renamed into place only once complete."""
        _check_free_space(self.path.parent, nbytes)
        _remove_stale_temps(self.path)
        out: dict = {}
        desc = f"caching {self.expect['dataset']}"
        atomic_write(self.path, lambda tmp: out.update(_write_cache(tmp, self.expect, paths, progress, desc)))
        return out


def _write_cache(tmp: str, expect: dict, paths: Sequence[str], progress: bool, desc: str) -> dict:
    shapes, crcs = [], []
    with open(tmp, "wb") as f:
        for im in decode_images(paths, expect["size"], progress, desc):
            px = im.numpy()
            f.write(px.data)
            shapes.append(list(px.shape[1:]))
            crcs.append(zlib.crc32(px))
        index = dict(expect, shapes=shapes, crc32=crcs, data_bytes=_offsets(shapes)[-1])
        raw = json.dumps(index, separators=(",", ":"), default=list).encode()
        f.write(raw + TRAILER.pack(len(raw), MAGIC))
        f.flush()
        os.fsync(f.fileno())  # a cache renamed into place must hold its data even after a crash
    return index


def _check_free_space(folder: Path, nbytes: int) -> None:
    """Fail before a long build, not after it, when the cache cannot fit."""
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if nbytes > free:
        raise KitError(f"{folder}: the store cache needs {_gib(nbytes)} and only {_gib(free)} is free; "
                       f"pass cache_dir or set {CACHE_ENV} to a bigger disk")


def _remove_stale_temps(path: Path) -> None:
    """Temp files of builds that were killed (a live build keeps writing, so its mtime stays fresh)."""
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        try:
            if time.time() - tmp.stat().st_mtime > STALE_TEMP_S:
                tmp.unlink()
        except OSError:
            pass  # gone already, or another process's: harmless


def read_index(path, slot: str | None = None, verify: bool = False) -> dict:
    """The index of a cache file after checking that it is whole; CacheError naming the file if not.

    The checksums of the first and last images are checked; of every image with `verify` (reads it all).
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            index = _parse_index(f, os.fstat(f.fileno()).st_size)
            _check_index(f, index, slot, verify)
    except OSError as e:
        raise CacheError(f"{path}: cannot read the store cache ({e.strerror or e})") from None
    except (CacheError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise CacheError(f"{path}: corrupt store cache ({e})") from None
    return index


def _parse_index(f, size: int) -> dict:
    if size < TRAILER.size:
        raise CacheError("shorter than its trailer")
    f.seek(size - TRAILER.size)
    n, magic = TRAILER.unpack(f.read(TRAILER.size))
    if magic != MAGIC or n > size - TRAILER.size:
        raise CacheError("no trailer: truncated, or not a store cache")
    f.seek(size - TRAILER.size - n)
    index = json.loads(f.read(n))
    if index.get("format") != FORMAT_VERSION:
        raise CacheError(f"format {index.get('format')!r}, expected {FORMAT_VERSION}")
    if index["data_bytes"] + n + TRAILER.size != size:
        raise CacheError(f"size {size} bytes does not match its index")
    return index


def _check_index(f, index: dict, slot: str | None, verify: bool) -> None:
    """Shapes add up, the index is this slot's, and images have their checksums."""
    shapes = index["shapes"]
    if not (len(shapes) == len(index["crc32"]) == len(index["files"]) == len(index["sources"])):
        raise CacheError("index lists differ in length")
    offsets = _offsets(shapes)
    if offsets[-1] != index["data_bytes"]:
        raise CacheError("image shapes do not add up to the data size")
    if slot is not None and index["slot"] != slot:
        raise CacheError("its index belongs to another dataset or setting")
    for i in range(len(shapes)) if verify else sorted({0, len(shapes) - 1} if shapes else ()):
        f.seek(offsets[i])
        if zlib.crc32(f.read(offsets[i + 1] - offsets[i])) != index["crc32"][i]:
            raise CacheError(f"checksum mismatch in image {i} ({index['files'][i]})")


# ---- serving from the map ----------------------------------------------------------------------------
class MappedImages(Sequence):
    """`images[i]`: a uint8 (3, H, W) view of a read-only shared memory map of a cache file (no copy)."""

    def __init__(self, path, shapes: Sequence, data_bytes: int, release_bytes: int | None = RELEASE_BYTES):
        with open(path, "rb") as f:
            self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        with warnings.catch_warnings():  # read-only on purpose: see the module docstring
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            self._flat = torch.from_numpy(np.frombuffer(self._mm, np.uint8, count=data_bytes))
        self._shapes = [tuple(s) for s in shapes]
        self._offsets = _offsets(self._shapes)
        self.release_bytes, self._served, self.releases = release_bytes, 0, 0

    def __len__(self) -> int:
        return len(self._shapes)

    def __getitem__(self, i: int) -> torch.Tensor:
        h, w = self._shapes[i]
        off = self._offsets[i % len(self)]
        self._served += 3 * h * w
        if self.release_bytes is not None and self._served > self.release_bytes:
            self.release()
        return self._flat[off:off + 3 * h * w].view(3, h, w)

    def __iter__(self) -> Iterator[torch.Tensor]:
        return (self[i] for i in range(len(self)))

    def release(self) -> None:
        """Unmap the touched pages (RSS drops; the page cache keeps them, so re-reading is a minor fault)."""
        self._served = 0
        if hasattr(mmap, "MADV_DONTNEED"):
            self._mm.madvise(mmap.MADV_DONTNEED)
            self.releases += 1


class MappedImageStore(ImageStore):
    """An ImageStore whose pixels stay in the cache file; `to("cuda")` copies them to the GPU."""

    def __init__(self, path, index: dict, labels, paths: Sequence[str] = (),
                 release_bytes: int | None = RELEASE_BYTES):
        images = MappedImages(path, index["shapes"], index["data_bytes"], release_bytes)
        super().__init__(images, labels, paths, sizes=index["shapes"])
        self.path = Path(path)

    @property
    def kind(self) -> str:
        return "disk" if isinstance(self.images, MappedImages) else super().kind

    def __repr__(self) -> str:
        if self.kind != "disk":
            return super().__repr__()
        return f"MappedImageStore({len(self)} images, {_gib(self.nbytes)} uint8, mapped from {self.path})"


def load_into_ram(path, index: dict, labels, paths: Sequence[str] = ()) -> ImageStore:
    """A whole cache file read into RAM in one sequential read (much faster than decoding again)."""
    flat = torch.from_numpy(np.fromfile(path, np.uint8, count=index["data_bytes"]))
    offsets = _offsets(index["shapes"])
    images = [flat[o:o + 3 * h * w].view(3, h, w) for o, (h, w) in zip(offsets, index["shapes"])]
    return ImageStore(images, labels, paths, sizes=index["shapes"])


# ---- choosing where the pixels live ------------------------------------------------------------------
def ram_available(meminfo="/proc/meminfo", cgroup="/sys/fs/cgroup") -> int:
    """Bytes of RAM a new allocation can take: psutil's or the kernel's MemAvailable, capped by a
    cgroup v2 memory limit (containers see the host's meminfo)."""
    avail = psutil.virtual_memory().available if psutil is not None else _meminfo_available(meminfo)
    try:
        limit = Path(cgroup, "memory.max").read_text().strip()
        if limit != "max":
            used = int(Path(cgroup, "memory.current").read_text())
            stat = dict(line.split() for line in Path(cgroup, "memory.stat").read_text().splitlines())
            avail = min(avail, int(limit) - used + int(stat.get("inactive_file", 0)))
    except (OSError, ValueError):
        pass  # no cgroup v2 limit here
    return max(0, avail)


def _meminfo_available(meminfo) -> int:
    try:
        for line in Path(meminfo).read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


@dataclass
class FreeMemory:
    """Free memory and the shares of it a store may take (injectable: tests pass their own)."""
    ram_available: int
    gpu_free: int = 0
    ram_share: float = 1 / 4
    gpu_share: float = 1 / 3

    @classmethod
    def measure(cls, device) -> "FreeMemory":
        device = torch.device(device)
        gpu = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else 0
        return cls(ram_available(), gpu)

    def choose(self, nbytes: int, device) -> tuple[str, str]:
        """("gpu" | "ram" | "disk", the reason in words)."""
        device, px = torch.device(device), f"{_gib(nbytes)} of pixels"
        gpu = f"1/{round(1 / self.gpu_share)} of the {_gib(self.gpu_free)} free on {device}"
        ram = f"1/{round(1 / self.ram_share)} of the {_gib(self.ram_available)} of RAM available"
        if device.type == "cuda" and nbytes < self.gpu_share * self.gpu_free:
            return "gpu", f"{px} < {gpu}"
        if nbytes < self.ram_share * self.ram_available:
            return "ram", f"{px} < {ram}"
        over = f"{gpu} and {ram}" if device.type == "cuda" else ram
        return "disk", f"{px} > {over}"


# ---- the entry point ---------------------------------------------------------------------------------
class StoreCache:
    """Open stores kept for reuse by whoever runs several runs (`run_all`, a pool worker, the figures'
    context), passed down to `open_store(stores=)`: a sweep over seeds or models then decodes (or maps) each
    dataset once. It holds the `keep` stores used last (a train and a test set); dropping it frees them.
    Nothing is kept by the process itself: without one, every `open_store` opens anew."""

    def __init__(self, keep: int = 2):
        self.keep, self.opened, self._stores = keep, 0, OrderedDict()

    def __len__(self) -> int:
        return len(self._stores)

    def get(self, key) -> ImageStore | None:
        if key in self._stores:
            self._stores.move_to_end(key)
        return self._stores.get(key)

    def put(self, key, store: ImageStore) -> None:
        self._stores[key] = store
        self.opened += 1
        while len(self._stores) > self.keep:
            self._stores.popitem(last=False)


def open_store(manifest: Manifest, *, resize_mode: str = "keep_aspect", max_side: int | None = None,
               min_side: int | None = 224, device="cpu", kind: str = "auto", cache_dir=None,
               progress: bool = True, free: FreeMemory | None = None,
               release_bytes: int | None = RELEASE_BYTES, local_dir=None,
               stores: StoreCache | None = None) -> ImageStore:
    """The manifest's decoded images on the GPU, in RAM or memory-mapped from a cache file on disk: the
    kit's one way to open a store.

    kind "auto" picks the GPU (CUDA `device` only) when the pixels take under a third of its free memory,
    RAM when under a quarter of the available RAM, else the disk cache. "disk" builds the cache when it is
    absent, stale or corrupt; "ram" and "gpu" read a current cache when there is one, else decode
    (straight to the GPU, image by image, for "gpu"). Pixels are identical whichever the kind; "ram" and
    "disk" stores stay on the CPU whatever `device` is (`CropSampler(store, device)` moves each batch).
    The store says which it is and why in `store.kind` and `store.reason` (printed as one line when
    progress). `free` replaces the measured free memory (tests, or a machine shared with others).
    `release_bytes`: a "disk" store unmaps the pages it touched after serving this many bytes, so its
    RSS stays bounded (None: never; faster, see the module docstring).
    `local_dir` (default $IQA_KIT_LOCAL_STORES; set by a notebook's `setup(drive_dir=...)` on Colab): a
    "disk" store maps a copy of its cache file made there once (`local_copy`), not the file itself.
    `stores`: a StoreCache that returns the store it holds for the same data and options (else keeps the
    one opened here), so runs that share data share their store.
    """
    local_dir = local_dir or os.environ.get(LOCAL_STORES_ENV)
    key = (manifest.name, manifest.digest(), resize_mode, max_side, min_side, str(torch.device(device)), kind,
           str(cache_dir), release_bytes, str(local_dir)) if stores is not None else None
    store = stores.get(key) if stores is not None else None
    if store is not None:
        if progress:
            print(f"store {manifest.name}: {store.kind}, reused ({store.reason})")
        return store
    store = _open(manifest, resize_mode=resize_mode, max_side=max_side, min_side=min_side, device=device,
                  kind=kind, cache_dir=cache_dir, progress=progress, free=free,
                  release_bytes=release_bytes, local_dir=local_dir)
    if stores is not None:
        stores.put(key, store)
    return store


def _open(manifest: Manifest, *, resize_mode: str, max_side: int | None, min_side: int | None, device,
          kind: str, cache_dir, progress: bool, free: FreeMemory | None, release_bytes: int | None,
          local_dir) -> ImageStore:
    """open_store without the reuse: choose the kind, then serve it."""
    if kind not in KINDS:
        raise ValueError(f"unknown store kind {kind!r}; choose one of {KINDS}")
    device = torch.device(device)
    if kind == "gpu" and device.type != "cuda":
        raise ValueError(f"kind='gpu' needs a CUDA device, not {device}")
    size = resize_settings(manifest, resize_mode, max_side, min_side)
    cache = CacheFile.locate(manifest, resize_mode, size, cache_dir)
    index = cache.current_index()
    nbytes = index["data_bytes"] if index else decoded_nbytes([str(p) for p in manifest.df.path], size)
    if kind == "auto":
        kind, reason = (free or FreeMemory.measure(device)).choose(nbytes, device)
    else:
        reason = f"kind={kind!r} asked for, {_gib(nbytes)} of pixels"
    store, how = _serve(kind, manifest, cache, index, nbytes=nbytes, size=size, device=device,
                        release_bytes=release_bytes, progress=progress, local_dir=local_dir)
    store.reason = f"{reason}; {how}"
    if progress:
        print(f"store {manifest.name}: {store.kind} ({store.reason})")
    return store


def _serve(kind: str, manifest: Manifest, cache: CacheFile, index: dict | None, *, nbytes: int, size: dict,
           device: torch.device, release_bytes: int | None, progress: bool,
           local_dir=None) -> tuple[ImageStore, str]:
    """The store of the chosen kind and how its pixels were obtained."""
    labels = torch.from_numpy(manifest.df.label.to_numpy(dtype=np.float64).copy())
    paths = [str(p) for p in manifest.df.path]
    if kind == "disk":
        how = f"cache {cache.path} reused"
        if index is None:
            cache.report("rebuilding it", progress)
            index, how = cache.build(paths, nbytes, progress), f"cache {cache.path} built"
        path = local_copy(cache.path, local_dir) if local_dir else cache.path
        how += f", mapped from its local copy {path}" if path != cache.path else ""
        return MappedImageStore(path, index, labels, paths, release_bytes), how
    cache.report("decoding instead", progress)
    if index is not None:
        if kind == "ram":
            return load_into_ram(cache.path, index, labels, paths), f"read from cache {cache.path}"
        return MappedImageStore(cache.path, index, labels, paths).to(device), f"copied from cache {cache.path}"
    images = decode_images(paths, size, progress, f"decoding {manifest.name}")
    if kind == "gpu":  # image by image, so RAM never holds the whole set
        images = (im.to(device) for im in images)
    return ImageStore(list(images), labels, paths), "decoded"
