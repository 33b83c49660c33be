"""KADID-10k -> Manifest.

Release layout under root (default folder name `kadid10k`):

    dmos.csv       columns dist_img, ref_img, dmos, var; e.g. "I01_01_01.png, I01.png, 4.57, 0.496"
    images/        the official zip's single folder holding references (I01.png) and distorted images
                   (I01_01_01.png = I<ref>_<type>_<level>.png); DEIQT instead expects the distorted ones
                   in distorted_images/ (and references in reference_images/): either is accepted.

Label: the `dmos` column is a 1-5 degradation-category mean where HIGHER IS BETTER, so direction is
"MOS" despite the column name. Reference id = characters 2-3 of ref_img; 25 types x 5 levels.
"""
from __future__ import annotations

import re
from pathlib import Path

from .manifest import (EXPECTED_COUNTS, DatasetError, FolderIndex, Manifest, finish_manifest, pick_folder,
                       make_df, missing_grid, read_table, require_dir)

NAME = "KADID-10k"
LABEL_FILE = "dmos.csv"
LABEL_COLUMNS = ("dist_img", "ref_img", "dmos", "var")
IMAGE_FOLDERS = ("images", "distorted_images")        # official single folder, DEIQT's split folder
# The 25 distortion types, numbered as in the release (index 0 = type 1).
DISTORTIONS = (
    "gaussian_blur", "lens_blur", "motion_blur", "color_diffusion", "color_shift", "color_quantization",
    "color_saturation_1", "color_saturation_2", "jpeg2000", "jpeg", "white_noise",
    "white_noise_color_component", "impulse_noise", "multiplicative_noise", "denoise", "brighten",
    "darken", "mean_shift", "jitter", "non_eccentricity_patch", "pixelate", "quantization",
    "color_block", "high_sharpen", "contrast_change")
_DIST_RE = re.compile(r"^i(\d\d)_(\d\d)_(\d\d)\.png$", re.IGNORECASE)
_REF_RE = re.compile(r"^i(\d\d)\.png$", re.IGNORECASE)


def distortion_name(code: int) -> str:
    return DISTORTIONS[code - 1] if 1 <= code <= len(DISTORTIONS) else f"type{code:02d}"


def parse(root: Path | str, expected_count: int | None = EXPECTED_COUNTS[NAME], check_files: bool = True,
          check_images: bool = False, image_folder: str | None = None) -> Manifest:
    """Parse KADID-10k (layout in the module docstring). image_folder: force "images" or
    "distorted_images"; default the first of IMAGE_FOLDERS that exists."""
    root = require_dir(root, NAME)
    label_path = root / LABEL_FILE
    table = read_table(label_path, LABEL_COLUMNS)
    folder = pick_folder(root, IMAGE_FOLDERS, NAME, image_folder, must_exist=check_files)
    images = FolderIndex(folder)
    rows = []
    for i, rec in enumerate(table.itertuples(index=False)):
        dist, ref = str(rec.dist_img).strip(), str(rec.ref_img).strip()
        m, r = _DIST_RE.match(dist), _REF_RE.match(ref)
        try:
            label = float(rec.dmos)
        except (TypeError, ValueError):
            m = None
        if m is None or r is None:
            raise DatasetError(f"{label_path}, data row {i + 1}: expected 'Irr_tt_ll.png, Irr.png, <dmos>', "
                               f"got {dist!r}, {ref!r}, {rec.dmos!r}")
        rows.append(dict(path=images.resolve(dist), label=label, direction="MOS", ref=r.group(1),
                         distortion=distortion_name(int(m.group(2))), level=int(m.group(3)), label_row=i + 1))
    # a mean of 1..5 ratings cannot leave [1, 5]
    manifest = Manifest(NAME, root, make_df(rows), split_unit="ref", label_range=(1.0, 5.0),
                        extras={"image_folder": folder.name}, label_file=label_path)
    return finish_manifest(manifest, expected_count, check_files, check_images,
                           lambda: missing_grid(manifest.df))
