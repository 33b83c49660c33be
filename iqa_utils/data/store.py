"""Decode once, crop by slicing.

The reference code re-opens and re-decodes a JPEG for every crop it draws (DEIQT F9). IQA sets are
small, so the kit decodes every image once into a uint8 (3, H, W) tensor at the working resolution
(`ImageStore`) and `CropSampler` cuts crops by slicing those tensors, a batch at a time, converting to
float and normalising once per batch (on the GPU when the store lives there).

Working resolution, in order (`resize_settings` and `working_size`; `cache.open_store` opens a store):
1. `resize_mode="deiqt_parity"`: resize to `manifest.parity_size` (H, W) whatever the aspect (DEIQT F3);
   `"keep_aspect"`: scale so the short side is `manifest.keep_aspect_short_side` when the manifest
   sets one; `"native"` (or no size set): leave as decoded.
2. `max_side`: scale down (aspect kept) so the long side is at most `max_side`.
3. `min_side`: scale up (aspect kept) so the short side is at least `min_side`, so that a crop of that
   size always fits. This wins over `max_side`; pass the crop size the model uses.
Resizing is PIL bilinear (with PIL's antialiasing when shrinking), as torchvision's Resize on PIL does.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN as IMAGENET_MEAN, IMAGENET_DEFAULT_STD as IMAGENET_STD

from .images import read_rgb8
from .manifest import DatasetError, Manifest

RESIZE_MODES = ("keep_aspect", "deiqt_parity", "native")


def working_size(h: int, w: int, *, parity_size=None, short_side=None, max_side=None,
                 min_side=None) -> tuple[int, int]:
    """(H, W) an image of native size (h, w) is stored at; see the module docstring for the order."""
    if parity_size is not None:
        h, w = int(parity_size[0]), int(parity_size[1])
    elif short_side is not None and min(h, w) != short_side:
        s = short_side / min(h, w)
        h, w = max(1, round(h * s)), max(1, round(w * s))
    if max_side is not None and max(h, w) > max_side:
        s = max_side / max(h, w)
        h, w = max(1, round(h * s)), max(1, round(w * s))
    if min_side is not None and min(h, w) < min_side:
        s = min_side / min(h, w)
        # ceil so that the short side reaches min_side exactly despite rounding of the long side
        h, w = (min_side, max(min_side, math.ceil(w * s))) if h <= w else (max(min_side, math.ceil(h * s)), min_side)
    return h, w


def resize_settings(manifest: Manifest, resize_mode: str = "keep_aspect", max_side: int | None = None,
                    min_side: int | None = 224) -> dict:
    """The `working_size` keywords for a manifest read with `resize_mode` (step 1 of the module docstring)."""
    if resize_mode not in RESIZE_MODES:
        raise ValueError(f"unknown resize_mode {resize_mode!r}; choose one of {RESIZE_MODES}")
    parity = manifest.parity_size if resize_mode == "deiqt_parity" else None
    short = manifest.keep_aspect_short_side if resize_mode == "keep_aspect" else None
    return {"parity_size": parity, "short_side": short, "max_side": max_side, "min_side": min_side}


def decode_image(path, size_fn=None) -> torch.Tensor:
    """One image file -> uint8 (3, H, W); size_fn(h, w) -> (H, W) resizes. DatasetError names the file.
    High-bit-depth, palette and alpha images become 8-bit RGB as images.rgb8 documents (16-bit scaled,
    never clipped; alpha composited on white)."""
    try:
        arr = read_rgb8(path)
        if size_fn is not None:
            h, w = size_fn(arr.shape[0], arr.shape[1])
            if (h, w) != arr.shape[:2]:
                arr = np.asarray(Image.fromarray(arr).resize((w, h), Image.BILINEAR), dtype=np.uint8)
    except FileNotFoundError:
        raise DatasetError(f"image file is missing: {path}") from None
    except Exception as e:  # PIL raises several types for truncated / unknown files
        raise DatasetError(f"cannot read image {path}: {type(e).__name__}: {e}") from None
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


class ImageStore:
    """Every image of a manifest decoded once: `images[i]` is uint8 (3, H_i, W_i); `labels` float64 (N,).

    `images` is any sequence of such tensors: a list in RAM or on the GPU, or views of a memory-mapped
    cache file (`cache.MappedImageStore`). `kind` says which; `reason` why `cache.open_store` chose it.
    Stores are opened by `cache.open_store`, the one entry point (it decodes, reads or maps the pixels).
    """
    reason: str = ""

    def __init__(self, images: Sequence[torch.Tensor], labels: torch.Tensor, paths: Sequence[str] = (),
                 sizes=None):
        self.images = images
        self.labels = torch.as_tensor(labels, dtype=torch.float64)
        self.paths = list(paths)
        # sizes on the CPU: crop positions are drawn there and used as Python ints for slicing
        if sizes is None:  # given by stores that know them without touching the pixels
            sizes = [[im.shape[1], im.shape[2]] for im in images]
        self.sizes = torch.tensor(sizes, dtype=torch.long).view(-1, 2)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i]

    @property
    def device(self) -> torch.device:
        return self.images[0].device if self.images else torch.device("cpu")

    @property
    def nbytes(self) -> int:
        return 3 * int((self.sizes[:, 0] * self.sizes[:, 1]).sum())

    @property
    def kind(self) -> str:
        return "gpu" if self.device.type == "cuda" else "ram"

    def to(self, device) -> "ImageStore":
        """Move the pixels in place (and return self, so `store = store.to(d)` also works)."""
        device = torch.device(device)
        if self.images and self.images[0].device != device:
            self.images = [im.to(device) for im in self.images]
        return self

    def __repr__(self) -> str:
        return f"ImageStore({len(self)} images, {self.nbytes / 2**20:.1f} MiB uint8, {self.device})"


def _hash_uniform(seed: int, index: np.ndarray, counter: np.ndarray) -> np.ndarray:
    """Uniform [0, 1) floats that depend only on (seed, index, counter): chained splitmix64."""
    def mix(z):
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))

    with np.errstate(over="ignore"):
        h = mix(np.full(index.shape, seed % 2**64, dtype=np.uint64))
        h = mix(h ^ index.astype(np.uint64))
        h = mix(h ^ counter.astype(np.uint64))
    return (h >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


class CropStream(torch.Generator):
    """Training-crop randomness that does not depend on how a step's batch is split.

    The engine hands the sampler one stream per chunk of a step's global batch (the whole batch, a
    micro-batch, or a DDP rank's share); entry i of the chunk is sample `start + i` of the step. A draw
    of `rows` numbers for each of n = r * n_entries crops (r adjacent crops per entry) hashes (seed,
    step, sample, draw, row, crop) as `test_crops` does, so a sample gets the same crop whichever chunk
    or process cuts it: one process, micro-batches and torchrun ranks train on the same crops. Any other
    draw (another shape, or a model's own `torch.rand(..., generator=stream)`) uses the stream as a
    torch.Generator seeded from (seed, step, start): deterministic, but not split-invariant.
    """

    def __new__(cls, seed: int, step: int, start: int, n_entries: int):
        return super().__new__(cls, "cpu")

    def __init__(self, seed: int, step: int, start: int, n_entries: int):
        keys = _hash_uniform(seed, np.array([step, step]), np.array([0, 1 + start]))
        self.key, self.start, self.n, self.draws = int(keys[0] * 2**53), start, n_entries, 0
        self.manual_seed(int(keys[1] * 2**53))

    def uniform(self, rows: int, count: int) -> torch.Tensor:
        """(rows, count) float64 uniforms in [0, 1) for `count` crops."""
        self.draws += 1
        if not self.n or count % self.n:
            return torch.rand(rows, count, generator=self, dtype=torch.float64)
        r = count // self.n
        sample = np.repeat(np.arange(self.start, self.start + self.n, dtype=np.int64), r)
        base = (self.draws << 40) + np.tile(np.arange(r, dtype=np.int64), self.n)
        return torch.from_numpy(np.stack([_hash_uniform(self.key, sample, base + (row << 20))
                                          for row in range(rows)]))


def _uniform(generator, rows: int, n: int, dtype=torch.float64) -> torch.Tensor:
    """(rows, n) uniforms: per sample from a CropStream, else in turn from a torch.Generator."""
    if isinstance(generator, CropStream):
        return generator.uniform(rows, n)
    return torch.rand(rows, n, generator=generator, dtype=dtype)


def _grid_shape(n: int, h: int, w: int) -> tuple[int, int]:
    """(rows, cols) with rows * cols == n, as square as possible, more positions along the longer side."""
    a = max(d for d in range(1, int(math.isqrt(n)) + 1) if n % d == 0)
    b = n // a
    return (b, a) if h > w else (a, b)


def _axis_positions(count: int, span: int) -> list[int]:
    """count positions from 0 to span (both ends included); one position is centred."""
    if count == 1:
        return [span // 2]
    return [round(span * k / (count - 1)) for k in range(count)]


# candidate positions drawn per crop when the crops of an image must not overlap much (crops_with_boxes)
IOU_REDRAWS = 10


def box_iou(a, b) -> float:
    """IoU of two (top, left, height, width) boxes."""
    ih = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    iw = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    inter = max(ih, 0) * max(iw, 0)
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def spread_boxes(boxes: list, n: int, k: int, tries: int, max_iou: float) -> list[int]:
    """Indices into `boxes` (n images x k crops x `tries` candidates, in that order) of k crops per image
    whose pairwise IoU is at most max_iou: per crop, the first candidate within the limit of every crop
    already chosen for the image; if none is, the candidate whose largest IoU with them is smallest
    (ties to the earlier draw). Deterministic given the candidates."""
    keep = []
    for i in range(n):
        chosen = []
        for c in range(k):
            first = (i * k + c) * tries
            worst = [max((box_iou(boxes[first + t], boxes[j]) for j in chosen), default=0.0) for t in range(tries)]
            ok = [t for t in range(tries) if worst[t] <= max_iou]
            chosen.append(first + (ok[0] if ok else min(range(tries), key=worst.__getitem__)))
        keep += chosen
    return keep


class CropSampler:
    """Crops from an ImageStore as float32 tensors normalised by mean/std, on `device`.

    `idx` is a 1-D LongTensor of store indices; random positions come from `generator`: a CPU
    torch.Generator drawn in turn, or a CropStream (per sample, whatever the batch split).
    """

    def __init__(self, store: ImageStore, device="cpu", mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.store = store
        self.device = torch.device(device)
        mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        # x_norm = (x_u8 / 255 - mean) / std, folded into one scale and one shift
        self._scale = 1.0 / (255.0 * std)
        self._shift = -mean / std

    # ---- helpers -----------------------------------------------------------------------------------
    def _idx(self, idx) -> list[int]:
        idx = torch.as_tensor(idx, dtype=torch.long).view(-1).tolist()
        if idx and (min(idx) < 0 or max(idx) >= len(self.store)):
            raise IndexError(f"store index out of range 0..{len(self.store) - 1}")
        return idx

    def _hw(self, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.store.sizes[idx]
        return s[:, 0], s[:, 1]

    def _check_fits(self, idx: list[int], size: int) -> None:
        h, w = self._hw(idx)
        small = (torch.minimum(h, w) < size).nonzero().view(-1).tolist()
        if small:
            i = idx[small[0]]
            raise ValueError(f"image {i} ({self.store.paths[i] if self.store.paths else ''}) is "
                             f"{h[small[0]].item()}x{w[small[0]].item()}, smaller than the crop size {size}; "
                             f"build the store with min_side >= {size}")

    def normalise(self, x_u8: torch.Tensor) -> torch.Tensor:
        """uint8 or float (0..255) (N, 3, h, w) -> normalised float32 on self.device."""
        x = x_u8.to(self.device, non_blocking=True).float()
        return x.mul_(self._scale).add_(self._shift)

    def _cut(self, idx: list[int], tops, lefts, hs, ws, flips=None) -> list[torch.Tensor]:
        """Views of the store (copies only for the crops mirrored left-right)."""
        ims = self.store.images
        crops = [ims[i][:, t:t + h, l:l + w] for i, t, l, h, w in zip(idx, tops, lefts, hs, ws)]
        if flips is not None:
            # per crop, before stacking: cheaper than masked indexing of the stacked batch
            crops = [c.flip(-1) if f else c for c, f in zip(crops, flips)]
        return crops

    @staticmethod
    def _draw_flips(n: int, flip: bool, generator) -> list[bool] | None:
        return (_uniform(generator, 1, n, torch.float32)[0] < 0.5).tolist() if flip else None

    def _resize_group(self, crops: list[torch.Tensor], size: int) -> torch.Tensor:
        """Resize uint8 crops of any sizes to (size, size): one interpolate call per distinct shape."""
        out = torch.empty(len(crops), 3, size, size, device=self.device)
        groups: dict[tuple, list[int]] = {}
        for k, c in enumerate(crops):
            groups.setdefault(tuple(c.shape[1:]), []).append(k)
        for shape, ks in groups.items():
            x = torch.stack([crops[k] for k in ks]).to(self.device, non_blocking=True).float()
            if shape != (size, size):
                x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                                  antialias=shape[0] > size or shape[1] > size)
            # index_copy_ with a device index: out[list] = x would copy the list to the GPU and wait for it
            out.index_copy_(0, torch.tensor(ks).to(self.device, non_blocking=True), x)
        return out.mul_(self._scale).add_(self._shift)

    def _random_pos(self, h, w, ch, cw, generator):
        """Uniform top/left so that a (ch, cw) crop fits: as ints."""
        n = h.numel()
        u = _uniform(generator, 2, n)
        tops = (u[0] * (h - ch + 1)).floor().long().clamp_(min=0)
        lefts = (u[1] * (w - cw + 1)).floor().long().clamp_(min=0)
        return tops.tolist(), lefts.tolist()

    # ---- public methods ----------------------------------------------------------------------------
    def random_crops(self, idx, size: int, flip: bool = False, generator: torch.Generator | None = None):
        """One uniform random size x size crop per entry of idx (+ random horizontal flip): (N, 3, s, s)."""
        idx = self._idx(idx)
        self._check_fits(idx, size)
        h, w = self._hw(idx)
        tops, lefts = self._random_pos(h, w, size, size, generator)
        flips = self._draw_flips(len(idx), flip, generator)
        return self.normalise(torch.stack(self._cut(idx, tops, lefts, [size] * len(idx), [size] * len(idx), flips)))

    @staticmethod
    def _sides(h, w, ratio: float) -> torch.Tensor:
        """Square crop side round(ratio * min(H, W)), at least 1 and at most the short side."""
        short = torch.minimum(h, w)
        return torch.minimum((short.double() * ratio).round().long().clamp_(min=1), short)

    def resized_crops(self, idx, ratio: float, size: int, flip: bool = False,
                      generator: torch.Generator | None = None):
        """A random square crop of side round(ratio * min(H, W)), resized to size: (N, 3, s, s)."""
        idx = self._idx(idx)
        h, w = self._hw(idx)
        side = self._sides(h, w, ratio)
        tops, lefts = self._random_pos(h, w, side, side, generator)
        flips = self._draw_flips(len(idx), flip, generator)  # bilinear resizing commutes with mirroring
        return self._resize_group(self._cut(idx, tops, lefts, side.tolist(), side.tolist(), flips), size)

    def nested_crops(self, idx, ratio_small: float, ratio_large: float, size: int, flip: bool = False,
                     generator: torch.Generator | None = None):
        """The same content at two scales: a random square crop of side ratio_large * min(H, W), and one of
        side ratio_small * min(H, W) at a uniform position inside it; both resized to size and mirrored
        together (so the small crop stays a sub-window of the large one). Returns small (N, 3, s, s),
        large (N, 3, s, s) and boxes (N, 2, 4): (top, left, height, width) / (H, W, H, W) of small, large."""
        idx = self._idx(idx)
        h, w = self._hw(idx)
        big = self._sides(h, w, ratio_large)
        small = torch.minimum(self._sides(h, w, ratio_small), big)
        tops, lefts = self._random_pos(h, w, big, big, generator)
        dt, dl = self._random_pos(big, big, small, small, generator)
        s_tops, s_lefts = [t + a for t, a in zip(tops, dt)], [l + b for l, b in zip(lefts, dl)]
        flips = self._draw_flips(len(idx), flip, generator)
        xs = self._resize_group(self._cut(idx, s_tops, s_lefts, small.tolist(), small.tolist(), flips), size)
        xl = self._resize_group(self._cut(idx, tops, lefts, big.tolist(), big.tolist(), flips), size)
        rel = torch.stack([h, w, h, w], 1).double()
        boxes = torch.stack([torch.stack([torch.tensor(s_tops), torch.tensor(s_lefts), small, small], 1) / rel,
                             torch.stack([torch.tensor(tops), torch.tensor(lefts), big, big], 1) / rel], 1)
        return xs, xl, boxes.float().to(self.device, non_blocking=True)

    def crops_at(self, idx, centres: torch.Tensor, size: int, flip: bool = False,
                 generator: torch.Generator | None = None):
        """size x size crops at the stored resolution centred on `centres` (N, 2) = (y, x) / (H, W),
        shifted where needed to lie inside the image: (N, 3, s, s)."""
        idx = self._idx(idx)
        self._check_fits(idx, size)
        h, w = self._hw(idx)
        c = centres.detach().double().cpu().view(-1, 2)
        tops = torch.minimum((c[:, 0] * h - size / 2).round().long().clamp(min=0), h - size).tolist()
        lefts = torch.minimum((c[:, 1] * w - size / 2).round().long().clamp(min=0), w - size).tolist()
        flips = self._draw_flips(len(idx), flip, generator)
        return self.normalise(torch.stack(self._cut(idx, tops, lefts, [size] * len(idx), [size] * len(idx), flips)))

    def global_views(self, idx, size: int):
        """The whole image resized to size x size (aspect not kept): (N, 3, s, s)."""
        idx = self._idx(idx)
        return self._resize_group([self.store.images[i] for i in idx], size)

    def crops_with_boxes(self, idx, k: int, size: int, generator: torch.Generator | None = None,
                         mode: str = "native", flip: bool = False, max_iou: float = 1.0):
        """k random crops per image and where they lie.

        mode "native": size x size crops at the stored resolution; "multiscale": square crops with a
        random side in [0.3, 1.0] x the short side, resized to size (LML-IQA D4). max_iou < 1: any two
        crops of an image overlap by at most that IoU, each crop chosen among IOU_REDRAWS draws
        (`spread_boxes`; when no draw fits, the least-overlapping one is kept). flip: random horizontal
        flips, drawn after the positions (the boxes are those of the unflipped crops).
        Returns crops (N, k, 3, size, size) and boxes (N, k, 4) = (top, left, height, width) / (H, W, H, W).
        """
        idx = self._idx(idx)
        if mode == "native":
            self._check_fits(idx, size)
        elif mode != "multiscale":
            raise ValueError(f"unknown crop mode {mode!r}; choose native or multiscale")
        tries = 1 if max_iou >= 1 else IOU_REDRAWS
        rep = [i for i in idx for _ in range(k * tries)]
        h, w = self._hw(rep)
        if mode == "native":
            side = torch.full_like(h, size)
        else:
            frac = 0.3 + 0.7 * _uniform(generator, 1, len(rep))[0]
            side = (torch.minimum(h, w).double() * frac).round().long().clamp_(min=1)
        tops, lefts = self._random_pos(h, w, side, side, generator)
        sides = side.tolist()
        if tries > 1:
            keep = spread_boxes(list(zip(tops, lefts, sides, sides)), len(idx), k, tries, max_iou)
            rep, tops, lefts, sides = ([v[j] for j in keep] for v in (rep, tops, lefts, sides))
            h, w, side = h[keep], w[keep], side[keep]
        crops = self._cut(rep, tops, lefts, sides, sides, self._draw_flips(len(rep), flip, generator))
        x = self.normalise(torch.stack(crops)) if mode == "native" else self._resize_group(crops, size)
        boxes = torch.stack([torch.tensor(tops) / h, torch.tensor(lefts) / w, side / h, side / w], 1)
        boxes = boxes.float().view(len(idx), k, 4).to(self.device, non_blocking=True)
        return x.view(len(idx), k, 3, size, size), boxes

    def _test_uniforms(self, idx: list[int], n: int, mode: str, seed: int) -> torch.Tensor:
        """(4, len(idx) * n) uniforms for two nested boxes per test crop: seeded_random hashes (seed, store
        index, 4 * crop number + k), so an image gets the same views whatever batch it is in."""
        if mode == "random":
            return torch.rand(4, len(idx) * n, dtype=torch.float64)
        ids = np.repeat(np.asarray(idx, dtype=np.int64), n)
        c = np.tile(np.arange(n, dtype=np.int64), len(idx))
        return torch.from_numpy(np.stack([_hash_uniform(seed, ids, 4 * c + k) for k in range(4)]))

    def nested_test_crops(self, idx, n: int, ratio_small: float, ratio_large: float, size: int,
                          mode: str = "seeded_random", seed: int = 0, nested: bool = True) -> torch.Tensor:
        """The test-time views of `nested_crops`' training geometry: per image n square crops of side
        ratio_large * min(H, W) and, inside each (nested) or anywhere (not nested), one of side
        ratio_small * min(H, W); both resized to size. Positions: seeded_random (as `test_crops`), random
        (torch's global generator), or grid (the large crops on `test_crops`' grid, the small ones centred).
        Returns (N * n, 2, 3, size, size): [:, 0] small, [:, 1] large."""
        idx = self._idx(idx)
        if mode not in ("seeded_random", "random", "grid"):
            raise ValueError(f"unknown test crop mode {mode!r}; choose seeded_random, grid or random")
        rep = [i for i in idx for _ in range(n)]
        h, w = self._hw(rep)
        big = self._sides(h, w, ratio_large)
        small = torch.minimum(self._sides(h, w, ratio_small), big)
        u = self._test_uniforms(idx, n, "random" if mode == "random" else "seeded_random", seed)
        if mode == "grid":
            tops, lefts = self._grid_positions(idx, n, big)
            u[2:] = 0.5
        else:
            tops = (u[0] * (h - big + 1)).floor().long().tolist()
            lefts = (u[1] * (w - big + 1)).floor().long().tolist()
        if nested:
            s_tops = [t + int(a * (b - s + 1)) for t, a, b, s in zip(tops, u[2], big.tolist(), small.tolist())]
            s_lefts = [l + int(a * (b - s + 1)) for l, a, b, s in zip(lefts, u[3], big.tolist(), small.tolist())]
        else:
            s_tops = (u[2] * (h - small + 1)).floor().long().tolist()
            s_lefts = (u[3] * (w - small + 1)).floor().long().tolist()
        xs = self._resize_group(self._cut(rep, s_tops, s_lefts, small.tolist(), small.tolist()), size)
        xl = self._resize_group(self._cut(rep, tops, lefts, big.tolist(), big.tolist()), size)
        return torch.stack([xs, xl], 1)

    def _grid_positions(self, idx: list[int], n: int, sides: torch.Tensor) -> tuple[list[int], list[int]]:
        """Top/left of n crops per image on an evenly spaced grid that includes the corners."""
        tops, lefts = [], []
        for j, i in enumerate(idx):
            H, W = self.store.sizes[i].tolist()
            side = int(sides[j * n])
            rows, cols = _grid_shape(n, H, W)
            for t in _axis_positions(rows, H - side):
                for l in _axis_positions(cols, W - side):
                    tops.append(t)
                    lefts.append(l)
        return tops, lefts

    def test_crops(self, idx, n: int, size: int, mode: str = "seeded_random", seed: int = 0):
        """n crops per image, rows i*n .. i*n+n-1 for image idx[i]: (N * n, 3, size, size).

        seeded_random: positions hash (seed, store index, crop number), so an image gets the same crops
        whatever batch it is in; grid: an evenly spaced rows x cols grid (rows * cols = n) that includes
        the corners; random: unseeded draws from torch's global generator (DEIQT's behaviour).
        """
        idx = self._idx(idx)
        self._check_fits(idx, size)
        rep = [i for i in idx for _ in range(n)]
        h, w = self._hw(rep)
        if mode == "seeded_random":
            ids = np.repeat(np.asarray(idx, dtype=np.int64), n)
            c = np.tile(np.arange(n, dtype=np.int64), len(idx))
            u_t = torch.from_numpy(_hash_uniform(seed, ids, 2 * c))
            u_l = torch.from_numpy(_hash_uniform(seed, ids, 2 * c + 1))
            tops = (u_t * (h - size + 1)).floor().long().tolist()
            lefts = (u_l * (w - size + 1)).floor().long().tolist()
        elif mode == "grid":
            tops, lefts = self._grid_positions(idx, n, torch.full((len(rep),), size))
        elif mode == "random":
            tops, lefts = self._random_pos(h, w, size, size, None)
        else:
            raise ValueError(f"unknown test crop mode {mode!r}; choose seeded_random, grid or random")
        sizes = [size] * len(rep)
        return self.normalise(torch.stack(self._cut(rep, tops, lefts, sizes, sizes)))
