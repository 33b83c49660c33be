"""Dataset names -> parsers, default folders under a data root, DEIQT's global batch per dataset.

Data root layout (paper profile): one release folder per dataset, named as the releases unpack:

    <data_root>/databaserelease2/      LIVE Release 2            (also accepted: LIVE, live)
    <data_root>/CSIQ/                  CSIQ                      (also: csiq)
    <data_root>/tid2013/               TID2013                   (also: TID2013)
    <data_root>/kadid10k/              KADID-10k                 (also: KADID-10k, KADID10k, kadid)
    <data_root>/ChallengeDB_release/   LIVE In the Wild (LIVEC)  (also: LIVEC, livec, CLIVE)
    <data_root>/koniq10k/              KonIQ-10k                 (also: KonIQ-10k, koniq)
    <data_root>/FLIVE_Database/        LIVE-FB / FLIVE           (also: LIVEFB, FLIVE, livefb)
    <data_root>/SPAQ/                  SPAQ                      (also: "SPAQ zip", spaq)

The first name is DATASET_FOLDERS[name]; the others are tried in turn when it is absent. A release kept
elsewhere is named directly: load_manifest("SPAQ", path="/mnt/drive/SPAQ zip").

Working resolution per manifest: KonIQ-10k and SPAQ carry parity_size (512, 384) (DEIQT squashes them
to H512 x W384) and keep_aspect_short_side 384 (same pixel budget, aspect kept; SPAQ's ~4000x3000
originals would not fit a decoded store). The other six are used at native size, as DEIQT does
(LIVE/CSIQ/TID2013/KADID/LIVEC images are at most 768 px wide; LIVEFB crops the originals).
"""
from __future__ import annotations

import os
from pathlib import Path

from ..system import DATA_ROOT_ENV
from . import csiq, kadid, koniq, live, livec, livefb, spaq, synthetic, tid2013
from .manifest import DatasetError, Manifest

DATASETS = {
    "LIVE": live.parse, "CSIQ": csiq.parse, "TID2013": tid2013.parse, "KADID-10k": kadid.parse,
    "LIVEC": livec.parse, "KonIQ-10k": koniq.parse, "LIVEFB": livefb.parse, "SPAQ": spaq.parse,
}
FOLDER_CANDIDATES = {
    "LIVE": ("databaserelease2", "LIVE", "live"),
    "CSIQ": ("CSIQ", "csiq"),
    "TID2013": ("tid2013", "TID2013"),
    "KADID-10k": ("kadid10k", "KADID-10k", "KADID10k", "kadid"),
    "LIVEC": ("ChallengeDB_release", "LIVEC", "livec", "CLIVE"),
    "KonIQ-10k": ("koniq10k", "KonIQ-10k", "koniq"),
    "LIVEFB": ("FLIVE_Database", "LIVEFB", "FLIVE", "livefb"),
    "SPAQ": ("SPAQ", "SPAQ zip", "spaq"),
}
DATASET_FOLDERS = {name: folders[0] for name, folders in FOLDER_CANDIDATES.items()}

# DEIQT's global batch (per-GPU batch x GPUs), docs/protocol.md §4. TID2013 has no official config:
# 160 is inferred (it gives ~150 steps per epoch, the band of the other datasets).
DEIQT_GLOBAL_BATCH = {
    "LIVE": 48, "CSIQ": 48, "TID2013": 160, "KADID-10k": 512,
    "LIVEC": 64, "KonIQ-10k": 512, "SPAQ": 512, "LIVEFB": 2048,
}

_ALIASES = {"kadid": "KADID-10k", "kadid10k": "KADID-10k", "koniq": "KonIQ-10k", "koniq10k": "KonIQ-10k",
            "flive": "LIVEFB", "clive": "LIVEC", "livechallenge": "LIVEC", "tid": "TID2013"}


class UnknownDataset(DatasetError, KeyError):
    """A dataset name the kit does not know (a KeyError too, as a dict lookup's would be)."""
    def __str__(self) -> str:          # KeyError would quote the message
        return str(self.args[0])


def canonical_name(name: str) -> str:
    """The canonical dataset name, ignoring case and punctuation ("koniq10k" -> "KonIQ-10k")."""
    if name in DATASETS:
        return name
    key = "".join(ch for ch in name.lower() if ch.isalnum())
    for canon in DATASETS:
        if key == "".join(ch for ch in canon.lower() if ch.isalnum()):
            return canon
    if key in _ALIASES:
        return _ALIASES[key]
    raise UnknownDataset(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}, "
                         f"and synthetic / synthetic_a / synthetic_b")


def dataset_path(name: str, data_root: Path | str | None = None) -> Path:
    """The release folder of `name` under data_root (DATASET_FOLDERS, then the accepted aliases)."""
    name = canonical_name(name)
    if data_root is None:
        data_root = os.environ.get(DATA_ROOT_ENV)
    if data_root is None:
        raise DatasetError(f"{name}: no data root given (pass data_root=, set data.data_root or "
                           f"${DATA_ROOT_ENV}) and no path= to the release folder")
    root = Path(data_root).expanduser()
    for folder in FOLDER_CANDIDATES[name]:
        if (root / folder).is_dir():
            return root / folder
    raise DatasetError(f"{name}: release folder not found under {root}: looked for "
                       + ", ".join(repr(f) for f in FOLDER_CANDIDATES[name]))


def load_manifest(name: str, data_root: Path | str | None = None, check_files: bool = True,
                  check_count: bool = True, *, path: Path | str | None = None, **parser_kwargs) -> Manifest:
    """The Manifest of dataset `name`.

    Names starting with "synthetic" go to iqa_utils.data.synthetic.load(name, data_root). Real names read
    `path` if given, else their folder under data_root (DATASET_FOLDERS). check_count=False accepts any
    image count (parsers otherwise insist on the release's); check_files=False skips the existence check
    of the listed images. Further keyword arguments go to the parser (e.g. check_images=True,
    label_column="MOS" for KonIQ-10k, layout="official" for CSIQ).
    """
    if name.lower().startswith("synthetic"):
        return synthetic.load(name, data_root)
    name = canonical_name(name)
    root = Path(path).expanduser() if path is not None else dataset_path(name, data_root)
    if not check_count:
        parser_kwargs["expected_count"] = None
    return DATASETS[name](root, check_files=check_files, **parser_kwargs)
