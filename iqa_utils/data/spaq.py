"""SPAQ (Smartphone Photography Attribute and Quality) -> Manifest.

Release layout under root (default folder name `SPAQ`; the zip unpacks as `SPAQ zip`, also accepted):

    Annotations/MOS and Image attribute scores.xlsx   columns "Image name", "MOS", then the attribute
                                                      scores (Brightness, Colorfulness, ...)
    TestImage/                                        the 11,125 originals, e.g. 00001.jpg
    512x384/                                          or DEIQT's pre-resized copies (also accepted)

Folder and file names contain spaces; paths are used as given, never split on whitespace.
Label: MOS 0-100 (higher is better).

Working resolution: DEIQT's preparation script resizes every image to (H, W) = (512, 384) whatever its
orientation (`parity_size`, resize_mode=deiqt_parity). The kit's default keeps the aspect ratio with the
short side at 384 (`keep_aspect_short_side`): DEIQT's pixel budget without the squashing; the originals
(about 4000x3000) would not fit a decoded in-memory store at native size.
"""
from __future__ import annotations

from pathlib import Path

from .manifest import (EXPECTED_COUNTS, FolderIndex, Manifest, find_first, finish_manifest, make_df,
                       numeric_column, pick_folder, read_table, require_dir)

NAME = "SPAQ"
LABEL_FILES = ("Annotations/MOS and Image attribute scores.xlsx", "MOS and Image attribute scores.xlsx")
NAME_COLUMN, LABEL_COLUMN = "Image name", "MOS"
IMAGE_FOLDERS = ("TestImage", "512x384", "SPAQ zip/TestImage", "SPAQ zip/512x384")
PARITY_SIZE, SHORT_SIDE = (512, 384), 384


def parse(root: Path | str, expected_count: int | None = EXPECTED_COUNTS[NAME], check_files: bool = True,
          check_images: bool = False, image_folder: str | None = None) -> Manifest:
    """Parse SPAQ (layout in the module docstring). image_folder: force one of IMAGE_FOLDERS (or any
    folder relative to root); default the first that exists."""
    root = require_dir(root, NAME)
    label_path = find_first(root, LABEL_FILES, NAME)
    table = read_table(label_path, (NAME_COLUMN, LABEL_COLUMN))
    folder = pick_folder(root, IMAGE_FOLDERS, NAME, image_folder, must_exist=check_files)
    images = FolderIndex(folder)      # the resized copies may differ in extension case
    labels = numeric_column(table, LABEL_COLUMN, label_path)
    rows = [dict(path=images.resolve(str(name).strip()), label=y, direction="MOS", ref=None,
                 distortion=None, level=None, label_row=i + 1)
            for i, (name, y) in enumerate(zip(table[NAME_COLUMN], labels))]
    # ratings on a continuous 0..100 slider
    manifest = Manifest(NAME, root, make_df(rows), split_unit="image", label_range=(0.0, 100.0),
                        parity_size=PARITY_SIZE, keep_aspect_short_side=SHORT_SIDE, label_file=label_path,
                        extras={"image_folder": folder.relative_to(root).as_posix()})
    return finish_manifest(manifest, expected_count, check_files, check_images,
                           lambda: f"{label_path.name} has {len(table)} rows")
