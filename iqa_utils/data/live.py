"""LIVE Image Quality Assessment Database, Release 2 -> Manifest.

Release layout under root (default folder name `databaserelease2`):

    refimgs/*.bmp             the 29 references (not listed: the manifest holds distorted images)
    jp2k/img1.bmp ...         five distortion folders of img1.bmp..imgN.bmp, in this order:
    jpeg/ wn/ gblur/ fastfading/     jp2k 227, jpeg 233, wn 174, gblur 174, fastfading 174 = 982 entries
    dmos_realigned.mat        dmos_new (1x982, DMOS: lower is better), orgs (1x982; 1 = an undistorted
                              copy of a reference)
    refnames_all.mat          refnames_all (1x982 cell: the reference file of each entry)

Entry i of the .mat files is image i of the folders walked in the order above. Entries with orgs == 1
are dropped, leaving 779 images. The label is dmos_new (as DEIQT reads it), not dmos.mat's `dmos`,
whose values differ. There is no distortion level in the release (the folders' info.txt holds
per-type parameters, not levels), so `level` is NaN.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from .manifest import (EXPECTED_COUNTS, DatasetError, Manifest, finish_manifest, load_mat, make_df,
                       mat_numbers, mat_strings, require_dir, rows_text)

NAME = "LIVE"
FOLDERS = {"jp2k": 227, "jpeg": 233, "wn": 174, "gblur": 174, "fastfading": 174}   # release order
LABEL_FILE, LABEL_KEYS = "dmos_realigned.mat", ("dmos_new", "orgs")
REFNAMES_FILE, REFNAMES_KEY = "refnames_all.mat", "refnames_all"
_IMG = re.compile(r"^img(\d+)\.bmp$", re.IGNORECASE)
# dmos_new: per-subject z-scores rescaled to 1..100, differenced against the reference and realigned
# across sessions, so values may leave 0..100 a little (our recollection is a maximum near 112, which
# we could not check from here). The bounds are wide enough for any realigned value and still catch a
# wrong file, a sentinel (999) or a rescaled copy (x100).
LABEL_BOUNDS = (-25.0, 150.0)


def _counts_from_folders(root: Path, n_entries: int, label_path: Path) -> dict[str, int]:
    """Folder sizes read from disk, for copies whose .mat files are not the 982-entry release (small
    test fixtures). Each folder must hold exactly img1..imgK, otherwise the entry-to-file mapping is
    unknowable."""
    counts = {}
    for folder in FOLDERS:
        d = require_dir(root / folder, NAME)
        nums = sorted(int(m.group(1)) for p in d.iterdir() if (m := _IMG.match(p.name)))
        gaps = sorted(set(range(1, (nums[-1] if nums else 0) + 1)) - set(nums))
        if gaps:
            raise DatasetError(f"{NAME}: listed images are missing: "
                               + ", ".join(str(d / f"img{k}.bmp") for k in gaps[:5])
                               + f" ({d} must hold img1.bmp..imgN.bmp to map {label_path.name} onto files)")
        counts[folder] = len(nums)
    if sum(counts.values()) != n_entries:
        raise DatasetError(
            f"{NAME}: {label_path} has {n_entries} entries, the release has {sum(FOLDERS.values())}, and "
            f"the distortion folders hold {sum(counts.values())} images ({counts})")
    return counts


def parse(root: Path | str, expected_count: int | None = EXPECTED_COUNTS[NAME], check_files: bool = True,
          check_images: bool = False, folder_counts: dict[str, int] | None = None) -> Manifest:
    """Parse LIVE Release 2 (layout in the module docstring).

    folder_counts: entries per distortion folder, in release order; default the release's sizes when the
    .mat files hold 982 entries, else read from the folders (img1..imgK each).
    """
    root = require_dir(root, NAME)
    label_path, ref_path = root / LABEL_FILE, root / REFNAMES_FILE
    mat = load_mat(label_path, LABEL_KEYS)
    dmos = mat_numbers(mat["dmos_new"], label_path, "dmos_new")
    orgs = mat_numbers(mat["orgs"], label_path, "orgs")
    refnames = mat_strings(load_mat(ref_path, [REFNAMES_KEY])[REFNAMES_KEY])
    n = len(dmos)
    odd = np.flatnonzero(~np.isin(orgs, (0, 1)))
    if len(odd):   # orgs decides which entries are kept: anything but 0/1 would drop or keep silently
        raise DatasetError(f"{label_path}: 'orgs' must be 0 or 1; {rows_text('entry', odd + 1)} hold "
                           f"{', '.join(f'{v:g}' for v in orgs[odd][:5])}")
    if len(orgs) != n or len(refnames) != n:
        raise DatasetError(f"{NAME}: {label_path} holds {n} dmos_new and {len(orgs)} orgs entries, "
                           f"{ref_path} holds {len(refnames)} refnames_all entries; they must agree")

    if folder_counts is None:
        folder_counts = dict(FOLDERS) if n == sum(FOLDERS.values()) else \
            _counts_from_folders(root, n, label_path)
    elif sum(folder_counts.values()) != n:
        raise DatasetError(f"{NAME}: folder_counts sum to {sum(folder_counts.values())}, "
                           f"{label_path} has {n} entries")
    if check_files:   # a whole missing folder reads better than 227 missing files
        for folder in folder_counts:
            require_dir(root / folder, NAME)

    rows, i = [], 0
    for folder, k in folder_counts.items():
        for j in range(1, k + 1):
            if orgs[i] == 0:
                rows.append(dict(path=root / folder / f"img{j}.bmp", label=dmos[i], direction="DMOS",
                                 ref=Path(refnames[i]).stem, distortion=folder, level=None, label_row=i + 1))
            i += 1
    manifest = Manifest(NAME, root, make_df(rows), split_unit="ref", label_file=label_path,
                        label_bounds=LABEL_BOUNDS)

    def hint():
        kept = manifest.df.distortion.value_counts().to_dict()
        return (f"{n} entries in {label_path.name}, {int((orgs == 0).sum())} with orgs == 0; "
                f"kept per folder: " + ", ".join(f"{f} {kept.get(f, 0)}" for f in folder_counts))
    return finish_manifest(manifest, expected_count, check_files, check_images, hint)
