"""Crops per second: the uint8 ImageStore + CropSampler against decoding the file for every crop.

The baseline is what the reference code (DEIQT) does per training sample: PIL open + RGB convert, random
horizontal flip, random 224 crop, to-tensor, normalise. Images are LIVEC-sized (500x500) JPEGs cut from
scikit-image photos, written to a temporary folder.

    python benchmarks/bench_store.py [--images 200] [--crops 2000] [--batch 32] [--device cpu]

On the CPU the store's cost is mostly first-touch page faults of each fresh float batch (19 MiB for 32
crops of 224): once PIL has run in the process, glibc serves such blocks with mmap and returns them on
free. Raising glibc's thresholds lets it reuse them, e.g.
    MALLOC_MMAP_THRESHOLD_=67108864 MALLOC_TRIM_THRESHOLD_=268435456 python benchmarks/bench_store.py
(about 3x faster random_crops on a 2-core machine). On a GPU store none of this applies.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torchvision import transforms

from iqa_utils.data.manifest import Manifest
from iqa_utils.data.cache import open_store
from iqa_utils.data.store import IMAGENET_MEAN, IMAGENET_STD, CropSampler
from iqa_utils.data.synthetic import photo

PHOTOS = ["astronaut", "chelsea", "coffee", "rocket", "stereo_motorcycle[0]", "stereo_motorcycle[1]",
          "hubble_deep_field", "immunohistochemistry", "retina", "camera"]


MEMORY_FIELDS = {"anon": ("status", "RssAnon"), "file": ("status", "RssFile"), "pss": ("smaps_rollup", "Pss"),
                 "private_clean": ("smaps_rollup", "Private_Clean"), "private_dirty": ("smaps_rollup", "Private_Dirty")}


def memory() -> dict[str, int]:
    """This process's memory now, in bytes (Linux /proc; {} elsewhere). RSS mixes two things:
    - anon (RssAnon): what the process owns; only freeing or killing it returns it;
    - file (RssFile): mapped file pages (the memory-mapped store, libraries), which the kernel drops
      when memory is short and reads again on the next touch;
    - pss: shared pages divided by the number of processes that map them (sums correctly over workers);
    - uss: pages no other process maps (private clean + dirty)."""
    files = {}
    for name in ("status", "smaps_rollup"):
        try:
            files[name] = Path(f"/proc/self/{name}").read_text().splitlines()
        except OSError:
            return {}
    out = {}
    for key, (name, field) in MEMORY_FIELDS.items():
        line = next((l for l in files[name] if l.startswith(field + ":")), None)
        out[key] = int(line.split()[1]) * 1024 if line else 0
    out["uss"] = out.pop("private_clean") + out.pop("private_dirty")
    return out


def peak_memory(peak: dict[str, int]) -> dict[str, int]:
    """`peak` raised to the memory now, key by key."""
    now = memory()
    return {k: max(peak.get(k, 0), v) for k, v in now.items()}


def make_images(folder: Path, n: int, side: int) -> Manifest:
    """n photo-like side x side JPEGs: random square boxes of the skimage photos, resized.

    The boxes are drawn in order first, so the files do not depend on the threads that write them."""
    rng = np.random.default_rng(0)
    photos = [photo(p) for p in PHOTOS]
    boxes = []
    for i in range(n):
        im = photos[i % len(photos)]
        s = int(rng.integers(min(im.shape[:2]) // 2, min(im.shape[:2]) + 1))
        boxes.append((i, s, int(rng.integers(0, im.shape[0] - s + 1)), int(rng.integers(0, im.shape[1] - s + 1))))

    def write(box) -> dict:
        i, s, t, l = box
        path = folder / f"img{i:04d}.jpg"
        im = photos[i % len(photos)]
        Image.fromarray(im[t:t + s, l:l + s]).resize((side, side), Image.BICUBIC).save(path, quality=90)
        return {"path": str(path), "label": float(i), "direction": "MOS", "ref": None, "distortion": None,
                "level": None}

    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:  # PIL resizes and encodes without the GIL
        rows = list(pool.map(write, boxes))
    return Manifest("bench", folder, pd.DataFrame(rows))


def bench_per_crop_decode(paths: list[str], n_crops: int, crop: int) -> float:
    """The reference loader: decode the file again for every crop."""
    tf = transforms.Compose([transforms.RandomHorizontalFlip(), transforms.RandomCrop(crop), transforms.ToTensor(),
                             transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for i in rng.integers(0, len(paths), n_crops):
        with Image.open(paths[i]) as im:
            tf(im.convert("RGB"))
    return n_crops / (time.perf_counter() - t0)


def bench_store(sampler: CropSampler, n_images: int, n_crops: int, crop: int, batch: int, device) -> float:
    g = torch.Generator().manual_seed(0)
    sampler.random_crops(torch.arange(batch) % n_images, crop, True, g)  # warm-up
    done = 0
    t0 = time.perf_counter()
    while done < n_crops:
        idx = torch.randint(0, n_images, (batch,), generator=g)
        x = sampler.random_crops(idx, crop, True, g)
        done += batch
        del x   # a training step drops its batch before the next is cut (as the engine does)
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    return done / (time.perf_counter() - t0)


def bench_test_crops(sampler: CropSampler, n_images: int, n: int, crop: int, batch: int) -> float:
    per_call = max(1, batch // n)  # about `batch` crops per call, as an evaluation loop would ask
    t0 = time.perf_counter()
    for s in range(0, n_images, per_call):
        sampler.test_crops(torch.arange(s, min(s + per_call, n_images)), n, crop)
    return n_images * n / (time.perf_counter() - t0)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--side", type=int, default=500)
    ap.add_argument("--crop", type=int, default=224)
    ap.add_argument("--crops", type=int, default=2000, help="crops timed for the store")
    ap.add_argument("--baseline-crops", type=int, default=400, help="crops timed for per-crop decoding")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (same for both methods)")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds per method; the median is reported")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        m = make_images(Path(tmp), args.images, args.side)
        paths = list(m.df.path)
        t0 = time.perf_counter()
        kind = "gpu" if torch.device(args.device).type == "cuda" else "ram"    # decoded, not read from a cache
        store = open_store(m, resize_mode="native", min_side=args.crop, device=args.device, kind=kind,
                           cache_dir=Path(tmp) / "no-cache", progress=False)
        decode_s = time.perf_counter() - t0
        sampler = CropSampler(store, device=args.device)
        # rounds interleave the methods so that load from other processes hits both alike
        r = {"base": [], "fast": [], "test": []}
        for _ in range(args.rounds):
            r["base"].append(bench_per_crop_decode(paths, args.baseline_crops, args.crop))
            r["fast"].append(bench_store(sampler, len(store), args.crops, args.crop, args.batch, args.device))
            r["test"].append(bench_test_crops(sampler, len(store), 10, args.crop, args.batch))
    base, fast, test = (float(np.median(r[k])) for k in ("base", "fast", "test"))
    ratios = np.array(r["fast"]) / np.array(r["base"])
    # one DEIQT epoch = 10 crops per image; the store pays its decode once per run, not per epoch
    epoch = 10 * len(store)
    amortised = epoch / (decode_s + epoch / fast)

    print(f"{args.images} JPEGs of {args.side}x{args.side}, {args.crop}px crops, batch {args.batch}, "
          f"device {args.device}, torch threads {torch.get_num_threads()}, median of {args.rounds} rounds")
    mem = memory()
    print(f"store: decoded once in {decode_s:.2f} s, {store.nbytes / 2**20:.0f} MiB uint8; process memory: "
          + ", ".join(f"{k} {v / 2**20:.0f} MiB" for k, v in mem.items()) + "\n")
    print(f"| {'method':<51} | {'crops/s':>9} | {'vs per-crop decode':>18} |")
    print(f"|{'-' * 53}|{'-' * 11}|{'-' * 20}|")
    rows = [("per-crop decode (PIL open+crop+ToTensor+Normalize)", base),
            ("store + CropSampler.random_crops (flip)", fast),
            ("store + CropSampler.test_crops (10 per image)", test),
            ("store, first epoch incl. the one-off decode", amortised)]
    for name, v in rows:
        print(f"| {name:<51} | {v:>9.0f} | {v / base:>17.1f}x |")
    print(f"\nrandom_crops / per-crop decode, per round: {', '.join(f'{x:.1f}x' for x in ratios)}")
    return {"baseline": base, "store": fast, "test_crops": test, "first_epoch": amortised, "decode_s": decode_s}


if __name__ == "__main__":
    main()
