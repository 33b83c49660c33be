"""Splits: seeded, by reference where content repeats, DEIQT's round, nested fractions, stored."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from iqa_utils.data.manifest import Manifest
from iqa_utils.data.splits import Split, full_split, make_split


def ref_manifest(n_refs=29, per_ref=5, name="LIVE"):
    rows = [{"path": f"/x/{r}_{k}.bmp", "label": float(k), "direction": "DMOS", "ref": f"ref{r:02d}",
             "distortion": "jpeg", "level": k} for r in range(n_refs) for k in range(per_ref)]
    return Manifest(name, "/x", pd.DataFrame(rows).sample(frac=1, random_state=0), split_unit="ref")


def image_manifest(n=50):
    rows = [{"path": f"/y/{i}.jpg", "label": float(i), "direction": "MOS", "ref": None, "distortion": None,
             "level": None} for i in range(n)]
    return Manifest("LIVEC", "/y", pd.DataFrame(rows), split_unit="image")


def test_reproducible_and_seed_dependent():
    m = ref_manifest()
    assert make_split(m, 3) == make_split(m, 3)
    assert make_split(m, 3).digest() == make_split(m, 3).digest()
    assert make_split(m, 3).test != make_split(m, 4).test
    assert make_split(m, 3).digest() != make_split(m, 4).digest()


def test_disjoint_covering_and_by_reference():
    m = ref_manifest()
    s = make_split(m, 0, val_fraction=0.2)
    parts = [set(s.train), set(s.val), set(s.test)]
    assert sum(map(len, parts)) == len(m) and set().union(*parts) == set(range(len(m)))
    refs = [set(m.df.ref.iloc[sorted(p)]) for p in parts]
    assert not (refs[0] & refs[2]) and not (refs[0] & refs[1]) and not (refs[1] & refs[2])
    assert refs[2] == set(s.test_units) and refs[0] == set(s.train_units)
    assert s.train == sorted(s.train) and s.test == sorted(s.test)


def test_deiqt_round_not_int():
    assert len(make_split(ref_manifest(81, 1, "KADID-10k"), 0).train_units) == 65   # int() would give 64
    assert len(make_split(ref_manifest(29, 1), 0).train_units) == 23
    assert len(make_split(image_manifest(1162), 0).train) == 930


def test_fractions_are_nested_and_keep_test():
    m = image_manifest(100)
    s = {f: make_split(m, 7, train_fraction=f, val_fraction=0.1) for f in (0.2, 0.4, 0.6, 1.0)}
    assert set(s[0.2].train) < set(s[0.4].train) < set(s[0.6].train) < set(s[1.0].train)
    assert len(s[0.2].train) == round(0.2 * 72)
    assert all(x.test == s[1.0].test and x.val == s[1.0].val for x in s.values())


def test_image_units_and_full_split():
    m = image_manifest(50)
    s = make_split(m, 1)
    assert s.unit == "image" and s.train == sorted(s.train_units) and len(s.test) == 10
    f = full_split(m)
    assert f.test == list(range(50)) and not f.train and not f.val


def test_save_load_round_trip(tmp_path):
    m = ref_manifest()
    s = make_split(m, 5, val_fraction=0.1)
    path = s.save(tmp_path / "splits" / "s.json")
    back = Split.load(path)
    assert back == s and back.digest() == s.digest()
    assert [p.name for p in path.parent.iterdir()] == ["s.json"]         # no temp file left
    d = json.loads(path.read_text())
    d["test"] = d["test"][1:]
    path.write_text(json.dumps(d))
    with pytest.raises(ValueError, match="digest"):
        Split.load(path)


def test_numpy_reference_ids_survive_json(tmp_path):
    rows = [{"path": f"/z/{i}.png", "label": 1.0, "direction": "MOS", "ref": np.int64(i // 3), "distortion": None,
             "level": None} for i in range(30)]
    m = Manifest("synthetic", "/z", pd.DataFrame(rows), split_unit="ref")
    s = make_split(m, 0)
    assert Split.load(s.save(tmp_path / "s.json")) == s


def test_bad_arguments():
    with pytest.raises(ValueError):
        make_split(image_manifest(), 0, ratio=0.0)
    with pytest.raises(ValueError):
        make_split(image_manifest(), 0, train_fraction=1.5)
