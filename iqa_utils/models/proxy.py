"""Proxy pretraining: the tiny encoders' stand-in for ImageNet initialisation (smoke profile).

The papers fine-tune ImageNet-pretrained encoders (DeiT-III S/16 in DEIQT and LML-IQA, CrossViT-S/240 in
CSFIQA). The smoke profile's tiny encoders have no such checkpoint. So they are pretrained once, offline
and deterministically, on a proxy task shaped like the ImageNet recipe they stand in for, and the smoke
profile loads them exactly as the paper profile loads the hub's files (`load_encoder_weights`, strict).

Recipe (RECIPES, `model.proxy_pretraining`; every number is written into the JSON beside the weights):
- Content: PHOTOS, scikit-image photos that ship in its wheel and supply none of the synthetic set's
  references (none of the photos of `synthetic.SOURCES[:DEFAULT_N_REFS]`; `check_disjoint` asserts it).
  Nothing of the synthetic set is used: no reference, image, label or distortion.
- "exemplar-v1" (default): supervised classification, as DeiT-III and CrossViT were trained on ImageNet,
  of surrogate classes (Exemplar-CNN, Dosovitskiy et al. 2014): a class is one of 3x3 seed regions (half
  the short side) of one photo; a sample is a random crop near its seed region, flipped at random. Only
  geometric augmentation: the labels say which place of which photo, so the encoder learns content and
  low-level structure (edges, textures, tones) and is never taught to ignore blur, noise or contrast.
- Alternatives: "exemplar-3aug-v1", the same with DeiT-III's 3-Augment (grey, solarise or Gaussian blur)
  and colour jitter, as the ImageNet recipe has; "rotation-v1", which of 0/90/180/270 degrees a random
  crop was turned by (RotNet, Gidaris et al. 2018); "degradation-v1", which of six generic degradations
  (DEGRADATIONS, written for the proxy with continuous strengths, never fitted to the synthetic labels)
  at which of three strengths, or none, a random crop carries: a quality-aware start, closer to the task
  than ImageNet's. The default was chosen on a validation carve-out of the synthetic training references
  (DEIQT, split seeds 0-2), never on the test split; docs/datasets.md gives the numbers.
- Training: the encoder's pooled output (ViT: the CLS token; CrossViT: both branches' CLS tokens) into
  a linear head (dropped afterwards), AdamW, linear warm-up then cosine decay, label smoothing 0.1, at
  the smoke crop size (positions are resampled when loaded at another size). Everything random comes
  from the recipe's seed; the build runs on the CPU with THREADS threads and leaves the caller's global
  RNG and thread count as they were, so a model's other initial weights do not depend on the cache.

Cache: <synthetic set folder>/pretrained/<recipe>/<encoder>.safetensors and <encoder>.json (the recipe,
the encoder, the photos, the file's SHA-256, the build time). A file whose JSON does not match the current
recipe, or whose checksum differs, is rebuilt; both files are written atomically (the JSON last).
A build is never silent: one line says what is built, where and about how long it takes, a progress bar
counts the steps, and a last line gives the time taken. `iqa-kit proxy` builds the files ahead of time
(`build_ahead`), and `iqa-kit reproduce` calls it first when its configs need them; `create_model` still
builds a missing file on first use, so a notebook stepped through by hand is never stuck.
A changed recipe takes a new name (exemplar-v2): the name is a config field (`model.proxy_pretraining`)
and part of the run key, so runs from other weights get other records.
"""
from __future__ import annotations

import hashlib
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn
from tqdm.auto import tqdm

from ..data.synthetic import DEFAULT_N_REFS, SOURCES, default_root, photo
from ..devices import atomic_save, save_safetensors
from ..system import KitError, atomic_write_json, file_sha256, read_json
from .pretrained import weights_source
from .registry import create_model

# skimage.data photos inside the wheel (no download) that are no source of the synthetic set's references
PHOTOS = ("horse", "page", "text", "logo", "colorwheel", "checkerboard", "coins", "clock", "moon", "cell",
          "grass", "gravel")
SIZE = 96                                # the smoke crop size (and CSFIQA's smoke input size)
# one thread: the same bytes whatever the machine's core count, and no slowdown from oversubscribed
# threads on a shared machine (2 threads ran 5x slower than 1 on a busy 2-core machine)
THREADS = 1
_COMMON = {"size": SIZE, "steps": 200, "batch": 64, "lr": 3e-3, "weight_decay": 0.05, "warmup_steps": 20,
           "label_smoothing": 0.1, "grid": 3, "seed": 20240612}
RECIPES = {
    "exemplar-v1": {"version": 1, "task": "exemplar", "augment": "geometric", **_COMMON},
    "exemplar-3aug-v1": {"version": 1, "task": "exemplar", "augment": "3-augment", **_COMMON},
    "rotation-v1": {"version": 1, "task": "rotation", "augment": "geometric", **_COMMON},
    "degradation-v1": {"version": 1, "task": "degradation", "augment": "geometric", **_COMMON},
}
DEFAULT_RECIPE = "exemplar-v1"
# seconds a build of the default recipe's 200 steps took on an idle 2-core machine (the files' JSON), for
# the line a build prints; a busy machine takes longer (the progress bar shows the real pace)
BUILD_S = {"vit_tiny": 90, "crossvit_tiny": 40}


def check_disjoint(photos=PHOTOS) -> None:
    """No pretraining photo may supply one of the synthetic set's (default) references."""
    refs = {name for name, *_ in SOURCES[:DEFAULT_N_REFS]}
    shared = sorted(set(photos) & refs)
    if shared:
        raise KitError(f"proxy pretraining: {shared} also supply synthetic references")


# ---- samples -------------------------------------------------------------------------------------------
def load_photos(photos=PHOTOS, short_side: int = 2 * SIZE) -> list[torch.Tensor]:
    """Each photo as a float (3, H, W) tensor in [0, 1], resized (antialiased) to `short_side` so that a
    seed region (half the short side) is the crop size: crops need no further antialiasing."""
    check_disjoint(photos)
    out = []
    for name in photos:
        im = torch.from_numpy(photo(name)).permute(2, 0, 1).float().div(255)[None]
        scale = short_side / min(im.shape[-2:])
        size = [max(short_side, round(d * scale)) for d in im.shape[-2:]]
        out.append(F.interpolate(im, size=size, mode="bilinear", antialias=True, align_corners=False)[0])
    return out


def _uniform(gen: torch.Generator, n: int, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen)


def _exemplar_box(im: torch.Tensor, cell: int, grid: int, u: torch.Tensor) -> tuple[int, int, int]:
    """(top, left, side) of a crop near seed region `cell` of a grid x grid layout of half-side regions
    (u: uniform draws in [0, 1))."""
    h, w = im.shape[1:]
    seed = min(h, w) // 2
    side = max(8, round(seed * (0.7 + 0.3 * float(u[0]))))
    i, j = divmod(cell, grid)
    corner = (i * (h - seed) / (grid - 1), j * (w - seed) / (grid - 1))
    t, l = [c + (seed - side) * float(v) + 0.15 * seed * (2 * float(v) - 1) for c, v in zip(corner, u[1:3])]
    return int(min(max(t, 0), h - side)), int(min(max(l, 0), w - side)), side


def _random_box(im: torch.Tensor, u: torch.Tensor) -> tuple[int, int, int]:
    h, w = im.shape[1:]
    side = max(8, round(min(h, w) * (0.3 + 0.5 * float(u[0]))))
    return int(float(u[1]) * (h - side + 1)), int(float(u[2]) * (w - side + 1)), side


def _crop(im: torch.Tensor, box, size: int, flip: bool) -> torch.Tensor:
    t, l, s = box
    x = F.interpolate(im[None, :, t:t + s, l:l + s], size=(size, size), mode="bilinear", align_corners=False)[0]
    return x.flip(-1) if flip else x


def _blur(x: torch.Tensor, sigma: torch.Tensor, radius: int = 6) -> torch.Tensor:
    """Each image of (B, 3, H, W) blurred by its own Gaussian sigma: two 1-D passes, one grouped conv each."""
    b, c, h, w = x.shape
    k = torch.exp(-0.5 * (torch.arange(-radius, radius + 1.0)[None] / sigma[:, None]) ** 2)
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)               # (B*3, 2r+1)
    y = F.pad(x.reshape(1, b * c, h, w), [radius] * 4, mode="reflect")
    y = F.conv2d(y, k[:, None, None, :], groups=b * c)
    return F.conv2d(y, k[:, None, :, None], groups=b * c).reshape(b, c, h, w)


def three_augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """DeiT-III's 3-Augment on a batch in [0, 1] (each image one of grey, solarise, Gaussian blur), then
    contrast, brightness and per-channel gains (ColorJitter-like, so the grey photos vary in colour too)."""
    b = x.shape[0]
    kind, sigma = torch.randint(3, (b,), generator=gen), _uniform(gen, b, 0.1, 2.0)
    x = x.clone()
    grey, sol, blur = (kind == 0).nonzero()[:, 0], (kind == 1).nonzero()[:, 0], (kind == 2).nonzero()[:, 0]
    x[grey] = x[grey].mean(1, keepdim=True).expand(-1, 3, -1, -1)
    x[sol] = torch.where(x[sol] >= 0.5, 1.0 - x[sol], x[sol])
    x[blur] = _blur(x[blur], sigma[blur])
    m = x.mean((1, 2, 3), keepdim=True)
    x = m + (x - m) * _uniform(gen, b, 0.7, 1.3).view(b, 1, 1, 1)
    gains = _uniform(gen, b, 0.7, 1.3).view(b, 1, 1, 1) * _uniform(gen, 3 * b, 0.7, 1.3).view(b, 3, 1, 1)
    return (x * gains).clamp(0, 1)


# degradation task: kind -> (batch, strength s in (0, 1], generator) -> the degraded batch. Generic
# degradations written for the proxy, with continuous strengths; not the synthetic set's pipeline, and
# never fitted to its labels.
DEGRADATIONS = {
    "blur": lambda x, s, g: _blur(x, 0.4 + 2.6 * s),
    "noise": lambda x, s, g: x + (0.01 + 0.14 * s).view(-1, 1, 1, 1) * torch.randn(x.shape, generator=g),
    "contrast": lambda x, s, g: _mix(x, x.mean((1, 2, 3), keepdim=True), 0.8 * s),
    "pixelate": lambda x, s, g: torch.stack([_pixelate(im, 1.5 + 4.5 * float(v)) for im, v in zip(x, s)]),
    "quantise": lambda x, s, g: torch.round(x * (33 - 30 * s).view(-1, 1, 1, 1)) / (33 - 30 * s).view(-1, 1, 1, 1),
    "gamma": lambda x, s, g: x.clamp(0, 1) ** (1 + 1.5 * s).view(-1, 1, 1, 1),
}
LEVELS = 3                                # strength bins per degradation (mild, moderate, strong)


def _mix(x: torch.Tensor, target: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    w = w.view(-1, 1, 1, 1)
    return x * (1 - w) + target * w


def _pixelate(im: torch.Tensor, factor: float) -> torch.Tensor:
    """Area-averaged down-sampling by `factor`, nearest-neighbour back up (blocky)."""
    side = max(2, round(im.shape[-1] / factor))
    small = F.adaptive_avg_pool2d(im[None], side)
    return F.interpolate(small, size=im.shape[-2:], mode="nearest")[0]


def degrade(x: torch.Tensor, labels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Label 0: as is; label 1 + k * LEVELS + b: degradation k at a strength drawn in bin b."""
    x = x.clone()
    strength = (((labels - 1) % LEVELS).float() + torch.rand(len(labels), generator=gen)) / LEVELS
    for k, fn in enumerate(DEGRADATIONS.values()):
        idx = ((labels > 0) & ((labels - 1) // LEVELS == k)).nonzero()[:, 0]
        if len(idx):
            x[idx] = fn(x[idx], strength[idx], gen).clamp(0, 1)
    return x


def n_classes(recipe: dict, photos=PHOTOS) -> int:
    task = recipe["task"]
    if task == "exemplar":
        return len(photos) * recipe["grid"] ** 2
    return 4 if task == "rotation" else 1 + len(DEGRADATIONS) * LEVELS


def _sample(photos: list[torch.Tensor], recipe: dict, u: torch.Tensor, label: int) -> torch.Tensor:
    """One crop (3, S, S) for `label`: exemplar, the label's region; rotation, turned label x 90 degrees."""
    g = recipe["grid"]
    if recipe["task"] == "exemplar":
        im = photos[label // (g * g)]
        box = _exemplar_box(im, label % (g * g), g, u)
    else:                                   # rotation, degradation: any crop of any photo
        im = photos[min(int(float(u[3]) * len(photos)), len(photos) - 1)]
        box = _random_box(im, u)
    x = _crop(im, box, recipe["size"], bool(u[4] < 0.5))
    return torch.rot90(x, label, (1, 2)) if recipe["task"] == "rotation" else x


def sample_batch(photos: list[torch.Tensor], recipe: dict, gen: torch.Generator):
    """(x (B, 3, S, S) normalised as the kit's crops are, labels (B,)) of the recipe's task."""
    b = recipe["batch"]
    y = torch.randint(n_classes(recipe, photos), (b,), generator=gen)
    u = torch.rand(b, 5, generator=gen)
    x = torch.stack([_sample(photos, recipe, u[i], int(y[i])) for i in range(b)])
    if recipe["augment"] == "3-augment":
        x = three_augment(x, gen)
    if recipe["task"] == "degradation":
        x = degrade(x, y, gen)
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1)
    return (x - mean) / std, y


# ---- training ------------------------------------------------------------------------------------------
def _lr(step: int, recipe: dict) -> float:
    warm, total = recipe["warmup_steps"], recipe["steps"]
    if step < warm:
        return recipe["lr"] * (step + 1) / warm
    return recipe["lr"] * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def _fit(encoder: nn.Module, recipe: dict, log: list, desc: str = "proxy pretraining",
         progress: bool = True) -> None:
    """Train encoder + a linear head on the recipe's task (the head is dropped)."""
    photos, gen = load_photos(), torch.Generator().manual_seed(recipe["seed"])
    dim = encoder(torch.zeros(1, 3, recipe["size"], recipe["size"])).shape[-1]     # pooled: the CLS token(s)
    head = nn.Linear(dim, n_classes(recipe))
    params = list(encoder.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=recipe["lr"], weight_decay=recipe["weight_decay"])
    encoder.train()
    for step in tqdm(range(recipe["steps"]), desc=desc, unit="step", disable=not progress, leave=False):
        for group in opt.param_groups:
            group["lr"] = _lr(step, recipe)
        x, y = sample_batch(photos, recipe, gen)
        logits = head(encoder(x))
        loss = F.cross_entropy(logits, y, label_smoothing=recipe["label_smoothing"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        log.append((loss.item(), (logits.argmax(1) == y).float().mean().item()))
    encoder.eval()


def pretrain(build: Callable[[], nn.Module], recipe: dict, desc: str = "proxy pretraining",
             progress: bool = True) -> tuple[dict[str, torch.Tensor], list]:
    """The proxy-pretrained encoder's state dict (and the (loss, accuracy) of each step). Deterministic:
    seeded, on the CPU with THREADS threads; the caller's RNG state and thread count are left as they were."""
    threads = torch.get_num_threads()
    log: list = []
    try:
        torch.set_num_threads(THREADS)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(recipe["seed"])
            encoder = build()
            _fit(encoder, recipe, log, desc, progress)
    finally:
        torch.set_num_threads(threads)
    return {k: v.detach().contiguous() for k, v in encoder.state_dict().items()}, log


# ---- cache ---------------------------------------------------------------------------------------------
def folder(data_root=None, recipe: str = DEFAULT_RECIPE) -> Path:
    return default_root(data_root) / "pretrained" / recipe


def architecture(build: Callable[[], nn.Module]) -> str:
    """A digest of the encoder's parameter names and shapes: a file made for another architecture of the
    same name (a changed tiny encoder) is not current, rather than failing the strict load."""
    with torch.device("meta"):
        shapes = [(k, tuple(v.shape)) for k, v in build().state_dict().items()]
    return hashlib.sha256(repr(shapes).encode()).hexdigest()[:16]


def _identity(name: str, recipe: str, build: Callable[[], nn.Module]) -> dict:
    """What decides the weights; the JSON beside them must match it."""
    if recipe not in RECIPES:
        raise KitError(f"model.proxy_pretraining: unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
    return {"encoder": name, "recipe": recipe, **RECIPES[recipe], "photos": list(PHOTOS),
            "architecture": architecture(build)}


def is_current(weights: Path, name: str, recipe: str, build: Callable[[], nn.Module]) -> bool:
    meta = weights.with_suffix(".json")
    if not (weights.is_file() and meta.is_file()):
        return False
    try:
        info = read_json(meta, "proxy pretraining record")
    except KitError:
        return False
    return info.get("identity") == _identity(name, recipe, build) and info.get("sha256") == file_sha256(weights)


def _announce(name: str, recipe: str, path: Path) -> None:
    """The line a build prints first: what, where, and about how long."""
    r = RECIPES[recipe]
    took = f", about {BUILD_S[name] * r['steps'] / 200:.0f} s on an idle core" if name in BUILD_S else ""
    print(f"proxy pretraining: building {name} ({recipe}: {r['steps']} steps of {r['batch']} crops on "
          f"{THREADS} CPU thread{took}) into {path}; `iqa-kit proxy` builds it ahead of time", flush=True)


def proxy_weights(name: str, build: Callable[[], nn.Module], data_root=None, recipe: str = DEFAULT_RECIPE,
                  progress: bool = True) -> Path:
    """The cached proxy-pretrained weights of encoder `name` (built by `build()` at SIZE), pretrained
    first when missing or made by another recipe (a line says so, and a progress bar counts the steps
    when progress). Returns the .safetensors path."""
    path = folder(data_root, recipe) / f"{name}.safetensors"
    if is_current(path, name, recipe, build):
        return path
    _announce(name, recipe, path)
    t0 = time.perf_counter()
    state, log = pretrain(build, RECIPES[recipe], f"proxy {name}", progress)
    atomic_save(state, path, save_safetensors)
    n = max(1, len(log) // 10)                # the last tenth of the steps
    atomic_write_json({"identity": _identity(name, recipe, build), "sha256": file_sha256(path),
                       "seconds": round(time.perf_counter() - t0, 1), "torch": torch.__version__,
                       "final_loss": float(np.mean([l for l, _ in log[-n:]])),
                       "final_accuracy": float(np.mean([a for _, a in log[-n:]]))}, path.with_suffix(".json"))
    print(f"proxy pretraining: {name} built in {time.perf_counter() - t0:.0f} s", flush=True)
    return path


def encoder_source(cfg, name: str, build: Callable[[], nn.Module], hub_id: str) -> str:
    """Where a model's pretrained encoder comes from: model.weights when set; else, at the tiny size,
    the cached proxy pretraining (built at SIZE on first use); else ImageNet's, from the hub or
    $IQA_KIT_WEIGHTS (pretrained.weights_source)."""
    if cfg.model.weights:
        return cfg.model.weights
    if cfg.uses_proxy_weights():
        return str(proxy_weights(name, build, cfg.data.data_root, cfg.model.proxy_pretraining))
    return weights_source(hub_id)


def build_ahead(cfgs) -> list[Path]:
    """Build now the proxy-pretrained encoders that the models of `cfgs` load (each file once), as their
    `create_model` would on first use; the folders that hold them."""
    folders = []
    for cfg in cfgs:
        if cfg.uses_proxy_weights():
            create_model(cfg)                 # builds exactly the encoders this model loads, if missing
            folders.append(folder(cfg.data.data_root, cfg.model.proxy_pretraining))
    return list(dict.fromkeys(folders))
