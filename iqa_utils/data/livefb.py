"""LIVE-FB / FLIVE (PaQ-2-PiQ) -> Manifest, with the patch labels when present.

Release layout under root (default folder name `FLIVE_Database`):

    labels_image.csv          columns name, mos; name carries a source subfolder, e.g.
                              "blur_dataset/xxx.jpg", "voc_emotic_ava/xxx.jpg", "EE371R/xxx.jpg"
    database/<name>           the 39,810 images
  optional patch labels (CSFIQA Fig. 2):
    labels_image_3patch.csv   name_image, name_patch, mos_image, mos_patch_1..3, the boxes
                              left/top/right/bottom_{image,patch_1,patch_2,patch_3} (pixels) and
                              height/width_{image,patch_k}; name_patch is "patches/<image file name>"
                              without the "_patch_<k>.jpg" ending
    labels_patch.csv          name, mos of each patch file, e.g. "patches/rq59.jpg_patch_1.jpg"
    database/patches/         the patch files, named after the WHOLE file name of their image:
                              EE371R/rq59.jpg -> patches/rq59.jpg_patch_1.jpg (as the authors'
                              preparation notebook writes them)

Patch names are accepted with or without the leading "patches/". The 3patch table's patch file is
name_patch_<k> when such a column exists, else <name_patch>_patch_<k>.jpg, else derived from name_image
the same way. labels_patch.csv names are matched to their image by file name (then, for copies named
<stem>_patch_<k>.jpg, by stem).

Label: MOS 0-100 (higher is better). No resize (DEIQT takes random crops of the original).

`extras["patches"]` (when a patch file is present) is a DataFrame, one row per patch: image (the name
in labels_image.csv), patch (1..3), name (patch file relative to database/), path, mos, the box
(left, top, right, bottom, or NaN without boxes), rel_area (patch area / image area), rel_side
(sqrt(rel_area): about 0.2 / 0.3 / 0.4 for the three sizes), size_rank (1 = smallest of the image's
patches) and exists. Listed patch files that are absent (9 EE371R patches are missing from the
FLIVE_Database copy) keep their labels but are counted: a warning names how many and the first few, and
`extras["patches_missing"]` holds the count. The relative size is always derived from the boxes, never
from the patch index.
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from .manifest import (EXPECTED_COUNTS, DatasetError, Manifest, absent_files, check_label_values,
                       finish_manifest, list_text, make_df, numeric_column, read_table, require_columns,
                       require_dir, rows_text)

NAME = "LIVEFB"
LABEL_FILE, NAME_COLUMN, LABEL_COLUMN = "labels_image.csv", "name", "mos"
IMAGES = "database"
PATCH3_FILE, PATCH_FILE, PATCH_DIR = "labels_image_3patch.csv", "labels_patch.csv", "patches"
N_PATCHES = 3
# ratings on a 0..100 slider; the release holds an exact 0.0 (blur_dataset/motion0091.jpg)
LABEL_BOUNDS = (0.0, 100.0)
_BOX = ("left", "top", "right", "bottom")
_PATCH_NAME = re.compile(r"^(?P<image>.+)_patch_(?P<k>\d+)\.\w+$")


def _text(value) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _patch_path(name: str) -> str:
    """A patch name as listed -> its path relative to database/ (the leading patches/ added when absent)."""
    name = name.strip()
    return name if "/" in name else f"{PATCH_DIR}/{name}"


def _patch_name(rec: dict, k: int) -> str:
    """Patch k of a labels_image_3patch.csv row (module docstring for the order of preference)."""
    if _text(given := rec.get(f"name_patch_{k}")):
        return _patch_path(given)
    prefix = rec.get("name_patch")
    prefix = prefix.strip() if _text(prefix) else Path(str(rec["name_image"]).strip()).name
    return _patch_path(f"{prefix}_patch_{k}.jpg")


def _image_areas(table: pd.DataFrame, path: Path) -> np.ndarray:
    """Each row's image area from its box, else from its size columns; DatasetError when not positive."""
    if all(f"{b}_image" in table.columns for b in _BOX):
        n = {c: np.asarray(numeric_column(table, f"{c}_image", path)) for c in _BOX}
        area = (n["right"] - n["left"]) * (n["bottom"] - n["top"])
    else:
        require_columns(table, ["height_image", "width_image"], path)
        area = np.multiply(*(np.asarray(numeric_column(table, c, path)) for c in ("height_image", "width_image")))
    bad = np.flatnonzero(~(area > 0))
    if len(bad):
        raise DatasetError(f"{path}: image {table.name_image.iloc[bad[0]]!r} has no area "
                           f"({rows_text('data row', bad + 1)})")
    return area


def _patches_from_3patch(path: Path) -> pd.DataFrame:
    table = read_table(path, ["name_image", *(f"mos_patch_{k}" for k in range(1, N_PATCHES + 1)),
                              *(f"{b}_patch_{k}" for k in range(1, N_PATCHES + 1) for b in _BOX)])
    img_area, records = _image_areas(table, path), table.to_dict("records")
    frames = []
    for k in range(1, N_PATCHES + 1):
        box = {b: np.asarray(numeric_column(table, f"{b}_patch_{k}", path)) for b in _BOX}
        frames.append(pd.DataFrame(dict(
            image=table.name_image.astype(str).str.strip(), patch=k, name=[_patch_name(r, k) for r in records],
            mos=numeric_column(table, f"mos_patch_{k}", path), **box,
            rel_area=(box["right"] - box["left"]) * (box["bottom"] - box["top"]) / img_area,
            label_row=np.arange(1, len(table) + 1))))
    return pd.concat(frames).sort_values(["label_row", "patch"], kind="stable").reset_index(drop=True)


def _patches_from_list(path: Path, image_names) -> pd.DataFrame:
    """labels_patch.csv: no boxes, so sizes are unknown (NaN). The image is found by the file name the
    patch is named after (module docstring)."""
    table = read_table(path, ["name", "mos"])
    mos = numeric_column(table, "mos", path)
    by_file = {Path(n).name: n for n in image_names}
    by_stem = {Path(n).stem: n for n in image_names}
    records = []
    for i, (name, y) in enumerate(zip(table["name"].astype(str), mos)):
        m = _PATCH_NAME.match(Path(name.strip()).name)
        if m is None:
            raise DatasetError(f"{path}, data row {i + 1}: patch name {name!r} is not "
                               f"'patches/<image file name>_patch_<k>.jpg'")
        image = by_file.get(m["image"]) or by_stem.get(m["image"]) or m["image"]
        records.append(dict(image=image, patch=int(m["k"]), name=_patch_path(name), mos=y,
                            **{b: np.nan for b in _BOX}, rel_area=np.nan, label_row=i + 1))
    return pd.DataFrame(records)


def _count_missing(df: pd.DataFrame, folder: Path) -> int:
    """Warn naming how many listed patch files are absent (and the first few); return the count."""
    missing = [Path(p).name for p in df.path[~df.exists]]
    if missing:
        warnings.warn(f"{NAME}: {len(missing)} of {len(df)} listed patch files are missing under {folder}: "
                      f"{list_text(missing)} (their labels are kept; extras['patches'].exists marks them)",
                      stacklevel=3)
    return len(missing)


def load_patches(root: Path, images: Path, image_names=()) -> pd.DataFrame | None:
    """The patch table (module docstring), from labels_image_3patch.csv or else labels_patch.csv."""
    if (root / PATCH3_FILE).is_file():
        source, df = root / PATCH3_FILE, _patches_from_3patch(root / PATCH3_FILE)
    elif (root / PATCH_FILE).is_file():
        source, df = root / PATCH_FILE, _patches_from_list(root / PATCH_FILE, image_names)
    else:
        return None
    check_label_values(df.mos, df.label_row, source, LABEL_BOUNDS, what="patch labels")
    df["path"] = [str(images / n) for n in df.name]
    df["rel_side"] = np.sqrt(df.rel_area)
    df["size_rank"] = df.groupby("image").rel_area.rank(method="first").astype("Int64")
    absent = set(absent_files(df.path))
    df["exists"] = [p not in absent for p in df.path]
    cols = ["image", "patch", "name", "path", "mos", *_BOX, "rel_area", "rel_side", "size_rank", "exists"]
    return df[cols]


def _pixels(path) -> float:
    """Width x height from the image header (no decoding); NaN when the file cannot be read."""
    try:
        with Image.open(path) as im:
            return float(im.size[0] * im.size[1])
    except OSError:
        return np.nan


def sides_from_files(patches: pd.DataFrame, images: Path) -> pd.Series:
    """Each patch's side relative to its image, sqrt(patch pixels / image pixels), measured from the files
    (for a copy with labels_patch.csv but no boxes): NaN where the patch or its image is absent.
    Reads headers only, so call it where the sizes are needed (CSFIQA Fig. 2), not in every parse."""
    img = {name: _pixels(images / name) for name in patches.image.unique()}
    area = [_pixels(p) / img[i] if ok else np.nan for p, i, ok in zip(patches.path, patches.image, patches.exists)]
    return pd.Series(np.sqrt(np.asarray(area, dtype=float)), index=patches.index, name="rel_side")


def parse(root: Path | str, expected_count: int | None = EXPECTED_COUNTS[NAME], check_files: bool = True,
          check_images: bool = False, patches: bool = True) -> Manifest:
    """Parse LIVE-FB (layout in the module docstring); patches=False skips the patch labels."""
    root = require_dir(root, NAME)
    label_path = root / LABEL_FILE
    table = read_table(label_path, (NAME_COLUMN, LABEL_COLUMN))
    images = require_dir(root / IMAGES, NAME) if check_files else root / IMAGES
    labels = numeric_column(table, LABEL_COLUMN, label_path)
    names = table[NAME_COLUMN].astype(str).str.strip()
    rows = [dict(path=images / name, label=y, direction="MOS", ref=None, distortion=None, level=None,
                 label_row=i + 1) for i, (name, y) in enumerate(zip(names, labels))]
    extras = {}
    if patches and (patch_df := load_patches(root, images, names)) is not None:
        extras["patches"] = patch_df
        extras["patches_missing"] = _count_missing(patch_df, images / PATCH_DIR)
    manifest = Manifest(NAME, root, make_df(rows), split_unit="image", label_range=LABEL_BOUNDS,
                        extras=extras, label_file=label_path)
    return finish_manifest(manifest, expected_count, check_files, check_images,
                           lambda: f"{label_path.name} has {len(table)} rows")
