"""Seeded, stored train/val/test splits (docs/protocol.md §5; the kit's fix for flaw F2).

A split is a function of (manifest, seed, ratio, train_fraction, val_fraction):
    units    sorted reference ids (split_unit "ref": content never crosses train/test) or image rows
    shuffle  numpy default_rng(seed).permutation
    train    the first round(ratio * n) shuffled units (DEIQT's round, not int: KADID 65 refs, not 64)
    val      the last round(val_fraction * n_train) of those train units (model selection, F1)
    fraction the first round(train_fraction * rest) of what remains (data-efficient runs), so a 20%
             subset is inside the 40% one and the test (and val) part never changes with the fraction
Rows are manifest row indices, sorted.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..system import atomic_write_json, read_json
from .manifest import Manifest


@dataclass
class Split:
    dataset: str
    seed: int | None
    ratio: float
    train_fraction: float
    val_fraction: float
    unit: str                                   # "ref" or "image"
    train: list[int] = field(default_factory=list)
    val: list[int] = field(default_factory=list)
    test: list[int] = field(default_factory=list)
    train_units: list = field(default_factory=list)
    val_units: list = field(default_factory=list)
    test_units: list = field(default_factory=list)

    def digest(self) -> str:
        """Hash of the membership (which rows are where), not of how it was drawn."""
        blob = json.dumps({"dataset": self.dataset, "unit": self.unit,
                           "train": self.train, "val": self.val, "test": self.test}, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]

    def summary(self) -> dict:
        return {"seed": self.seed, "ratio": self.ratio, "fraction": self.train_fraction,
                "val_fraction": self.val_fraction, "unit": self.unit, "digest": self.digest(),
                "n_train": len(self.train), "n_val": len(self.val), "n_test": len(self.test)}

    def save(self, path) -> Path:
        d = asdict(self)
        d["digest"] = self.digest()
        return atomic_write_json(d, path)

    @classmethod
    def load(cls, path) -> "Split":
        d = read_json(path, "split file")
        digest = d.pop("digest", None)
        split = cls(**d)
        if digest is not None and digest != split.digest():
            raise ValueError(f"{path}: split membership does not match its stored digest (edited file?)")
        return split


def _plain(u):
    """numpy scalars -> Python scalars, so unit ids go to JSON and compare equal after a round trip."""
    return u.item() if hasattr(u, "item") else u


def _rows_of(manifest: Manifest, units: list) -> list[int]:
    if manifest.split_unit == "ref":
        return sorted(np.flatnonzero(manifest.df.ref.isin(units).to_numpy()).tolist())
    return sorted(int(u) for u in units)


def make_split(manifest: Manifest, seed: int, ratio: float = 0.8, train_fraction: float = 1.0,
               val_fraction: float = 0.0) -> Split:
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"split ratio must be in (0, 1], not {ratio}")
    if not 0.0 < train_fraction <= 1.0:
        raise ValueError(f"train_fraction must be in (0, 1], not {train_fraction}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), not {val_fraction}")
    units = [_plain(u) for u in manifest.units]
    order = [units[i] for i in np.random.default_rng(seed).permutation(len(units))]
    n_train = round(ratio * len(units))
    train_units, test_units = order[:n_train], order[n_train:]
    n_val = round(val_fraction * n_train)
    if n_val:
        train_units, val_units = train_units[:n_train - n_val], train_units[n_train - n_val:]
    else:
        val_units = []
    train_units = train_units[:max(1, round(train_fraction * len(train_units)))]
    if not train_units:
        raise ValueError(f"{manifest.name}: no training units left ({len(units)} units, ratio {ratio}, "
                         f"val_fraction {val_fraction})")
    return Split(manifest.name, seed, ratio, train_fraction, val_fraction, manifest.split_unit,
                 _rows_of(manifest, train_units), _rows_of(manifest, val_units),
                 _rows_of(manifest, test_units), train_units, val_units, test_units)


def full_split(manifest: Manifest) -> Split:
    """Every image is test (the target set of a cross-dataset run)."""
    units = [_plain(u) for u in manifest.units]
    return Split(manifest.name, None, 0.0, 1.0, 0.0, manifest.split_unit,
                 test=list(range(len(manifest))), test_units=units)
