"""CSIQ -> Manifest. Two layouts are found in the wild; `parse` detects which one is present.

Community layout (what DEIQT and pyiqa read):
    csiq_label.txt        "<name> <dmos>" per line, e.g. "1600.AWGN.1.png 0.062" (a community-made file)
    dst_imgs_all/         the 866 distorted images in one flat folder, e.g. 1600.AWGN.1.png
    src_imgs/             the 30 references, e.g. 1600.png (not listed)

Official layout (the release from the CSIQ authors):
    csiq.DMOS.xlsx        sheet "all_by_image" with columns OFFICIAL_COLUMNS (see below)
    dst_imgs/<type>/      one subfolder per type: awgn, jpeg, jpeg2000, fnoise, blur, contrast,
                          files "<image>.<TAG>.<level>.png" (tags AWGN, JPEG, jpeg2000, fnoise, BLUR,
                          contrast; file-name case is matched loosely)
    src_imgs/             references

Assumption about the official spreadsheet (we have no copy in the kit; this is what public loaders of
it read): the header row names `image, dst_idx, dst_type, dst_lev, dmos_std, dmos`, where image is the
reference name (e.g. 1600 or "aerial_city"), dst_type one of noise / jpeg / jpeg 2000 / fnoise / blur /
contrast, dst_lev 1..5 and dmos in [0, 1]. The header may sit below title rows and right of an empty
column: the parser looks for it in the first rows of the sheet. If your copy differs, change
OFFICIAL_COLUMNS / OFFICIAL_TYPES here.

Label: DMOS in [0, 1] (lower is better). Reference id = the first dot field of the file name.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .manifest import (EXPECTED_COUNTS, DatasetError, FolderIndex, Manifest, finish_manifest, make_df,
                       require_dir)

NAME = "CSIQ"
COMMUNITY_LABELS, COMMUNITY_IMAGES = "csiq_label.txt", "dst_imgs_all"
OFFICIAL_DMOS_FILES = ("csiq.DMOS.xlsx",)
OFFICIAL_IMAGES, OFFICIAL_SHEET = "dst_imgs", "all_by_image"
OFFICIAL_COLUMNS = ("image", "dst_idx", "dst_type", "dst_lev", "dmos_std", "dmos")
# spreadsheet dst_type -> (subfolder of dst_imgs/, tag in the file name); the tag also names the
# distortion in the manifest (lower case), the same as the community file names give.
OFFICIAL_TYPES = {"noise": ("awgn", "AWGN"), "jpeg": ("jpeg", "JPEG"), "jpeg 2000": ("jpeg2000", "jpeg2000"),
                  "fnoise": ("fnoise", "fnoise"), "blur": ("blur", "BLUR"), "contrast": ("contrast", "contrast")}
# images per type in the release [recalled: 30 refs x 5 levels, contrast 4 levels on 29 refs]
TYPE_COUNTS = {"awgn": 150, "jpeg": 150, "jpeg2000": 150, "fnoise": 150, "blur": 150, "contrast": 116}
_HEADER_SEARCH_ROWS = 20


def detect_layout(root: Path) -> str:
    """"community" or "official", whichever label file (preferably with its image folder) is present."""
    community = (root / COMMUNITY_LABELS).is_file()
    official = any((root / f).is_file() for f in OFFICIAL_DMOS_FILES)
    if community and (root / COMMUNITY_IMAGES).is_dir():
        return "community"
    if official and (root / OFFICIAL_IMAGES).is_dir():
        return "official"
    if community or official:
        return "community" if community else "official"
    raise DatasetError(
        f"{NAME}: no known layout under {root}: expected {COMMUNITY_LABELS} + {COMMUNITY_IMAGES}/ "
        f"(community layout) or {' / '.join(OFFICIAL_DMOS_FILES)} + {OFFICIAL_IMAGES}/<type>/ (official)")


def _community_rows(root: Path, label_path: Path) -> list[dict]:
    images = FolderIndex(require_dir(root / COMMUNITY_IMAGES, NAME))
    rows = []
    for lineno, line in enumerate(label_path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        fields = parts[0].split(".") if parts else []
        try:
            if len(parts) != 2 or len(fields) < 3:
                raise ValueError
            dmos, level = float(parts[1]), int(fields[2])
        except ValueError:
            raise DatasetError(f"{label_path}, line {lineno}: expected '<ref>.<type>.<level>.png <dmos>', "
                               f"got {line!r}") from None
        name = parts[0] if parts[0].lower().endswith(".png") else parts[0] + ".png"
        rows.append(dict(path=images.resolve(name), label=dmos, direction="DMOS", ref=fields[0],
                         distortion=fields[1].lower(), level=level, label_row=lineno))
    return rows


def _read_official_sheet(path: Path) -> pd.DataFrame:
    """The sheet with the OFFICIAL_COLUMNS header row (preferring OFFICIAL_SHEET), header located."""
    try:
        sheets = pd.read_excel(path, sheet_name=None, header=None, engine="openpyxl")
    except Exception as e:
        raise DatasetError(f"{path}: not a readable spreadsheet ({e})") from e
    order = sorted(sheets, key=lambda s: s != OFFICIAL_SHEET)
    for sheet in order:
        raw = sheets[sheet]
        for r in range(min(_HEADER_SEARCH_ROWS, len(raw))):
            header = [str(v).strip().lower() for v in raw.iloc[r]]
            if all(c in header for c in OFFICIAL_COLUMNS):
                cols = [header.index(c) for c in OFFICIAL_COLUMNS]
                table = raw.iloc[r + 1:, cols]
                table.columns = list(OFFICIAL_COLUMNS)
                return table.dropna(subset=["image", "dst_type", "dst_lev", "dmos"], how="all")
    raise DatasetError(f"{path}: no sheet with a header row naming {list(OFFICIAL_COLUMNS)} "
                       f"(sheets: {list(sheets)}); see OFFICIAL_COLUMNS in {__name__}")


def _official_rows(root: Path, label_path: Path) -> list[dict]:
    images_dir = require_dir(root / OFFICIAL_IMAGES, NAME)
    anywhere = FolderIndex(images_dir, recursive=True)   # fallback when the subfolder's case differs
    rows = []
    for i, rec in enumerate(_read_official_sheet(label_path).itertuples(index=False)):
        dst_type = str(rec.dst_type).strip().lower()
        if dst_type not in OFFICIAL_TYPES:
            raise DatasetError(f"{label_path}: data row {i + 1}: unknown dst_type {rec.dst_type!r}; "
                               f"known: {list(OFFICIAL_TYPES)}")
        try:
            image = rec.image
            image = str(int(image)) if isinstance(image, float) and image.is_integer() else str(image).strip()
            level, dmos = int(rec.dst_lev), float(rec.dmos)
        except (TypeError, ValueError):
            raise DatasetError(f"{label_path}: data row {i + 1}: unreadable values {tuple(rec)}") from None
        folder, tag = OFFICIAL_TYPES[dst_type]
        name = f"{image}.{tag}.{level}.png"
        path = images_dir / folder / name
        if not path.is_file():
            path = anywhere.find(name) or path
        rows.append(dict(path=path, label=dmos, direction="DMOS", ref=image, distortion=tag.lower(),
                         level=level, label_row=i + 1))
    return rows


def parse(root: Path | str, expected_count: int | None = EXPECTED_COUNTS[NAME], check_files: bool = True,
          check_images: bool = False, layout: str = "auto") -> Manifest:
    """Parse CSIQ in the community or official layout (module docstring); layout "auto" detects it."""
    root = require_dir(root, NAME)
    layout = detect_layout(root) if layout == "auto" else layout
    if layout == "community":
        label_path = root / COMMUNITY_LABELS
        if not label_path.is_file():
            raise DatasetError(f"label file not found: {label_path}")
        rows = _community_rows(root, label_path)
    elif layout == "official":
        label_path = next((root / f for f in OFFICIAL_DMOS_FILES if (root / f).is_file()), None)
        if label_path is None:
            raise DatasetError(f"label file not found: {root / OFFICIAL_DMOS_FILES[0]}")
        rows = _official_rows(root, label_path)
    else:
        raise ValueError(f"layout must be 'auto', 'community' or 'official', not {layout!r}")
    # DMOS is defined on [0, 1] by the release (the official sheet's scale)
    manifest = Manifest(NAME, root, make_df(rows), split_unit="ref", label_range=(0.0, 1.0),
                        extras={"layout": layout}, label_file=label_path)

    def hint():
        have = manifest.df.distortion.value_counts().to_dict()
        return f"{layout} layout; images per type found/release: " + ", ".join(
            f"{t} {have.get(t, 0)}/{n}" for t, n in TYPE_COUNTS.items())
    return finish_manifest(manifest, expected_count, check_files, check_images, hint)
