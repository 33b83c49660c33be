"""A sweep over a pool of devices: one worker process per device, each claiming one run at a time.

    run_all(planned, device="cuda:0,cuda:1,cuda:2,cuda:3")  iqa-kit train/reproduce --devices cuda:0,...

The workers are spawned processes (CUDA does not survive a fork). Each walks the same list of runs in
order and trains the first one nobody has claimed (`runs.run_or_load(wait=False)`), so the runs spread
over the devices as they free up and no two workers ever train the same run (claims.py). The calling
process then loads every record (experiments.run_all); a run whose worker died is found with a stale
claim there, taken over and trained in the calling process, on the first device.

A worker that raises stops the pool: the others finish the run they are on, and the error is raised
here, naming the run and the device.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import queue
from pathlib import Path

import torch

from ..config.check import override
from ..config.fields import RunConfig
from ..data.cache import StoreCache
from ..system import KitError
from ..training.distributed import launched
from .records import data_digest, record_path, run_or_load


def parse_devices(spec: str | None) -> list[str]:
    """"cuda:0,cuda:1" -> ["cuda:0", "cuda:1"] ("cpu,cpu": two CPU workers); "cuda:all": every visible
    GPU; one name -> [name]; None or "" -> []."""
    names = [d.strip() for d in str(spec or "").split(",") if d.strip()]
    if names == ["cuda:all"]:
        n = torch.cuda.device_count()
        if not n:
            raise KitError("--devices cuda:all: no CUDA device is visible")
        names = [f"cuda:{i}" for i in range(n)]
    return names


def _label(cfg: RunConfig) -> str:
    test = f" -> {cfg.test_dataset}" if cfg.test_dataset else ""
    return f"{cfg.model.name} on {cfg.data.dataset}{test}, split {cfg.split_seed} ({cfg.key()})"


Job = tuple[RunConfig, object, object]       # a config with its manifest and (cross-dataset) test manifest


def _worker(jobs: list[Job], device: str, results_dir: str, threads: int, stop, errors) -> None:
    """Train, in order, every run of jobs that has no record and no live claim, on `device`."""
    torch.set_num_threads(threads)
    stores = StoreCache()                    # this worker's runs share their decoded images
    for cfg, manifest, test_manifest in jobs:
        if stop.is_set():
            return
        cfg = override(cfg, {"train.device": device})
        existed = record_path(cfg, results_dir, data_digest(manifest, test_manifest)).exists()
        try:
            rec = run_or_load(cfg, results_dir, manifest, test_manifest, progress=False, wait=False, stores=stores)
        except Exception as e:               # reported by the calling process, which stops the pool
            errors.put(f"{_label(cfg)} on {device}: {type(e).__name__}: {str(e).splitlines()[0]}")
            stop.set()
            return
        if rec is not None and not existed:
            srcc = (rec.get("final") or {}).get("srcc")
            print(f"[iqa-kit {device}] {_label(cfg)}: done in {rec['time_s']:.0f} s"
                  + (f", SRCC {srcc:.3f}" if srcc is not None else ""), flush=True)


def _first_error(errors) -> str | None:
    try:
        return errors.get_nowait()           # the workers have exited: what they put is in the pipe
    except queue.Empty:
        return None


def run_on_pool(jobs: list[Job], devices: list[str], results_dir) -> None:
    """Train the runs of jobs that have no record with one worker process per device (see above). The
    jobs carry their manifests (parsed once here, and a rehearsal's subsets), so workers parse nothing."""
    if launched():
        raise KitError("--devices: a pool of devices and torchrun do not mix; use one or the other")
    ctx = mp.get_context("spawn")
    stop, errors = ctx.Event(), ctx.Queue()
    threads = max(1, (os.cpu_count() or 1) // len(devices))
    procs = [ctx.Process(target=_worker, name=f"iqa-kit worker {d}",
                         args=(jobs, d, str(Path(results_dir)), threads, stop, errors)) for d in devices]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join()
    except BaseException:                    # e.g. an interrupted notebook: stop the workers too
        stop.set()
        for p in procs:
            p.terminate()
        raise
    crashed = [f"{p.name} (exit code {p.exitcode})" for p in procs if p.exitcode]
    error = _first_error(errors)
    if error:
        raise KitError(error)
    if crashed:
        print(f"[iqa-kit] {', '.join(crashed)} stopped; their unfinished runs are taken over here", flush=True)
