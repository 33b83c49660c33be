"""Image files as they are: 8-bit RGB from any mode PIL opens, and a decode check that reports every file.

`rgb8(im)` is the one conversion the kit uses (ImageStore's `decode_image` and `check_images`), so a file
that passes the check also decodes for training:

- 16-bit greyscale (PIL modes I;16*, and I holding 0..65535 as older Pillow opens 16-bit PNG/TIFF):
  scaled by 1/257 and rounded, so 65535 -> 255. PIL's convert("RGB") would clip these to white.
- 16-bit RGB: Pillow itself decodes these to 8 bits by keeping the high byte (v >> 8, within one level
  of v / 257); there is no 16-bit RGB mode to scale from.
- 32-bit integers beyond 0..65535 and floating-point pixels have no defined 8-bit scale: refused.
- Alpha (RGBA, LA, palette or RGB with a transparent colour): composited on white, as a viewer shows
  the image on a white page. Dropping alpha instead would show whatever colour the transparent pixels
  happen to store (often black).
- Palette, 1-bit, CMYK, YCbCr: PIL's convert("RGB").
"""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

GREY16_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_MAX_REASON = 120          # characters of an exception message kept in a reason


def _grey16_to_8(im: Image.Image) -> np.ndarray:
    a = np.asarray(im).astype(np.int64)
    if a.size and (a.min() < 0 or a.max() > 65535):
        raise ValueError(f"{im.mode} pixels span {a.min()}..{a.max()}, beyond 16 bit; no 8-bit scale is defined")
    return np.rint(a / 257.0).astype(np.uint8)


def rgb8(im: Image.Image) -> np.ndarray:
    """A PIL image -> uint8 (H, W, 3), by the rules in the module docstring."""
    if im.mode in GREY16_MODES:
        return np.repeat(_grey16_to_8(im)[..., None], 3, axis=2)
    if im.mode == "F":
        raise ValueError("floating-point pixels have no defined 8-bit scale; save the image as 8 or 16 bit")
    if im.has_transparency_data:
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, im.convert("RGBA")).convert("RGB"))
    return np.asarray(im.convert("RGB"))


def read_rgb8(path) -> np.ndarray:
    """Decode one file -> uint8 (H, W, 3). Raises what PIL raises (FileNotFoundError, OSError, ...)."""
    with Image.open(path) as im:
        return rgb8(im)


def _checked(path) -> tuple[str | None, str | None]:
    """(None, a digest of the decoded pixels) when `path` decodes, else (a short reason, None): missing,
    empty, not an image, truncated, ..."""
    path = Path(path)
    if not path.is_file():
        return "missing", None
    if path.stat().st_size == 0:
        return "empty file (0 bytes)", None
    try:
        a = read_rgb8(path)
    except UnidentifiedImageError:
        return "not an image PIL can read", None
    except Exception as e:  # PIL raises several types; the message says which problem it is
        text = str(e).splitlines()[0] if str(e) else type(e).__name__
        return ("truncated: " if "truncated" in text.lower() else "cannot decode: ") + text[:_MAX_REASON], None
    return None, hashlib.blake2b(np.ascontiguousarray(a).tobytes() + str(a.shape).encode(), digest_size=16).hexdigest()


def image_problem(path) -> str | None:
    """None when `path` decodes, else a short reason: missing, empty, not an image, truncated, ..."""
    return _checked(path)[0]


def check_images(manifest, progress: bool = True) -> list[tuple[str, str]]:
    """Decode every image of `manifest` once (threads; PIL releases the GIL while decoding) and return
    every unreadable one as (path, reason), in manifest order, and every image whose decoded pixels equal
    an earlier one's as (path, "same pixels as <the earlier path>"): a file listed under two names would
    put one image on both sides of a split. [] when all decode and differ."""
    paths = [str(p) for p in manifest.df.path]
    workers = max(1, min(8, os.cpu_count() or 1, len(paths)))
    with ThreadPoolExecutor(workers) as pool:
        checked = list(tqdm(pool.map(_checked, paths), total=len(paths), unit="img",
                            desc=f"checking {manifest.name}", disable=not progress, leave=False))
    first: dict[str, str] = {}
    problems = []
    for path, (why, digest) in zip(paths, checked):
        if why is None and digest in first:
            why = f"same pixels as {first[digest]}"
        first.setdefault(digest, path)
        if why is not None:
            problems.append((path, why))
    return problems
