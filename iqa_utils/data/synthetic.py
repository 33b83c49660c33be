"""The embedded synthetic dataset: the kit's default data, built offline from photos inside scikit-image.

Recipe (RECIPE_VERSION; every number is in `recipe.json` next to the images):
- References: `n_refs` (default 18, at most 24) square boxes cut from `skimage.data` photos (colour
  ones first, then greyscale ones as RGB), each resized to 160x160 (PIL Lanczos). `SOURCES` lists where
  each came from: (photo, top, left, side) in the photo's pixels.
- Distortions: 8 types x 4 levels (level 1 = mildest), applied in float [0, 1] and quantised to uint8.
  Group A ("synthetic_a"): gaussian_blur, white_noise, jpeg, contrast.
  Group B ("synthetic_b"): motion_blur, resample, colour_shift, salt_pepper.
  Random parts (noise, salt & pepper) draw from numpy Generator([seed, ref, type, level]).
- Pseudo-MOS (in the spirit of KADIS-700k's full-reference pseudo-labels), from the saved uint8
  images against their pristine reference, both scaled to [0, 1]:
    SSIM_s   = SSIM at scale s (skimage, Gaussian window sigma 1.5, RGB channels averaged);
               scale s+1 = 2x2 mean pooling of scale s; scales used while the short side >= 11 px (<= 3)
    MS       = prod_s max(SSIM_s, 0.01) ** w_s,  w = (0.5, 0.3, 0.2) renormalised over the scales used
    PSNR     = skimage PSNR in dB, data range 1
    MOS      = 100 * clip(0.7 * clip(MS, 0, 1) ** 1.5 + 0.3 * clip((PSNR - 15) / 25, 0, 1), 0, 1)
  Higher is better (direction "MOS"); the reference itself would score 100.
- Size: 18 refs x 8 types x 4 levels = 576 PNGs of 160x160 (about 45 MiB decoded); split unit = ref.

Layout of the built folder: refs/<ref>.png, images/<ref>_<distortion>_<level>.png, labels.csv
(image, ref, distortion, level, mos, ssim, msssim, psnr, sha1), recipe.json; and, once a smoke model has
been made, pretrained/ (the tiny encoders' proxy pretraining, models/proxy.py; kept across a rebuild).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from ..system import DATA_ROOT_ENV, cache_dir
from .manifest import DatasetError, Manifest

RECIPE_VERSION = 1
SEED = 20240611
REF_SIZE = 160
DEFAULT_N_REFS = 18

# (photo in skimage.data, top, left, side): square boxes, resized to REF_SIZE.
SOURCES = [
    ("astronaut", 20, 140, 260), ("astronaut", 252, 252, 260), ("chelsea", 0, 75, 300),
    ("coffee", 0, 100, 400), ("coffee", 60, 400, 200), ("rocket", 0, 107, 427), ("rocket", 227, 0, 200),
    ("stereo_motorcycle[0]", 0, 0, 500), ("stereo_motorcycle[0]", 100, 451, 290),
    ("stereo_motorcycle[1]", 100, 200, 400), ("hubble_deep_field", 0, 0, 436),
    ("hubble_deep_field", 436, 564, 436), ("immunohistochemistry", 0, 0, 300),
    ("immunohistochemistry", 212, 212, 300), ("retina", 0, 0, 1411), ("retina", 500, 500, 400),
    ("camera", 0, 0, 512), ("brick", 0, 0, 512),
    # beyond the default 18
    ("coins", 0, 40, 303), ("clock", 0, 50, 300), ("moon", 0, 0, 512), ("cell", 0, 0, 550),
    ("grass", 0, 0, 512), ("gravel", 0, 0, 512),
]

# type -> (group, parameter per level 1..4)
DISTORTIONS = {
    "gaussian_blur": ("a", [0.8, 1.5, 2.5, 4.0]),          # sigma, px
    "white_noise": ("a", [0.02, 0.05, 0.10, 0.18]),        # std of N(0, s) on [0, 1]
    "jpeg": ("a", [40, 20, 10, 4]),                        # PIL quality
    "contrast": ("a", [0.75, 0.55, 0.38, 0.22]),           # gain about the mean intensity
    "motion_blur": ("b", [3, 7, 11, 17]),                  # horizontal box kernel length, px
    "resample": ("b", [2, 3, 4, 6]),                       # down (bilinear) then up (bicubic) by this factor
    "colour_shift": ("b", [0.10, 0.20, 0.32, 0.50]),       # R gain 1+a, B gain 1-a (white-balance error)
    "salt_pepper": ("b", [0.01, 0.03, 0.07, 0.14]),        # share of pixels set to black or white
}
GROUPS = {"a": [d for d, (g, _) in DISTORTIONS.items() if g == "a"],
          "b": [d for d, (g, _) in DISTORTIONS.items() if g == "b"]}
SSIM_WEIGHTS = (0.5, 0.3, 0.2)
LABEL_COLUMNS = ["image", "ref", "distortion", "level", "mos", "ssim", "msssim", "psnr", "sha1"]


# ---- pixels --------------------------------------------------------------------------------------------
def photo(name: str) -> np.ndarray:
    """A skimage.data photo as uint8 (H, W, 3) (grey ones repeated, alpha dropped, binary ones 0/255)."""
    import skimage.data as skd
    from skimage.util import img_as_ubyte

    if name.startswith("stereo_motorcycle["):
        im = skd.stereo_motorcycle()[int(name[-2])]
    else:
        im = img_as_ubyte(getattr(skd, name)())
    if im.ndim == 2:
        im = np.stack([im] * 3, -1)
    return np.ascontiguousarray(im[..., :3])


def make_reference(source) -> np.ndarray:
    name, top, left, side = source
    im = photo(name)
    box = im[top:top + side, left:left + side]
    if box.shape[:2] != (side, side):
        raise ValueError(f"box {source} does not fit {name} {im.shape[:2]}")
    return np.asarray(Image.fromarray(box).resize((REF_SIZE, REF_SIZE), Image.LANCZOS))


def _to_u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)


def distort(ref: np.ndarray, kind: str, level: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 (H, W, 3) reference -> uint8 distorted image; level 1..4."""
    from scipy.ndimage import gaussian_filter, uniform_filter1d

    p = DISTORTIONS[kind][1][level - 1]
    x = ref.astype(np.float64) / 255.0
    h, w = ref.shape[:2]
    if kind == "gaussian_blur":
        x = gaussian_filter(x, sigma=(p, p, 0), mode="reflect")
    elif kind == "white_noise":
        x = x + rng.normal(0.0, p, x.shape)
    elif kind == "jpeg":
        buf = io.BytesIO()
        Image.fromarray(ref).save(buf, format="JPEG", quality=int(p))
        return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    elif kind == "contrast":
        m = x.mean()
        x = m + (x - m) * p
    elif kind == "motion_blur":
        x = uniform_filter1d(x, size=int(p), axis=1, mode="reflect")
    elif kind == "resample":
        small = Image.fromarray(ref).resize((max(1, round(w / p)), max(1, round(h / p))), Image.BILINEAR)
        return np.asarray(small.resize((w, h), Image.BICUBIC))
    elif kind == "colour_shift":
        x = x * np.array([1.0 + p, 1.0, 1.0 - p])
    elif kind == "salt_pepper":
        hit = rng.random((h, w)) < p
        x = x.copy()
        x[hit] = (rng.random(int(hit.sum())) < 0.5).astype(np.float64)[:, None]
    else:
        raise ValueError(f"unknown distortion {kind!r}")
    return _to_u8(x)


# ---- labels --------------------------------------------------------------------------------------------
def fr_measures(ref: np.ndarray, dist: np.ndarray) -> dict:
    """Full-reference measures and the pseudo-MOS of a uint8 image against its uint8 reference."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity
    from skimage.transform import downscale_local_mean

    a, b = ref.astype(np.float64) / 255.0, dist.astype(np.float64) / 255.0
    ssims = []
    for _ in SSIM_WEIGHTS:
        if min(a.shape[:2]) < 11:
            break
        ssims.append(structural_similarity(a, b, channel_axis=-1, data_range=1.0, gaussian_weights=True,
                                           sigma=1.5, use_sample_covariance=False))
        a, b = downscale_local_mean(a, (2, 2, 1)), downscale_local_mean(b, (2, 2, 1))
    if not ssims:
        raise ValueError(f"image of {ref.shape[:2]} px is too small for SSIM (needs 11 px)")
    w = np.array(SSIM_WEIGHTS[:len(ssims)])
    ms = float(np.prod(np.maximum(ssims, 0.01) ** (w / w.sum())))
    mse = float(np.mean((ref.astype(np.float64) - dist.astype(np.float64)) ** 2))
    psnr = 100.0 if mse == 0 else float(peak_signal_noise_ratio(ref, dist, data_range=255))
    return {"ssim": float(ssims[0]), "msssim": ms, "psnr": psnr, "mos": pseudo_mos(ms, psnr)}


def pseudo_mos(msssim: float, psnr: float) -> float:
    """The documented monotone map of (MS-SSIM-like, PSNR) to [0, 100]."""
    q_ms = min(max(msssim, 0.0), 1.0) ** 1.5
    q_psnr = min(max((psnr - 15.0) / 25.0, 0.0), 1.0)
    return float(100.0 * min(max(0.7 * q_ms + 0.3 * q_psnr, 0.0), 1.0))


# ---- build ---------------------------------------------------------------------------------------------
def _recipe(n_refs: int) -> dict:
    return {
        "name": "iqa-kit synthetic", "version": RECIPE_VERSION, "seed": SEED, "ref_size": REF_SIZE,
        "n_refs": n_refs,
        "sources": [{"ref": f"ref_{i:02d}", "photo": f"skimage.data.{s[0]}", "top": s[1], "left": s[2],
                     "side": s[3]} for i, s in enumerate(SOURCES[:n_refs])],
        "distortions": {k: {"group": g, "levels": v} for k, (g, v) in DISTORTIONS.items()},
        "pseudo_mos": "100*clip(0.7*clip(MS,0,1)**1.5 + 0.3*clip((PSNR-15)/25,0,1), 0, 1); MS = prod_s "
                      "max(SSIM_s,0.01)**w_s, w=(0.5,0.3,0.2) over 2x2-mean-pooled scales with >=11 px",
    }


def _is_complete(root: Path, n_refs: int) -> bool:
    try:
        recipe = json.loads((root / "recipe.json").read_text())
        if recipe.get("version") != RECIPE_VERSION or recipe.get("n_refs") != n_refs:
            return False
        labels = pd.read_csv(root / "labels.csv")
    except (OSError, ValueError):
        return False
    return (len(labels) == n_refs * len(DISTORTIONS) * 4
            and all((root / "images" / f).is_file() for f in labels.image))


def _sha1(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def _write_png(arr: np.ndarray, path: Path) -> str:
    Image.fromarray(arr).save(path, format="PNG", compress_level=1)
    return _sha1(path)


def build_synthetic(out_dir, force: bool = False, progress: bool = True, n_refs: int = DEFAULT_N_REFS) -> Path:
    """Build the set into out_dir (reused when complete and of this recipe version); returns out_dir.

    Written to a temporary sibling folder and renamed, so an interrupted build leaves nothing partial.
    """
    out_dir = Path(out_dir).expanduser()
    if not 1 <= n_refs <= len(SOURCES):
        raise ValueError(f"n_refs must be in 1..{len(SOURCES)}")
    if not force and _is_complete(out_dir, n_refs):
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        (tmp / "refs").mkdir()
        (tmp / "images").mkdir()
        rows = []
        kinds = list(DISTORTIONS)
        for r, source in enumerate(tqdm(SOURCES[:n_refs], desc="building synthetic set", unit="ref",
                                        disable=not progress)):
            ref_id = f"ref_{r:02d}"
            ref = make_reference(source)
            _write_png(ref, tmp / "refs" / f"{ref_id}.png")
            for t, kind in enumerate(kinds):
                for level in range(1, 5):
                    rng = np.random.default_rng([SEED, r, t, level])
                    img = distort(ref, kind, level, rng)
                    name = f"{ref_id}_{kind}_{level}.png"
                    sha = _write_png(img, tmp / "images" / name)
                    m = fr_measures(ref, img)
                    rows.append({"image": name, "ref": ref_id, "distortion": kind, "level": level,
                                 "mos": round(m["mos"], 4), "ssim": round(m["ssim"], 6),
                                 "msssim": round(m["msssim"], 6), "psnr": round(m["psnr"], 4), "sha1": sha})
        pd.DataFrame(rows, columns=LABEL_COLUMNS).to_csv(tmp / "labels.csv", index=False)
        (tmp / "recipe.json").write_text(json.dumps(_recipe(n_refs), indent=1))
        if (out_dir / "pretrained").is_dir():   # the proxy-pretrained encoders (models/proxy.py) stay
            (out_dir / "pretrained").rename(tmp / "pretrained")
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            out_dir.rename(old)
            shutil.rmtree(old, ignore_errors=True)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if _is_complete(out_dir, n_refs):  # another process finished the same build first
            return out_dir
        raise
    return out_dir


# ---- read ----------------------------------------------------------------------------------------------
def parse(root, verify: bool = True) -> Manifest:
    """Manifest of a built folder; DatasetError names a missing, altered or unlisted-column file."""
    root = Path(root)
    labels_path = root / "labels.csv"
    if not labels_path.is_file():
        raise DatasetError(f"synthetic: label file is missing: {labels_path} (run build_synthetic)")
    try:
        lab = pd.read_csv(labels_path)
    except Exception as e:
        raise DatasetError(f"synthetic: cannot read {labels_path}: {e}") from None
    missing = [c for c in LABEL_COLUMNS if c not in lab.columns]
    if missing:
        raise DatasetError(f"synthetic: {labels_path} lacks columns {missing}")
    if lab.mos.isna().any() or not lab.mos.between(0, 100).all():
        raise DatasetError(f"synthetic: {labels_path} has MOS values outside [0, 100]")
    paths = [root / "images" / f for f in lab.image]
    for p, sha in zip(paths, lab.sha1):
        if not p.is_file():
            raise DatasetError(f"synthetic: image file is missing: {p}")
        if verify and _sha1(p) != sha:
            raise DatasetError(f"synthetic: image file is corrupted (checksum differs): {p}; "
                               f"rebuild with build_synthetic(root, force=True)")
    df = pd.DataFrame({"path": [str(p) for p in paths], "label": lab.mos.astype(float), "direction": "MOS",
                       "ref": lab.ref, "distortion": lab.distortion, "level": lab.level.astype(int)})
    ref_paths = {r: str(root / "refs" / f"{r}.png") for r in sorted(lab.ref.unique())}
    recipe = json.loads((root / "recipe.json").read_text()) if (root / "recipe.json").is_file() else {}
    extras = {"fr": lab[["ssim", "msssim", "psnr"]].copy(), "ref_paths": ref_paths, "recipe": recipe}
    return Manifest("synthetic", root, df, split_unit="ref", label_range=(0.0, 100.0), extras=extras)


def default_root(data_root=None) -> Path:
    """data_root/synthetic, else $IQA_KIT_DATA/synthetic, else the kit's cache folder's
    (<$IQA_KIT_CACHE or ~/.cache/iqa-kit>/synthetic): it is rebuilt from the recipe when missing."""
    if data_root is not None:
        return Path(data_root).expanduser() / "synthetic"
    env = os.environ.get(DATA_ROOT_ENV)
    return Path(env).expanduser() / "synthetic" if env else cache_dir("synthetic")


def load(name: str = "synthetic", data_root=None, progress: bool = True, n_refs: int = DEFAULT_N_REFS) -> Manifest:
    """The registry's entry: build if needed, then parse. "synthetic_a"/"synthetic_b" keep one group."""
    name = name.lower()
    if name not in ("synthetic", "synthetic_a", "synthetic_b"):
        raise KeyError(f"unknown synthetic set {name!r}; choose synthetic, synthetic_a or synthetic_b")
    m = parse(build_synthetic(default_root(data_root), progress=progress, n_refs=n_refs))
    return group(m, name[-1]) if name != "synthetic" else m


def group(manifest: Manifest, which: str) -> Manifest:
    """The rows of distortion group "a" or "b" (see GROUPS), named synthetic_<which>."""
    rows = manifest.df.index[manifest.df.distortion.isin(GROUPS[which])]
    sub = manifest.subset(rows)
    sub.name = f"synthetic_{which}"
    sub.extras = dict(manifest.extras, fr=manifest.extras["fr"].iloc[rows].reset_index(drop=True))
    return sub


# ---- crop-level labels ("MOS at two scales") -----------------------------------------------------------
def scale_labels(manifest: Manifest, ratios=(0.2, 0.4), n_per_image: int = 3, seed: int = 0) -> pd.DataFrame:
    """Pseudo-MOS of random square crops of side ratio * min(H, W), against the same crop of the reference.

    The synthetic counterpart of LIVEFB's patch labels at 20% and 40% of the image (CSFIQA Fig. 2).
    One row per crop: row (manifest row), ref, distortion, level, mos (image), ratio, top, left, side,
    mos_crop, ssim, psnr.
    """
    rng = np.random.default_rng([seed, 7])
    refs: dict[str, np.ndarray] = {}
    out = []
    for i, row in tqdm(manifest.df.iterrows(), total=len(manifest), desc="crop labels",
                       disable=len(manifest) < 200):
        img = np.asarray(Image.open(row.path).convert("RGB"))
        if row.ref not in refs:
            refs[row.ref] = np.asarray(Image.open(manifest.extras["ref_paths"][row.ref]).convert("RGB"))
        ref = refs[row.ref]
        h, w = img.shape[:2]
        for ratio in ratios:
            side = max(11, round(ratio * min(h, w)))
            for _ in range(n_per_image):
                t, l = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
                m = fr_measures(ref[t:t + side, l:l + side], img[t:t + side, l:l + side])
                out.append({"row": i, "ref": row.ref, "distortion": row.distortion, "level": row.level,
                            "mos": row.label, "ratio": ratio, "top": t, "left": l, "side": side,
                            "mos_crop": m["mos"], "ssim": m["ssim"], "psnr": m["psnr"]})
    return pd.DataFrame(out)
