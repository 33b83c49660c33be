"""Train and eval throughput (crops/s) of DEIQT, tiny and full size, through the engine's own code path.

    python benchmarks/bench_train.py                      # CPU here, CUDA when present
    python benchmarks/bench_train.py --sizes small --steps 20 --batch 64 --compile

Data loading is included: crops are cut from an ImageStore by the CropSampler inside the timed loop
(the store's one-time decode is timed separately). AMP rows: off, and bf16 (CPU/CUDA) or fp16 (CUDA).
torch.compile is skipped on CPU unless --compile is given (compiling ViT-S for CPU takes minutes).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from iqa_utils.data.store import CropSampler, ImageStore
from iqa_utils.engine import amp_dtype, forward_backward, param_groups, predict_rows, resolve_device
from iqa_utils.models.deiqt import DEIQT


def make_images(folder: Path, n: int, hw=(384, 512)) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        arr = rng.integers(0, 256, (hw[0] // 8, hw[1] // 8, 3), dtype=np.uint8)
        img = Image.fromarray(arr).resize((hw[1], hw[0]), Image.BILINEAR)
        paths.append(folder / f"{i:03d}.jpg")
        img.save(paths[-1], quality=90)
    return paths


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench(size, amp, compile_, store, device, batch, steps, eval_images, n_crops=10, warmup=2):
    torch.manual_seed(0)
    crop = 224 if size == "small" else 96
    model = DEIQT(size, crop).to(device)
    if compile_:
        model.compile()
    dtype = amp_dtype(amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    opt = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-4,
                            **({"fused": True} if device.type == "cuda" else {}))
    sampler = CropSampler(store, device=device)
    gen = torch.Generator().manual_seed(0)
    labels = torch.rand(len(store)) * 100
    model.train()
    t_compile = time.perf_counter()
    for s in range(warmup + steps):
        if s == warmup:
            sync(device)
            t0 = time.perf_counter()
            t_compile = t0 - t_compile
        idx = torch.randint(0, len(store), (batch,), generator=gen)
        forward_backward(model, sampler, idx, labels, gen, batch, device, dtype, scaler)
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
    sync(device)
    train = steps * batch / (time.perf_counter() - t0)
    rows = list(range(min(eval_images, len(store))))
    predict_rows(model, sampler, rows[:max(1, batch // n_crops)], n_crops, crop, batch_size=batch, amp=dtype)
    sync(device)
    t0 = time.perf_counter()
    predict_rows(model, sampler, rows, n_crops, crop, batch_size=max(batch, n_crops), amp=dtype)
    sync(device)
    ev = len(rows) * n_crops / (time.perf_counter() - t0)
    return train, ev, t_compile


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--sizes", nargs="+", default=["tiny", "small"])
    p.add_argument("--steps", type=int, default=None, help="timed steps (default: 20 tiny, 3 small on CPU)")
    p.add_argument("--batch", type=int, default=None, help="crops per step (default: 32; 8 for small on CPU)")
    p.add_argument("--images", type=int, default=48)
    p.add_argument("--compile", action="store_true", help="also time torch.compile on CPU")
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = resolve_device(a.device)
    cpu = device.type == "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_images(Path(tmp), a.images)
        t0 = time.perf_counter()
        store = ImageStore.from_paths(paths, short_side=384, min_side=224, progress=False)
        decode = time.perf_counter() - t0
    store.to(device) if device.type == "cuda" else None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; store: {len(store)} images decoded in {decode:.2f} s "
          f"({len(store) / decode:.0f} img/s)")
    amps = ["off", "bf16"] + ([] if cpu else ["fp16"])
    compiles = [False] + ([True] if (not cpu or a.compile) else [])
    if cpu and not a.compile:
        print("torch.compile: skipped on CPU (compiling takes minutes on a few cores); --compile to time it")
    print(f"\n| size | crop | amp | compile | batch | steps | train crops/s | eval crops/s (10 crops/img) |")
    print("|---|---|---|---|---|---|---|---|")
    for size in a.sizes:
        big = size == "small"
        steps = a.steps or (3 if big and cpu else 20)
        batch = a.batch or (8 if big and cpu else 32)
        for amp in amps:
            for comp in compiles:
                train, ev, tc = bench(size, amp, comp, store, device, batch, steps,
                                      eval_images=4 if big and cpu else 32)
                note = f" (compile+warm-up {tc:.0f} s)" if comp else ""
                print(f"| {size} | {224 if big else 96} | {amp} | {'on' if comp else 'off'}{note} | {batch} | "
                      f"{steps} | {train:.1f} | {ev:.1f} |", flush=True)


if __name__ == "__main__":
    main()
