"""Memory-mapped store cache against the in-RAM store, on a LIVEFB-sized stand-in.

    python benchmarks/bench_cache.py [--n 40000] [--folder DIR] [--epochs 3] [--rounds 2] [--batch 32]

`--n` photo-like 500x500 JPEGs (bench_store.make_images; LIVEFB has 39,810 images of about that size)
are written once into `--folder` (default: a folder under the system temp dir, reused by later runs).
Each measurement runs in a fresh subprocess, so one mode's memory does not count in another's peak:
- build: decode every image into the cache file (`open_store(kind="disk")` on an empty cache);
- ram: `open_store(kind="ram")`, which reads the cache file into RAM;
- disk: `open_store(kind="disk")`, served through the memory map, touched pages unmapped every
  `--release-mib` (default `cache.RELEASE_BYTES`); disk, no unmapping: `release_bytes=None`.
An epoch is one random 224 crop (with flips) of every image, in shuffled batches as training draws them.
Every mode starts with the cache file evicted from the page cache (posix_fadvise DONTNEED on this file
only): "open s" for RAM is one cold sequential read of it, and the disk modes' first epoch reads from
disk. Then the disk modes read the file through once (an epoch of random crops reads only part of each
image), every mode runs one untimed warm-up epoch, and the warm epochs after that are compared. "major
faults" counts their reads from disk (0: the page cache was warm). Crops per CPU second are the fairer
comparison on a machine shared with other work.
Memory, sampled every MEMORY_EVERY batches over the epochs (maxima): RSS anon, what the process owns
(only freeing or a kill returns it: the figure that must stay under 2 GiB); RSS file, the mapped pages
of the store file (and libraries) that the kernel drops at will when memory is short; PSS, shared pages
divided among the processes that map them (what several workers on one store add up to); USS, pages no
other process maps. Peak RSS (VmHWM, reset through /proc/self/clear_refs after opening) is anon + file
and so overstates what a memory-mapped store costs.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from iqa_utils.data.cache import RELEASE_BYTES, open_store
from iqa_utils.data.manifest import Manifest
from iqa_utils.data.store import CropSampler
from bench_store import make_images, peak_memory

ROOT = Path(__file__).resolve().parent.parent
MODES = ("ram", "disk", "disk-keep")
MEMORY_EVERY = 16            # batches between two samples of /proc (smaps_rollup walks the mappings)
LABELS = {"ram": "in RAM (read from the cache)", "disk": "memory map", "disk-keep": "memory map, no unmapping"}


# ---- the data ------------------------------------------------------------------------------------------
def ensure_images(folder: Path, n: int, side: int) -> Manifest:
    """The JPEGs, written once; a marker written last tells a complete folder from an interrupted one."""
    marker = folder / "complete.json"
    if not (marker.exists() and json.loads(marker.read_text()) == {"n": n, "side": side}):
        folder.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        make_images(folder, n, side)
        marker.write_text(json.dumps({"n": n, "side": side}))
        print(f"wrote {n} JPEGs of {side}x{side} to {folder} in {time.perf_counter() - t0:.0f} s", flush=True)
    paths = sorted(str(p) for p in folder.glob("img*.jpg"))
    rows = [{"path": p, "label": float(i), "direction": "MOS", "ref": None, "distortion": None, "level": None}
            for i, p in enumerate(paths)]
    return Manifest("bench", folder, pd.DataFrame(rows))


# ---- one measurement (in a fresh process) --------------------------------------------------------------
def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (Linux >= 4.0)
        return True
    except OSError:
        return False


def _evict(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _read_through(path: Path) -> None:
    """Read the whole file once, so the page cache holds all of it (random crops touch only some pages)."""
    buf = bytearray(64 * 2**20)
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass


def _epoch(sampler: CropSampler, n: int, crop: int, batch: int, g: torch.Generator,
           peak: dict | None = None) -> tuple[float, float]:
    """Crops per wall-clock second and per CPU second (the machine may be shared) over one shuffled pass;
    `peak` (when given) is raised to the process's memory every MEMORY_EVERY batches."""
    perm = torch.randperm(n, generator=g)
    t0, c0 = time.perf_counter(), time.process_time()
    for i, k in enumerate(range(0, n, batch)):
        x = sampler.random_crops(perm[k:k + batch], crop, True, g)
        if peak is not None and i % MEMORY_EVERY == 0:
            peak.update(peak_memory(peak))      # with the batch alive, as during a training step
        del x  # a training step drops its batch before the next is cut
    return n / (time.perf_counter() - t0), n / (time.process_time() - c0)


def _build(m: Manifest, opts: dict) -> dict:
    for old in Path(opts["cache_dir"]).glob("*.u8"):
        old.unlink()
    t0 = time.perf_counter()
    store = open_store(m, kind="disk", **opts)
    return {"build_s": time.perf_counter() - t0, "disk": store.path.stat().st_size,
            "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def _epochs(mode: str, store, args) -> dict:
    """A first epoch (page cache cold for the disk modes), then the median of the warm epochs."""
    sampler, g = CropSampler(store), torch.Generator().manual_seed(0)
    out = {"reset": _reset_peak_rss(), "first": _epoch(sampler, len(store), args.crop, args.batch, g)[0]}
    if mode != "ram":
        _read_through(store.path)
    _epoch(sampler, len(store), args.crop, args.batch, g)  # warm-up: maps pages, sizes malloc's pools
    faults, peak = resource.getrusage(resource.RUSAGE_SELF).ru_majflt, {}
    warm = [_epoch(sampler, len(store), args.crop, args.batch, g, peak) for _ in range(args.epochs)]
    out["warm"], out["warm_cpu"] = (statistics.median(w[k] for w in warm) for k in (0, 1))
    out["majflt"] = resource.getrusage(resource.RUSAGE_SELF).ru_majflt - faults
    out["peak_rss"] = _status_kib("VmHWM") * 1024
    return {**out, **{f"peak_{k}": v for k, v in peak_memory(peak).items()}}


def measure(mode: str, args) -> dict:
    torch.set_num_threads(args.threads)
    m = ensure_images(Path(args.folder), args.n, args.side)
    opts = {"resize_mode": "native", "min_side": args.crop, "cache_dir": args.cache_dir, "progress": False}
    if mode == "build":
        return _build(m, opts)
    for path in Path(args.cache_dir).glob("*.u8"):
        _evict(path)  # every mode opens with a cold page cache
    t0 = time.perf_counter()
    release = None if mode == "disk-keep" else int(args.release_mib * 2**20)
    store = open_store(m, kind="ram" if mode == "ram" else "disk", release_bytes=release, **opts)
    return {"open_s": time.perf_counter() - t0, **_epochs(mode, store, args)}


def run_child(mode: str, args) -> dict:
    """`measure` in a fresh interpreter: its peak RSS is its own."""
    cmd = [sys.executable, __file__, "--child", mode] + [f"--{k.replace('_', '-')}={v}" for k, v in
                                                         vars(args).items() if k != "child"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"{mode} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---- the table -----------------------------------------------------------------------------------------
def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def report(args, build: dict, runs: dict) -> None:
    def med(mode, key):
        return statistics.median(r[key] for r in runs[mode])

    print(f"\n{args.n} JPEGs of {args.side}x{args.side} stored at native size, random {args.crop} crops + flips, "
          f"batch {args.batch}, torch threads {args.threads}, {os.cpu_count()} CPUs; median of {args.rounds} "
          f"fresh processes x {args.epochs} warm epochs; unmapping every {args.release_mib:.0f} MiB")
    print(f"cache build (decode + write): {build['build_s']:.1f} s, {_gib(build['disk'])} on disk, "
          f"peak RSS {_gib(build['peak_rss'])}\n")
    print("| store | open s (cold) | first epoch crops/s | warm crops/s | warm crops/CPU-s | vs RAM (CPU) "
          "| RSS anon (own) | RSS file (droppable) | PSS | USS | peak RSS (anon + file) | major faults warm |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for mode in MODES:
        cells = [f"{med(mode, 'open_s'):.1f}", f"{med(mode, 'first'):.0f}", f"{med(mode, 'warm'):.0f}",
                 f"{med(mode, 'warm_cpu'):.0f}", f"{med(mode, 'warm_cpu') / med('ram', 'warm_cpu'):.2f}",
                 *(_gib(med(mode, f"peak_{k}")) for k in ("anon", "file", "pss", "uss")),
                 _gib(med(mode, "peak_rss")), str(max(r["majflt"] for r in runs[mode]))]
        print(f"| {LABELS[mode]} | " + " | ".join(cells) + " |")
    own = max(med(mode, "peak_anon") for mode in ("disk", "disk-keep"))
    print(f"\nmemory-mapped store: the process's own memory (RSS anon) peaks at {_gib(own)} "
          f"({'under' if own < 2 * 2**30 else 'OVER'} 2 GiB)")
    if not all(r["reset"] for rs in runs.values() for r in rs):
        print("(peak RSS could not be reset after opening: it includes the opening)")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=40000)
    ap.add_argument("--side", type=int, default=500)
    ap.add_argument("--folder", default=None, help="where the JPEGs are written once (default: temp dir)")
    ap.add_argument("--cache-dir", default=None, help="the store cache folder (default: FOLDER/cache)")
    ap.add_argument("--crop", type=int, default=224)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=3, help="warm epochs timed per run")
    ap.add_argument("--rounds", type=int, default=2, help="fresh processes per mode, interleaved")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--release-mib", type=float, default=RELEASE_BYTES / 2**20,
                    help="memory map: unmap touched pages after serving this many MiB")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.folder = args.folder or str(Path(tempfile.gettempdir()) / f"iqa-kit-bench-cache-{args.n}-{args.side}")
    args.cache_dir = args.cache_dir or str(Path(args.folder) / "cache")
    if args.child:
        print(json.dumps(measure(args.child, args)))
        return
    ensure_images(Path(args.folder), args.n, args.side)
    build = run_child("build", args)
    runs = {mode: [] for mode in MODES}
    for _ in range(args.rounds):  # interleaved, so load from other processes hits every mode alike
        for mode in MODES:
            runs[mode].append(run_child(mode, args))
    report(args, build, runs)


if __name__ == "__main__":
    main()
