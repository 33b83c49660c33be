"""LIVE In the Wild Image Quality Challenge (LIVEC / CLIVE) -> Manifest.

Release layout under root (default folder name `ChallengeDB_release`):

    Data/AllImages_release.mat   AllImages_release: 1169x1 cell of file names
    Data/AllMOS_release.mat      AllMOS_release: 1x1169 MOS (about 0-100, higher is better)
    Images/                      the images (e.g. 10.JPG); the 7 practice images sit in
                                 Images/trainingImages/ and are the first 7 entries of both files

The first PRACTICE_ENTRIES entries are dropped, leaving 1162 images. Split by image.
"""
from __future__ import annotations

from pathlib import Path

from .manifest import (EXPECTED_COUNTS, DatasetError, FolderIndex, Manifest, finish_manifest, load_mat,
                       make_df, mat_numbers, mat_strings, require_dir)

NAME = "LIVEC"
NAMES_FILE, NAMES_KEY = "Data/AllImages_release.mat", "AllImages_release"
MOS_FILE, MOS_KEY = "Data/AllMOS_release.mat", "AllMOS_release"
IMAGES = "Images"
PRACTICE_ENTRIES = 7       # t1.bmp..t7.bmp, shown to subjects for practice only
RELEASE_ENTRIES = 1169


def parse(root: Path | str, expected_count: int | None = EXPECTED_COUNTS[NAME], check_files: bool = True,
          check_images: bool = False) -> Manifest:
    """Parse LIVEC (layout in the module docstring)."""
    root = require_dir(root, NAME)
    names_path, mos_path = root / NAMES_FILE, root / MOS_FILE
    names = mat_strings(load_mat(names_path, [NAMES_KEY])[NAMES_KEY])
    mos = mat_numbers(load_mat(mos_path, [MOS_KEY])[MOS_KEY], mos_path, MOS_KEY)
    if len(names) != len(mos):
        raise DatasetError(f"{NAME}: {names_path} lists {len(names)} images but {mos_path} holds "
                           f"{len(mos)} scores; they must agree")
    if len(names) <= PRACTICE_ENTRIES:
        raise DatasetError(f"{NAME}: {names_path} lists only {len(names)} entries")
    images = FolderIndex(require_dir(root / IMAGES, NAME) if check_files else root / IMAGES)
    rows = [dict(path=images.resolve(name), label=score, direction="MOS", ref=None, distortion=None,
                 level=None, label_row=i + 1)
            for i, (name, score) in enumerate(zip(names, mos)) if i >= PRACTICE_ENTRIES]
    # ratings on a continuous 0..100 slider (released MOS lie about 3..92)
    manifest = Manifest(NAME, root, make_df(rows), split_unit="image", label_range=(0.0, 100.0),
                        label_file=mos_path, names_file=names_path)
    return finish_manifest(manifest, expected_count, check_files, check_images,
                           lambda: f"{names_path.name} holds {len(names)} entries (release: "
                                   f"{RELEASE_ENTRIES}), of which the first {PRACTICE_ENTRIES} are dropped")
