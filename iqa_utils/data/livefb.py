"""LIVE-FB / FLIVE (PaQ-2-PiQ) -> Manifest, with the patch labels when present.

Release layout under root (default folder name `FLIVE_Database`):

    labels_image.csv          columns name, mos; name carries a source subfolder, e.g.
                              "blur_dataset/xxx.jpg", "voc_emotic_ava/xxx.jpg", "EE371R/xxx.jpg"
    database/<name>           the 39,810 images
  optional patch labels (CSFIQA Fig. 2):
    labels_image_3patch.csv   name_image, mos_image, mos_patch_1..3 and the boxes
                              left/top/right/bottom_{image,patch_1,patch_2,patch_3} (pixels),
                              height_image, width_image (used when the image box is absent)
    labels_patch.csv          name, mos of each patch file (database/patches/<stem>_patch_<k>.jpg)

Label: MOS about 0-100 (higher is better). No resize (DEIQT takes random crops of the original).

`extras["patches"]` (when a patch file is present) is a DataFrame, one row per patch: image (the name
in labels_image.csv), patch (1..3), name (patch file relative to database/), path, mos, the box
(left, top, right, bottom, or NaN without boxes), rel_area (patch area / image area), rel_side
(sqrt(rel_area): about 0.2 / 0.3 / 0.4 for the three sizes), size_rank (1 = smallest of the image's
patches) and exists (9 EE371R patch files are missing from some copies; not an error). The relative
size is always derived from the boxes, never from the patch index.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from .manifest import (EXPECTED_COUNTS, DatasetError, Manifest, absent_files, finish_manifest, make_df,
                       numeric_column, read_table, require_columns, require_dir)

NAME = "LIVEFB"
LABEL_FILE, NAME_COLUMN, LABEL_COLUMN = "labels_image.csv", "name", "mos"
IMAGES = "database"
PATCH3_FILE, PATCH_FILE, PATCH_DIR = "labels_image_3patch.csv", "labels_patch.csv", "patches"
N_PATCHES = 3
_BOX = ("left", "top", "right", "bottom")
_PATCH_NAME = re.compile(r"^(?P<stem>.+)_patch_(?P<k>\d+)(?P<ext>\.\w+)$")


def _patch_name(image_name: str, k: int) -> str:
    stem, ext = Path(image_name).stem, Path(image_name).suffix or ".jpg"
    return f"{PATCH_DIR}/{stem}_patch_{k}{ext}"


def _patches_from_3patch(path: Path) -> pd.DataFrame:
    patch_boxes = [f"{b}_patch_{k}" for k in range(1, N_PATCHES + 1) for b in _BOX]
    mos_cols = [f"mos_patch_{k}" for k in range(1, N_PATCHES + 1)]
    table = read_table(path, ["name_image", *mos_cols, *patch_boxes])
    has_image_box = all(f"{b}_image" in table.columns for b in _BOX)
    if not has_image_box:   # the image area then comes from its size columns
        require_columns(table, ["height_image", "width_image"], path)
    records = []
    for rec in table.to_dict("records"):
        if has_image_box:
            img_area = (rec["right_image"] - rec["left_image"]) * (rec["bottom_image"] - rec["top_image"])
        else:
            img_area = rec["height_image"] * rec["width_image"]
        if not img_area > 0:
            raise DatasetError(f"{path}: image {rec['name_image']!r} has no area")
        for k in range(1, N_PATCHES + 1):
            given = rec.get(f"name_patch_{k}")
            name = given.strip() if isinstance(given, str) and given.strip() else \
                _patch_name(rec["name_image"], k)
            box = [float(rec[f"{b}_patch_{k}"]) for b in _BOX]
            rel_area = (box[2] - box[0]) * (box[3] - box[1]) / img_area
            records.append(dict(image=rec["name_image"], patch=k, name=name, mos=float(rec[f"mos_patch_{k}"]),
                                **dict(zip(_BOX, box)), rel_area=rel_area))
    return pd.DataFrame(records)


def _patches_from_list(path: Path, image_names) -> pd.DataFrame:
    """labels_patch.csv: no boxes, so sizes are unknown (NaN). The image is found by the patch file's
    stem among labels_image.csv's names."""
    table = read_table(path, ["name", "mos"])
    by_stem = {Path(n).stem: n for n in image_names}
    records = []
    for i, rec in enumerate(table.itertuples(index=False)):
        name = str(rec.name).strip()
        m = _PATCH_NAME.match(Path(name).name)
        if m is None:
            raise DatasetError(f"{path}, data row {i + 1}: patch name {name!r} is not '<image>_patch_<k>.<ext>'")
        if "/" not in name:     # names relative to database/patches/
            name = f"{PATCH_DIR}/{name}"
        records.append(dict(image=by_stem.get(m["stem"], m["stem"] + m["ext"]), patch=int(m["k"]), name=name,
                            mos=float(rec.mos), **{b: np.nan for b in _BOX}, rel_area=np.nan))
    return pd.DataFrame(records)


def load_patches(root: Path, images: Path, image_names=()) -> pd.DataFrame | None:
    """The patch table (module docstring), from labels_image_3patch.csv or else labels_patch.csv."""
    if (root / PATCH3_FILE).is_file():
        df = _patches_from_3patch(root / PATCH3_FILE)
    elif (root / PATCH_FILE).is_file():
        df = _patches_from_list(root / PATCH_FILE, image_names)
    else:
        return None
    df["path"] = [str(images / n) for n in df.name]
    df["rel_side"] = np.sqrt(df.rel_area)
    df["size_rank"] = df.groupby("image").rel_area.rank(method="first").astype("Int64")
    absent = set(absent_files(df.path))
    df["exists"] = [p not in absent for p in df.path]
    cols = ["image", "patch", "name", "path", "mos", *_BOX, "rel_area", "rel_side", "size_rank", "exists"]
    return df[cols]


def parse(root: Path | str, expected_count: int | None = EXPECTED_COUNTS[NAME], check_files: bool = True,
          check_images: bool = False, patches: bool = True) -> Manifest:
    """Parse LIVE-FB (layout in the module docstring); patches=False skips the patch labels."""
    root = require_dir(root, NAME)
    label_path = root / LABEL_FILE
    table = read_table(label_path, (NAME_COLUMN, LABEL_COLUMN))
    images = require_dir(root / IMAGES, NAME) if check_files else root / IMAGES
    labels = numeric_column(table, LABEL_COLUMN, label_path)
    rows = [dict(path=images / str(name).strip(), label=y, direction="MOS", ref=None, distortion=None,
                 level=None) for name, y in zip(table[NAME_COLUMN], labels)]
    extras = {}
    if patches and (patch_df := load_patches(root, images, table[NAME_COLUMN].astype(str))) is not None:
        extras["patches"] = patch_df
    manifest = Manifest(NAME, root, make_df(rows), split_unit="image", label_range=(0.0, 100.0),
                        extras=extras)
    return finish_manifest(manifest, expected_count, check_files, check_images,
                           lambda: f"{label_path.name} has {len(table)} rows")
