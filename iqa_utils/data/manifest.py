"""Manifest: one row per image of a dataset, whatever its release format looked like."""
from __future__ import annotations

import hashlib
import itertools
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.io

from ..system import KitError
from . import images

COLUMNS = ["path", "label", "direction", "ref", "distortion", "level"]
ROW = "label_row"      # optional column: where the entry sits in label_file (line, data row or entry, 1-based)
SHOWN = 5              # rows or files named in one message before "and N more"

# Image counts of the official releases (docs/datasets.md); a parser that finds another count raises.
EXPECTED_COUNTS = {
    "LIVE": 779, "CSIQ": 866, "TID2013": 3000, "KADID-10k": 10125,
    "LIVEC": 1162, "KonIQ-10k": 10073, "LIVEFB": 39810, "SPAQ": 11125,
}


class DatasetError(KitError, ValueError):
    """A dataset on disk is not what its release should look like; the message names the file."""


@dataclass
class Manifest:
    """The images of one dataset.

    df columns: path (absolute), label (float, as released), direction ("MOS": higher is better,
    "DMOS": lower is better), ref (reference id, synthetic sets; None otherwise), distortion, level.
    split_unit: "ref" (content never shared between train and test) or "image".
    label_file: the file the labels were read from (named by every label error); names_file: the file
    listing the images when it is another one (LIVEC). An optional df column `label_row` says where each
    entry sits in that file (1-based line, data row or entry), so errors name rows a user can find.
    label_range: the scale labels are normalised by; label_bounds: the values the release allows
    (default label_range; LIVE sets bounds only, its range comes from the data).
    extras: release-specific tables, e.g. LIVEFB's patch labels under "patches".
    """
    name: str
    root: Path
    df: pd.DataFrame
    split_unit: str = "image"
    label_range: tuple[float, float] | None = None
    parity_size: tuple[int, int] | None = None   # (H, W) DEIQT resizes to, whatever the aspect (F3)
    keep_aspect_short_side: int | None = None    # kit default working resolution (short side); None = native
    extras: dict = field(default_factory=dict)
    label_file: Path | None = None
    names_file: Path | None = None
    label_bounds: tuple[float, float] | None = None

    def __post_init__(self):
        missing = [c for c in COLUMNS if c not in self.df.columns]
        if missing:
            raise DatasetError(f"{self.name}: manifest lacks columns {missing}")
        if self.split_unit not in ("ref", "image"):
            raise DatasetError(f"{self.name}: split_unit must be 'ref' or 'image', not {self.split_unit!r}")
        self.df = self.df.reset_index(drop=True)
        if self.label_bounds is None:
            self.label_bounds = self.label_range    # the scale as given, before any range read off the data
        if self.label_range is None and len(self.df):
            self.label_range = (float(self.df.label.min()), float(self.df.label.max()))

    @classmethod
    def of_files(cls, paths, name: str = "images", **fields) -> "Manifest":
        """Image files outside any dataset (images to score, a gMAD pool), so that `cache.open_store` opens
        them as it opens a dataset: label 0, rooted at their common folder; `fields` as the dataclass's."""
        paths = [str(Path(p).expanduser().absolute()) for p in paths]
        root = Path(os.path.commonpath([os.path.dirname(p) for p in paths])) if paths else Path.cwd()
        df = pd.DataFrame({"path": paths, "label": 0.0, "direction": "MOS", "ref": None, "distortion": None,
                           "level": None})
        return cls(name, root, df, **fields)

    def __len__(self) -> int:
        return len(self.df)

    @property
    def direction(self) -> str:
        return str(self.df.direction.iloc[0]) if len(self.df) else "MOS"

    @property
    def units(self) -> list:
        """The split units, sorted: reference ids or row indices."""
        if self.split_unit == "ref":
            return sorted(self.df.ref.unique().tolist())
        return list(range(len(self.df)))

    def check_files(self) -> None:
        """Raise naming the images that are listed but absent."""
        absent = [p for p in self.df.path if not Path(p).is_file()]
        if absent:
            more = f" (and {len(absent) - 5} more)" if len(absent) > 5 else ""
            raise DatasetError(f"{self.name}: {len(absent)} listed images are missing under {self.root}: "
                               + ", ".join(absent[:5]) + more)

    def check_count(self, expected: int | None = None) -> None:
        expected = EXPECTED_COUNTS.get(self.name) if expected is None else expected
        if expected is not None and len(self) != expected:
            raise DatasetError(f"{self.name}: found {len(self)} images under {self.root}, "
                               f"the release has {expected}")

    def subset(self, rows) -> "Manifest":
        return replace(self, df=self.df.iloc[list(rows)].reset_index(drop=True))

    def digest(self) -> str:
        """Hash of the data a run sees: every image's path relative to the root, its label, file size and
        modification time. A corrected label file, a replaced image or another copy of the dataset gives
        another digest, so a run record never answers for data it was not trained on."""
        h = hashlib.sha1(f"{self.name}\n".encode())
        for path, label in zip(self.df.path, self.df.label):
            try:
                st = os.stat(path)
                size, mtime = st.st_size, st.st_mtime_ns
            except OSError:
                size, mtime = -1, -1
            h.update(f"{os.path.relpath(path, self.root)}\t{float(label)!r}\t{size}\t{mtime}\n".encode())
        return h.hexdigest()[:12]


# ---- helpers shared by the release parsers (live.py, csiq.py, ...) ---------------------------------
# They keep every parser's error messages alike: each names the file or folder that is wrong.

def require_dir(path: Path | str, what: str) -> Path:
    """`path` as an absolute Path; DatasetError naming it when it is not a folder."""
    path = Path(path).expanduser().absolute()
    if not path.is_dir():
        raise DatasetError(f"{what}: folder not found: {path}")
    return path


def find_first(root: Path, candidates, what: str, kind: str = "file", must_exist: bool = True) -> Path:
    """The first of `candidates` (paths relative to root) that exists; else an error listing them all,
    so a user sees which layout was expected (or the first candidate, when not must_exist)."""
    test = Path.is_file if kind == "file" else Path.is_dir
    for rel in candidates:
        if test(root / rel):
            return root / rel
    if not must_exist:
        return root / candidates[0]
    kind = "folder" if kind == "dir" else kind
    raise DatasetError(f"{what}: none of the expected {kind}s found: "
                       + ", ".join(str(root / c) for c in candidates))


def require_columns(df: pd.DataFrame, columns, source: Path | str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DatasetError(f"{source}: missing columns {missing}; found {list(df.columns)}")


class FolderIndex:
    """Looks file names up in one folder, exactly first, then ignoring case (TID2013 ships `I01.BMP`
    beside `i25.bmp`; Linux paths are case sensitive). Never guesses beyond case."""

    def __init__(self, folder: Path, recursive: bool = False):
        self.folder, self.recursive, self._lower = Path(folder), recursive, None

    def find(self, name: str) -> Path | None:
        exact = self.folder / name
        if exact.is_file():
            return exact
        if self._lower is None:   # list the folder only when some name needs it
            self._lower = {}
            if not self.folder.is_dir():
                return None
            files = self.folder.rglob("*") if self.recursive else self.folder.iterdir()
            for p in files:
                if p.is_file():
                    key = (p.relative_to(self.folder).as_posix() if not self.recursive else p.name).lower()
                    self._lower.setdefault(key, p)
        key = name.lower() if not self.recursive else Path(name).name.lower()
        return self._lower.get(key)

    def resolve(self, name: str) -> Path:
        """The file for `name`, or the path it should have (reported missing by check_files)."""
        return self.find(name) or self.folder / name


def list_text(items, limit: int = SHOWN) -> str:
    """"a, b, c" or "a, b, c, d, e and 4 more": the first `limit` items of a list too long for one line."""
    items = [str(x) for x in items]
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def check_decodable(manifest: Manifest, progress: bool = True) -> None:
    """Decode every image once; DatasetError naming the unreadable files (all counted, first few shown)."""
    bad = images.check_images(manifest, progress=progress)
    if bad:
        (first, why), rest = bad[0], [f"{p} ({w})" for p, w in bad[1:]]
        also = f"; {len(bad)} unreadable in all, also {list_text(rest, SHOWN - 1)}" if rest else ""
        raise DatasetError(f"{manifest.name}: unreadable image {first} ({why}){also}")


def absent_files(paths) -> list[str]:
    """The paths (in order) that are not files. Each folder is listed once instead of one stat per file,
    which is slow on network drives (Colab's Google Drive) for 40k-image sets."""
    paths = [Path(p) for p in paths]
    listed: dict[Path, set] = {}
    for parent in {p.parent for p in paths}:
        try:
            with os.scandir(parent) as it:
                listed[parent] = {e.name for e in it if e.is_file()}
        except OSError:
            listed[parent] = set()
    return [str(p) for p in paths if p.name not in listed[p.parent]]


# ---- label checks: once, here, for every parser -----------------------------------------------------

def row_word(source: Path | str) -> str:
    """How a position in `source` is called: line (text), entry (.mat array) or data row (tables)."""
    return {".txt": "line", ".mat": "entry"}.get(Path(source).suffix.lower(), "data row")


def rows_text(word: str, rows, count: bool = True) -> str:
    """"line 3" / "lines 3, 7 (2 rows)" / "lines 3, 7, 9, 10, 12 and 4 more (9 rows)"."""
    rows = [int(r) for r in rows]
    if len(rows) == 1:
        return f"{word} {rows[0]}"
    plural = word[:-1] + "ies" if word.endswith("y") else word + "s"
    return f"{plural} {list_text(rows)}" + (f" ({len(rows)} rows)" if count else "")


def _values_text(values) -> str:
    return ", ".join(f"{v:g}" for v in values[:SHOWN]) + (", ..." if len(values) > SHOWN else "")


def check_label_values(labels, rows, source: Path | str, bounds=None, what: str = "labels") -> None:
    """DatasetError naming `source` and its rows when a label is not finite (NaN, inf) or lies outside
    `bounds` (lo, hi), inclusive. Nothing is replaced: a bad label file is fixed at the source."""
    labels, rows, word = np.asarray(labels, dtype=float), np.asarray(rows), row_word(source)
    bad = ~np.isfinite(labels)
    if bad.any():
        raise DatasetError(f"{source}: non-finite {what} ({_values_text(labels[bad])}) in "
                           f"{rows_text(word, rows[bad])}")
    if bounds is not None:
        lo, hi = bounds
        out = (labels < lo) | (labels > hi)
        if out.any():
            raise DatasetError(f"{source}: {what} outside the release's scale [{lo:g}, {hi:g}] in "
                               f"{rows_text(word, rows[out])}: {_values_text(labels[out])}")


def check_duplicates(paths, rows, source: Path | str) -> None:
    """DatasetError when one image is listed twice (same or other label): it could land in train and test."""
    table = pd.DataFrame({"path": list(map(str, paths)), "row": np.asarray(rows)})
    dup = table[table.path.duplicated(keep=False)]
    if dup.empty:
        return
    groups = dup.groupby("path", sort=False).row.apply(list)
    word = row_word(source)
    shown = list_text([f"{rows_text(word, r, count=False)}: {Path(p).name}" for p, r in groups.items()], 3)
    what = "an image is" if len(groups) == 1 else f"{len(groups)} images are"
    raise DatasetError(f"{source}: {what} listed more than once ({shown}); each image must appear once, "
                       f"or it could land in both train and test")


def check_labels(manifest: Manifest) -> None:
    """The label checks every parser's manifest passes: finite, within the release's bounds, no image
    listed twice. Errors name the label file and its rows (label_row, else the manifest row + 1)."""
    df, source = manifest.df, manifest.label_file or manifest.root
    rows = df[ROW].to_numpy() if ROW in df.columns else np.arange(1, len(df) + 1)
    check_label_values(df.label, rows, source, manifest.label_bounds)
    check_duplicates(df.path, rows, manifest.names_file or source)


def finish_manifest(manifest: Manifest, expected_count: int | None, check_files: bool = True,
                    check_images: bool = False, missing_hint=None) -> Manifest:
    """The checks every parser ends with: labels, count (with a hint of what is missing), files, decoding."""
    if not len(manifest):
        raise DatasetError(f"{manifest.label_file or manifest.root}: lists no images")
    check_labels(manifest)
    if expected_count is not None and len(manifest) != expected_count:
        release = EXPECTED_COUNTS.get(manifest.name)
        note = f" (the release has {release})" if release not in (None, expected_count) else ""
        hint = missing_hint() if missing_hint is not None else ""
        raise DatasetError(f"{manifest.name}: found {len(manifest)} images under {manifest.root}, "
                           f"expected {expected_count}{note}" + (f"; {hint}" if hint else ""))
    if check_files:
        absent = absent_files(manifest.df.path)
        if absent:
            more = f" (and {len(absent) - 5} more)" if len(absent) > 5 else ""
            raise DatasetError(f"{manifest.name}: {len(absent)} listed images are missing under "
                               f"{manifest.root}: " + ", ".join(absent[:5]) + more)
    if check_images:
        check_decodable(manifest)
    return manifest


def missing_grid(df: pd.DataFrame, keys=("ref", "distortion", "level"), limit: int = 10) -> str:
    """For the synthetic sets (full ref x distortion x level grids): the combinations absent from df."""
    values = [sorted(df[k].dropna().unique().tolist()) for k in keys]
    have = set(map(tuple, df[list(keys)].itertuples(index=False, name=None)))
    absent = [c for c in itertools.product(*values) if c not in have]
    if not absent:
        return ""
    def fmt(v):
        return str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)
    shown = ", ".join("/".join(map(fmt, c)) for c in absent[:limit])
    more = f" (and {len(absent) - limit} more)" if len(absent) > limit else ""
    return f"missing {'/'.join(keys)}: {shown}{more}"


def make_df(rows: list[dict]) -> pd.DataFrame:
    """Rows -> a frame with the manifest columns in order (level as float, NaN when unknown), plus
    label_row when the rows carry it."""
    df = pd.DataFrame(rows, columns=COLUMNS + ([ROW] if rows and ROW in rows[0] else []))
    df["label"] = df["label"].astype(float)
    df["level"] = pd.to_numeric(df["level"], errors="coerce").astype(float)
    df["path"] = df["path"].map(str)
    return df


def load_mat(path: Path, keys) -> dict:
    """The named variables of a MATLAB file; DatasetError naming the file when one is absent."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"label file not found: {path}")
    try:
        mat = scipy.io.loadmat(path)
    except Exception as e:
        raise DatasetError(f"{path}: not a readable .mat file ({e})") from e
    missing = [k for k in keys if k not in mat]
    if missing:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise DatasetError(f"{path}: missing variables {missing}; found {found}")
    return {k: mat[k] for k in keys}


def mat_strings(arr) -> list[str]:
    """A MATLAB cell array of strings (as scipy loads it) -> list of str."""
    out = []
    for x in np.asarray(arr, dtype=object).ravel():
        x = np.asarray(x).ravel()
        out.append(str(x[0]) if x.size else "")
    return out


def mat_numbers(arr, path: Path, key: str):
    try:
        return np.asarray(arr, dtype=float).ravel()
    except (TypeError, ValueError) as e:
        raise DatasetError(f"{path}: variable {key!r} is not numeric") from e


def read_table(path: Path, columns, **read_kwargs) -> pd.DataFrame:
    """A .csv or .xlsx label file with at least `columns` (header names stripped of spaces). Only empty
    cells read as missing: "n/a" or "NA" stay text, so an error can quote what the cell holds."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"label file not found: {path}")
    read_kwargs = {"keep_default_na": False, "na_values": [""], **read_kwargs}
    try:
        if path.suffix.lower() in (".xlsx", ".xlsm"):
            df = pd.read_excel(path, engine="openpyxl", **read_kwargs)
        else:
            df = pd.read_csv(path, **read_kwargs)
    except Exception as e:
        raise DatasetError(f"{path}: not a readable label table ({e})") from e
    df.columns = [str(c).strip() for c in df.columns]
    require_columns(df, columns, path)
    return df


def numeric_column(table: pd.DataFrame, column: str, source: Path | str) -> list[float]:
    """table[column] as floats; DatasetError naming the file and the rows (all counted) without a number
    (empty cells included: a label cannot be missing). inf passes here and fails check_labels."""
    values = pd.to_numeric(table[column], errors="coerce")
    if values.isna().any():
        bad = np.flatnonzero(values.isna().to_numpy())
        cell = table[column].iloc[bad[0]]
        more = f"; {rows_text('data row', bad + 1)} have no number" if len(bad) > 1 else ""
        raise DatasetError(f"{source}: column {column!r} has a non-numeric value in data row {bad[0] + 1}: "
                           f"{'an empty cell' if pd.isna(cell) else repr(str(cell))}{more}")
    return values.astype(float).tolist()


def pick_folder(root: Path, candidates, what: str, forced: str | None = None, must_exist: bool = True) -> Path:
    """The image folder: `forced` when given, else the first existing of `candidates` (error listing them)."""
    if forced:
        return require_dir(root / forced, what) if must_exist else root / forced
    return find_first(root, candidates, what, kind="dir", must_exist=must_exist)
