"""Manifest: one row per image of a dataset, whatever its release format looked like."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

COLUMNS = ["path", "label", "direction", "ref", "distortion", "level"]

# Image counts of the official releases (deiqt_protocol.md §5); a parser that finds another count raises.
EXPECTED_COUNTS = {
    "LIVE": 779, "CSIQ": 866, "TID2013": 3000, "KADID-10k": 10125,
    "LIVEC": 1162, "KonIQ-10k": 10073, "LIVEFB": 39810, "SPAQ": 11125,
}


class DatasetError(ValueError):
    """A dataset on disk is not what its release should look like; the message names the file."""


@dataclass
class Manifest:
    """The images of one dataset.

    df columns: path (absolute), label (float, as released), direction ("MOS": higher is better,
    "DMOS": lower is better), ref (reference id, synthetic sets; None otherwise), distortion, level.
    split_unit: "ref" (content never shared between train and test) or "image".
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

    def __post_init__(self):
        missing = [c for c in COLUMNS if c not in self.df.columns]
        if missing:
            raise DatasetError(f"{self.name}: manifest lacks columns {missing}")
        if self.split_unit not in ("ref", "image"):
            raise DatasetError(f"{self.name}: split_unit must be 'ref' or 'image', not {self.split_unit!r}")
        self.df = self.df.reset_index(drop=True)
        if self.label_range is None and len(self.df):
            self.label_range = (float(self.df.label.min()), float(self.df.label.max()))

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
        return Manifest(self.name, self.root, self.df.iloc[list(rows)].reset_index(drop=True), self.split_unit,
                        self.label_range, self.parity_size, self.keep_aspect_short_side, self.extras)
