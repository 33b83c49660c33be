"""Hostile inputs for the data layer: release folders broken the way users break them.

Every case must end in a DatasetError (a KitError) whose message is ONE line naming the file or folder
involved (and the rows, for label problems). Image files that exist but do not decode pass the parsers
(they check existence only); check_images reports all of them, and check_images=True raises.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.io

from iqa_utils.data.images import check_images
from iqa_utils.data.manifest import DatasetError, row_word
from iqa_utils.data.registry import DATASETS
from iqa_utils.system import KitError

import native_fixtures as nf

NAMES = list(DATASETS)


def one_line_error(call, expected) -> str:
    """call() raises a one-line DatasetError (a KitError) containing every string of `expected`."""
    with pytest.raises(DatasetError) as err:
        call()
    msg = str(err.value)
    assert isinstance(err.value, KitError) and "\n" not in msg, msg
    for text in expected:
        assert text in msg, f"{text!r} not in {msg!r}"
    return msg


def label_path(name: str, root: Path) -> Path:
    return root / nf.LABEL_SPECS[name][0]


def names_path(name: str, root: Path) -> Path:
    """The file listing the images: LIVEC's names .mat, else the label file."""
    names = nf.LABEL_SPECS[name][1]
    return root / names[0] if isinstance(names, tuple) else label_path(name, root)


# ---- damage: each edits a fresh fixture and returns what the message must contain ---------------------

def missing_root(name, root):
    shutil.rmtree(root)
    return [str(root)]


def empty_folder(name, root):
    shutil.rmtree(root)
    root.mkdir()
    return [str(root)]


def wrong_schema(name, root):
    return [str(nf.break_label_schema(name, root))]


def overwrite_labels(data: bytes):
    def damage(name, root):
        label_path(name, root).write_bytes(data)
        return [str(label_path(name, root))]
    return damage


def absent_image(name, root):
    victim = Path(nf.load_fixture(name, root).df.path[1])
    victim.unlink()
    return [str(victim)]


def set_last_label(value, *also):
    def damage(name, root):
        table = nf.read_label_table(name, root)
        table.loc[table.index[-1], "label"] = value
        path = nf.write_label_table(name, root, table)
        return [str(path), f"{row_word(path)} {len(table)}", *also]
    return damage


def duplicate_last(same_label: bool):
    def damage(name, root):
        table = nf.read_label_table(name, root)
        last, prev = table.index[-1], table.index[-2]
        table.loc[last, "name"] = table.name[prev]
        if same_label:
            table.loc[last, "label"] = table.label[prev]
        nf.write_label_table(name, root, table)
        path, n = names_path(name, root), len(table)
        plural = "entries" if row_word(path) == "entry" else row_word(path) + "s"
        return [str(path), f"{plural} {n - 1}, {n}", "more than once"]
    return damage


CASES = {
    "missing root": missing_root,
    "empty folder": empty_folder,
    "wrong columns or keys": wrong_schema,
    "corrupt label file": overwrite_labels(b"\x89PNG\r\n\x1a\n\xff\xfe\x00 not labels \x01\x02"),
    "empty label file": overwrite_labels(b""),
    "listed but absent image": absent_image,
    "nan label": set_last_label(np.nan),
    "inf label": set_last_label(np.inf),
    "label above the scale": set_last_label(1000.0, "outside the release's scale"),
    "label below the scale": set_last_label(-100.0, "outside the release's scale"),
    "duplicate image, same label": duplicate_last(same_label=True),
    "duplicate image, other label": duplicate_last(same_label=False),
}
# LIVE's images come from its folders, not from a list: it cannot name an image twice
PAIRS = [(n, c) for n in NAMES for c in CASES if not (n == "LIVE" and c.startswith("duplicate"))]


@pytest.mark.parametrize("name, case", PAIRS)
def test_bad_release_fails_in_one_line_naming_the_file(name, case, tmp_path):
    root = nf.fresh(name, tmp_path)
    expected = CASES[case](name, root)
    one_line_error(lambda: nf.load_fixture(name, root), expected)


@pytest.mark.parametrize("name", ["TID2013", "LIVEC", "KonIQ-10k"])
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_many_bad_labels_are_counted(name, value, tmp_path):
    root = nf.fresh(name, tmp_path)
    table = nf.read_label_table(name, root)
    table.loc[table.index[-7:], "label"] = value
    path, n = nf.write_label_table(name, root, table), len(table)
    word = row_word(path)
    plural = "entries" if word == "entry" else word + "s"
    one_line_error(lambda: nf.load_fixture(name, root),
                   [str(path), f"{plural} {n - 6}, {n - 5}, {n - 4}, {n - 3}, {n - 2} and 2 more (7 rows)"])


def test_live_orgs_must_be_zero_or_one(tmp_path):
    root = nf.fresh("LIVE", tmp_path)
    path = root / "dmos_realigned.mat"
    mat = {k: v for k, v in scipy.io.loadmat(path).items() if not k.startswith("__")}
    mat["orgs"][0, 3] = np.nan
    scipy.io.savemat(path, mat)
    one_line_error(lambda: nf.load_fixture("LIVE", root), [str(path), "'orgs' must be 0 or 1", "entry 4"])


@pytest.mark.parametrize("patches, file, column", [("3patch", "labels_image_3patch.csv", "mos_patch_2"),
                                                    ("list", "labels_patch.csv", "mos")])
def test_livefb_bad_patch_label_names_its_file(patches, file, column, tmp_path):
    root = nf.write_livefb(tmp_path / "FLIVE_Database", patches=patches)
    table = pd.read_csv(root / file)
    table.loc[2, column] = np.inf
    table.to_csv(root / file, index=False)
    one_line_error(lambda: nf.load_fixture("LIVEFB", root),
                   [str(root / file), "non-finite patch labels", "data row 3"])


# ---- files that exist but do not decode -----------------------------------------------------------------

IMAGE_DAMAGE = {
    "zero-byte": (lambda p: p.write_bytes(b""), "empty file"),
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), "truncated"),
    "not an image": (lambda p: p.write_text("<html>404 Not Found</html>"), "not an image"),
}


@pytest.mark.parametrize("kind", IMAGE_DAMAGE)
@pytest.mark.parametrize("name", NAMES)
def test_undecodable_images_are_all_reported(name, kind, tmp_path):
    root = nf.fresh(name, tmp_path)
    damage, reason = IMAGE_DAMAGE[kind]
    victims = [Path(p) for p in nf.load_fixture(name, root).df.path[[1, 3]]]
    for victim in victims:
        damage(victim)
    manifest = nf.load_fixture(name, root)                   # the parsers check existence only
    found = check_images(manifest, progress=False)
    assert [p for p, _ in found] == [str(v) for v in victims]
    assert all(why.startswith(reason) for _, why in found), found
    one_line_error(lambda: nf.load_fixture(name, root, check_images=True),
                   [f"unreadable image {victims[0]} ({reason}", "2 unreadable in all", str(victims[1])])


def test_check_images_reports_missing_files_too(tmp_path):
    root = nf.fresh("KonIQ-10k", tmp_path)
    manifest = nf.load_fixture("KonIQ-10k", root)
    Path(manifest.df.path[0]).unlink()
    assert check_images(manifest, progress=False) == [(manifest.df.path[0], "missing")]
