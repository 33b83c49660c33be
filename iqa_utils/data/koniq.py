"""KonIQ-10k -> Manifest.

Release layout under root (default folder name `koniq10k`):

    koniq10k_scores_and_distributions.csv   columns image_name, c1..c5, c_total, MOS, SD, MOS_zscore
    1024x768/                               the 10,073 images (landscape, W x H = 1024 x 768);
    512x384/                                or the released half-size copies (also accepted)

Label: `label_column`, default MOS_zscore as DEIQT reads it (rescaled z-scores, about 0-100); the
MOS column is on 1-5. Both are higher-is-better.

Working resolution: DEIQT resizes every image to (H, W) = (512, 384), i.e. it squashes the landscape
images into portrait (`parity_size`, used by resize_mode=deiqt_parity). The kit's default keeps the
aspect ratio at short side 384 (`keep_aspect_short_side`), which is the released 512x384 (W x H) size:
the same pixel budget as DEIQT, without the distortion, and no upscaling of the half-size folder.
"""
from __future__ import annotations

from pathlib import Path

from .manifest import (EXPECTED_COUNTS, Manifest, find_first, finish_manifest, make_df, numeric_column,
                       pick_folder, read_table, require_dir)

NAME = "KonIQ-10k"
LABEL_FILES = ("koniq10k_scores_and_distributions.csv",
               "koniq10k_scores_and_distributions/koniq10k_scores_and_distributions.csv")
NAME_COLUMN = "image_name"
DEFAULT_LABEL_COLUMN = "MOS_zscore"                  # DEIQT parity
# MOS_zscore: z-scores rescaled to 0..100 (released about 3..88); MOS: mean of 1..5 ratings
LABEL_RANGES = {"MOS_zscore": (0.0, 100.0), "MOS": (1.0, 5.0)}
IMAGE_FOLDERS = ("1024x768", "512x384")
PARITY_SIZE, SHORT_SIDE = (512, 384), 384


def parse(root: Path | str, expected_count: int | None = EXPECTED_COUNTS[NAME], check_files: bool = True,
          check_images: bool = False, label_column: str = DEFAULT_LABEL_COLUMN,
          image_folder: str | None = None) -> Manifest:
    """Parse KonIQ-10k (layout in the module docstring).

    label_column: the csv column used as label ("MOS_zscore" for DEIQT parity, or "MOS").
    image_folder: force "1024x768" or "512x384"; default the first of IMAGE_FOLDERS that exists.
    """
    root = require_dir(root, NAME)
    label_path = find_first(root, LABEL_FILES, NAME)
    table = read_table(label_path, (NAME_COLUMN, label_column))
    folder = pick_folder(root, IMAGE_FOLDERS, NAME, image_folder, must_exist=check_files)
    labels = numeric_column(table, label_column, label_path)
    rows = [dict(path=folder / str(name).strip(), label=y, direction="MOS", ref=None, distortion=None,
                 level=None, label_row=i + 1) for i, (name, y) in enumerate(zip(table[NAME_COLUMN], labels))]
    manifest = Manifest(NAME, root, make_df(rows), split_unit="image",
                        label_range=LABEL_RANGES.get(label_column), parity_size=PARITY_SIZE,
                        keep_aspect_short_side=SHORT_SIDE, label_file=label_path,
                        extras={"label_column": label_column, "image_folder": folder.name})
    return finish_manifest(manifest, expected_count, check_files, check_images,
                           lambda: f"{label_path.name} has {len(table)} rows")

