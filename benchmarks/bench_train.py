"""Training and evaluation throughput of DEIQT, CSFIQA and LML-IQA through the engine's own step.

    python benchmarks/bench_train.py --size tiny                               # this CPU, in minutes
    python benchmarks/bench_train.py --device cuda --size full --dataset KonIQ-10k [--compile] [--sync-debug]

One row per model and precision:
  train crops/s    end to end: engine.optimize_step on the global batch, with the kit's data path (crops cut
                   from the uint8 ImageStore by the CropSampler, on the GPU when the store fits there), LR,
                   clipping, AdamW (fused on CUDA), EMA hooks
  ceiling crops/s  the same optimize_step fed from tensors already on the device (the sampler answers every
                   call with its first step's crops): the model-only ceiling
  ratio            end to end / ceiling (target for DEIQT at 224, global batch 512, one H100: >= 0.90)
                   (both: the best of --repeat blocks of --steps steps, the two measures alternated)
  eval crops/s     evaluation.predict_rows on the test crops, data path included
  peak MiB         torch.cuda.max_memory_allocated over the timed steps (n/a on the CPU)
  est. peak MiB    (--memory) the kit's estimate for the same step (costs.step_memory: bytes saved for
                   backward per crop at two small batches + weights, gradients, AdamW state), MiB/crop its slope
  GMACs            forward MACs per crop (costs.count_macs, the model's eval branch)
  % bf16 peak      achieved share of the device's dense bf16 tensor FLOP/s, with training FLOPs per crop
                   = 3 (forward + backward) x 2 x GMACs: a lower bound for CSFIQA's crop mode and LML-IQA,
                   whose extra views and teacher passes are not counted. n/a on CPUs and unknown GPUs.

Images: random smooth JPEGs at KonIQ-10k's working resolution (512x384; 160x128 for --size tiny).
--size full builds the paper-size models with random weights (nothing downloaded: machines without internet
work); CSFIQA's LLaMA-7B layer is a random bf16 layer of the real shape (csfiqa.ic_weights="random") unless
--ic-weights points at the checkpoint.
--sync-debug (CUDA): torch.cuda.set_sync_debug_mode("warn") during the timed steps: every operation that
makes the host wait for the GPU prints a warning (there should be none).
"""
from __future__ import annotations

import argparse
import re
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from iqa_utils.config.check import make_config
from iqa_utils.data.cache import open_store
from iqa_utils.data.manifest import Manifest
from iqa_utils.data.splits import make_split
from iqa_utils.devices import Precision, device_name, resolve_device
from iqa_utils.models.base import TestCrops
from iqa_utils.models.costs import MEASURE_BATCHES, count_macs, peak_bytes, step_memory
from iqa_utils.training import engine
from iqa_utils.training.evaluation import predict_rows
from iqa_utils.training.optim import global_batch_for

# dense (no sparsity) tensor-core TFLOP/s in bf16, matched against torch.cuda.get_device_name in order;
# T4 and V100 have no bf16: their fp16 figure
PEAK_TFLOPS = [(r"H200", 989.4), (r"H100.*PCIe", 756.5), (r"H100 NVL", 835.5), (r"H100", 989.4),
               (r"A100", 312.0), (r"L40S", 362.1), (r"\bL4\b", 121.0), (r"\bA10\b", 125.0),
               (r"\bT4\b", 65.0), (r"V100", 125.0)]
MODELS = {"deiqt": "DEIQT", "csfiqa": "CSFIQA", "lmliqa": "LML-IQA"}


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((tf * 1e12 for pattern, tf in PEAK_TFLOPS if re.search(pattern, name)), None)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_manifest(folder: Path, n: int, hw: tuple[int, int], name: str) -> Manifest:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        arr = rng.integers(0, 256, (hw[0] // 8, hw[1] // 8, 3), dtype=np.uint8)
        path = folder / f"{i:04d}.jpg"
        Image.fromarray(arr).resize((hw[1], hw[0]), Image.BILINEAR).save(path, quality=90)
        rows.append({"path": str(path), "label": float(rng.uniform(0, 100)), "direction": "MOS", "ref": None,
                     "distortion": None, "level": None})
    return Manifest(name, folder, pd.DataFrame(rows), split_unit="image", label_range=(0.0, 100.0))


class FirstAnswers:
    """A CropSampler that answers each kind of call with its first result: crops already on the device."""

    def __init__(self, sampler):
        self.sampler, self.cache = sampler, {}

    def __getattr__(self, name):
        fn = getattr(self.sampler, name)

        def first(idx, *args, **kw):
            key = (name, len(idx), args, tuple((k, v) for k, v in sorted(kw.items()) if k != "generator"))
            if key not in self.cache:
                self.cache[key] = fn(idx, *args, **kw)
            return self.cache[key]
        return first


def timed_steps(run, batches, sync_debug: bool = False) -> float:
    """Seconds per optimizer step over `batches`."""
    sync(run.device)
    if sync_debug:
        torch.cuda.set_sync_debug_mode("warn")
    t0 = time.perf_counter()
    for s, idx in enumerate(batches):
        engine.optimize_step(run, idx, s)
    sync(run.device)
    if sync_debug:
        torch.cuda.set_sync_debug_mode("default")
    return (time.perf_counter() - t0) / len(batches)


def train_rates(run, batches, a) -> tuple[float, float, float | None]:
    """(end-to-end crops/s, ceiling crops/s, peak MiB): the best of `a.repeat` timed blocks of each,
    alternated so that both see the same machine load."""
    real, ceiling = run.sampler, FirstAnswers(run.sampler)
    if a.warmup:
        timed_steps(run, batches[:a.warmup])                # compilation, allocator, cuDNN choices
    run.sampler = ceiling
    timed_steps(run, batches[:1])                           # the ceiling's crops cut once, untimed
    if run.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(run.device)
    best = {real: float("inf"), ceiling: float("inf")}
    for r in range(a.repeat):
        for sampler in (real, ceiling):
            run.sampler = sampler
            best[sampler] = min(best[sampler], timed_steps(run, batches[a.warmup:], a.sync_debug and r == 0))
    peak = torch.cuda.max_memory_allocated(run.device) / 2**20 if run.device.type == "cuda" else None
    run.sampler = real
    return run.global_batch / best[real], run.global_batch / best[ceiling], peak


def eval_rate(run, rows, n_crops: int) -> float:
    kw = dict(crops=TestCrops(n=n_crops, size=run.size), batch_size=max(run.global_batch, n_crops),
              precision=Precision(run.eval_dtype))
    predict_rows(run.model, run.test_sampler, rows[:max(1, len(rows) // 8)], **kw)
    sync(run.device)
    t0 = time.perf_counter()
    predict_rows(run.model, run.test_sampler, rows, **kw)
    sync(run.device)
    return len(rows) * n_crops / (time.perf_counter() - t0)


def bench_row(model: str, amp: str, a, manifest, split, store, out: Path) -> dict:
    over = {"data.dataset": manifest.name, "model.pretrained": False, "train.amp": amp, "train.device": a.device,
            "train.compile": a.compile, "train.global_batch": a.batch,
            "data.crops_train": max(10, -(-a.batch // len(split.train))),      # at least one step per epoch
            # full size: the 7B layer's shape with random weights unless --ic-weights (nothing downloaded)
            **({"csfiqa.ic_weights": a.ic_weights or "random"} if a.size == "full" else {})}
    cfg = make_config("smoke" if a.size == "tiny" else "paper", model, over)
    run = engine.setup(cfg, manifest, split, out, store=store, test_store=store, progress=False)
    if a.compile:
        engine.compile_run(run)
    run.model.train()
    gen = torch.Generator().manual_seed(0)
    rows = torch.as_tensor(split.train)
    batches = [rows[torch.randint(len(rows), (run.global_batch,), generator=gen)] for _ in range(a.warmup + a.steps)]
    e2e, ceiling, peak_mib = train_rates(run, batches, a)
    gmacs = count_macs(run.model)
    peak = peak_flops(run.device)
    est = estimated_mib(run, model) if a.memory else {}
    return {**est, "model": MODELS[model], "size": a.size, "crop": run.size, "batch": run.global_batch, "amp": amp,
            "compile": "on" if a.compile else "off", "train crops/s": e2e, "ceiling crops/s": ceiling,
            "ratio": e2e / ceiling, "eval crops/s": eval_rate(run, list(split.test), cfg.data.crops_test),
            "peak MiB": peak_mib, "GMACs/crop": gmacs,
            "% bf16 peak": 100 * 6e9 * gmacs * e2e / peak if peak else None}


def estimated_mib(run, model: str) -> dict:
    """The kit's estimate of the step's peak memory (what `iqa-kit plan` and train.micro_batch=auto use),
    measured on this device, beside the peak allocated over the timed steps (CUDA)."""
    mem = step_memory(run.model, run.device, dtype=run.dtype, batches=MEASURE_BATCHES.get(model, (2, 4)))
    return {"est. peak MiB": peak_bytes(mem, run.micro) / 2**20, "MiB/crop": mem["per_crop"] / 2**20}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--size", default="tiny", choices=["tiny", "full"])
    p.add_argument("--amp", nargs="+", default=None, help="precisions (default: bf16 off on CUDA, off bf16 on CPU)")
    p.add_argument("--compile", action="store_true", help="torch.compile the forward and the loss (train.compile)")
    p.add_argument("--dataset", default="KonIQ-10k", help="whose DEIQT global batch is the default --batch")
    p.add_argument("--batch", type=int, default=None, help="crops per optimizer step (default: the recipe's)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 20; 2 at full size on the CPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3; 10 with --compile)")
    p.add_argument("--repeat", type=int, default=3, help="timed blocks per measure; the best is kept")
    p.add_argument("--images", type=int, default=None, help="images in the store (default 128, 256 at full size)")
    p.add_argument("--ic-weights", help="LLaMA-7B checkpoint for CSFIQA at full size (default: a random layer)")
    p.add_argument("--sync-debug", action="store_true", help="CUDA: warn on every host synchronisation")
    p.add_argument("--memory", action="store_true",
                   help="add the kit's peak-memory estimate (iqa-kit plan's) beside the measured peak")
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)
    a.device = str(resolve_device(a.device))
    cpu = a.device == "cpu"
    a.amp = a.amp or (["off", "bf16"] if cpu else ["bf16", "off"])
    a.steps = a.steps or (2 if cpu and a.size == "full" else 20)
    a.warmup = a.warmup if a.warmup is not None else (10 if a.compile else 1 if cpu and a.size == "full" else 3)
    a.images = a.images or (256 if a.size == "full" else 128)
    a.sync_debug = a.sync_debug and not cpu
    return a


def main(argv=None):
    a = parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    warnings.filterwarnings("ignore", message=".*plcc_logistic.*")
    device = torch.device(a.device)
    with tempfile.TemporaryDirectory() as tmp:
        hw = (384, 512) if a.size == "full" else (128, 160)
        manifest = make_manifest(Path(tmp), a.images, hw, a.dataset)
        split = make_split(manifest, 0)
        min_side = 240 if a.size == "full" else 96
        t0 = time.perf_counter()
        kind = "gpu" if device.type == "cuda" else "ram"            # the fastest store each device has
        store = open_store(manifest, min_side=min_side, device=device, kind=kind, cache_dir=Path(tmp) / "cache",
                           progress=False)
        decode = time.perf_counter() - t0
        a.batch = a.batch or global_batch_for(make_config("paper", "deiqt"), a.dataset)
        print(f"device: {device_name(device)}; torch {torch.__version__}; {a.images} images {hw[1]}x{hw[0]} decoded "
              f"in {decode:.1f} s, store on {store.device}; global batch {a.batch} ({a.dataset} recipe "
              f"unless --batch); "
              f"{a.steps} timed steps after {a.warmup}")
        rows = []
        for model in a.models:
            for amp in a.amp:
                try:
                    rows.append(bench_row(model, amp, a, manifest, split, store, Path(tmp) / f"{model}-{amp}"))
                except Exception as e:                          # e.g. out of memory: say so, go on
                    rows.append({"model": MODELS[model], "size": a.size, "amp": amp,
                                 "train crops/s": f"failed: {type(e).__name__}: {str(e).splitlines()[0][:80]}"})
                print(pd.DataFrame(rows[-1:]).to_markdown(index=False, floatfmt=".3g"), flush=True)
        print("\n" + pd.DataFrame(rows).to_markdown(index=False, floatfmt=".3g", missingval="n/a"))


if __name__ == "__main__":
    main()
