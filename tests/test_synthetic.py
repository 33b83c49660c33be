"""The embedded synthetic set: deterministic, complete, sensibly labelled, clear errors."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from iqa_utils.data import synthetic as syn
from iqa_utils.data.manifest import DatasetError

N_REFS = syn.DEFAULT_N_REFS            # conftest's data_root holds the whole set


@pytest.fixture(scope="session")
def manifest(data_root):
    return syn.parse(data_root / "synthetic")


@pytest.fixture
def small(tmp_path):
    """A throwaway one-reference build that a test may damage."""
    return syn.build_synthetic(tmp_path / "one", progress=False, n_refs=1)


def test_counts_and_manifest(manifest, data_root):
    n_types = len(syn.DISTORTIONS)
    assert len(manifest) == N_REFS * n_types * 4
    assert manifest.split_unit == "ref" and manifest.direction == "MOS"
    assert manifest.units == [f"ref_{i:02d}" for i in range(N_REFS)]
    assert manifest.df.groupby("ref").size().tolist() == [n_types * 4] * N_REFS
    assert sorted(manifest.df.level.unique()) == [1, 2, 3, 4]
    assert manifest.df.label.between(0, 100).all() and manifest.df.label.std() > 10
    assert len(list((data_root / "synthetic" / "images").glob("*.png"))) == len(manifest)
    recipe = json.loads((data_root / "synthetic" / "recipe.json").read_text())
    assert recipe["version"] == syn.RECIPE_VERSION and len(recipe["sources"]) == N_REFS
    manifest.check_files()


def test_two_builds_identical(manifest, tmp_path):
    other = syn.parse(syn.build_synthetic(tmp_path / "again", progress=False, n_refs=N_REFS))
    a = pd.read_csv(manifest.root / "labels.csv")
    b = pd.read_csv(other.root / "labels.csv")
    pd.testing.assert_frame_equal(a, b)  # includes each image's sha1, i.e. the pixels
    for r in manifest.units:
        assert (manifest.root / "refs" / f"{r}.png").read_bytes() == (other.root / "refs" / f"{r}.png").read_bytes()


def test_labels_fall_with_level(manifest):
    means = manifest.df.groupby(["distortion", "level"]).label.mean().unstack("level")
    assert list(means.index.sort_values()) == sorted(syn.DISTORTIONS)
    assert (np.diff(means.to_numpy(), axis=1) < 0).all(), means
    # and the FR measures behind them too
    fr = manifest.df.join(manifest.extras["fr"]).groupby(["distortion", "level"]).psnr.mean().unstack()
    assert (np.diff(fr.to_numpy(), axis=1) < 0).all()


def test_pseudo_mos_formula():
    assert syn.pseudo_mos(1.0, 100.0) == 100.0
    assert syn.pseudo_mos(0.0, 10.0) == 0.0
    assert syn.pseudo_mos(0.5, 27.5) == pytest.approx(100 * (0.7 * 0.5 ** 1.5 + 0.3 * 0.5))
    ref = syn.make_reference(syn.SOURCES[0])
    same = syn.fr_measures(ref, ref)
    assert same["mos"] == 100.0 and same["ssim"] == pytest.approx(1.0)


def test_groups_disjoint(data_root, manifest):
    a = syn.load("synthetic_a", data_root=data_root, progress=False, n_refs=N_REFS)
    b = syn.load("synthetic_b", data_root=data_root, progress=False, n_refs=N_REFS)
    assert a.name == "synthetic_a" and b.name == "synthetic_b"
    assert set(a.df.distortion) == set(syn.GROUPS["a"]) and set(b.df.distortion) == set(syn.GROUPS["b"])
    assert not set(a.df.path) & set(b.df.path)
    assert len(a) + len(b) == len(manifest)
    assert a.units == b.units == manifest.units  # same references, different distortions
    assert len(a.extras["fr"]) == len(a)
    with pytest.raises(KeyError):
        syn.load("synthetic_c", data_root=data_root)


def test_reuse_and_rebuild(small):
    labels = small / "labels.csv"
    stamp = labels.stat().st_mtime_ns
    assert syn.build_synthetic(small, progress=False, n_refs=1) == small
    assert labels.stat().st_mtime_ns == stamp  # reused, not rebuilt
    recipe = json.loads((small / "recipe.json").read_text())
    recipe["version"] = -1
    (small / "recipe.json").write_text(json.dumps(recipe))
    syn.build_synthetic(small, progress=False, n_refs=1)
    assert json.loads((small / "recipe.json").read_text())["version"] == syn.RECIPE_VERSION
    assert labels.stat().st_mtime_ns != stamp


def test_failed_build_leaves_nothing(tmp_path, monkeypatch):
    calls = []

    def failing(ref, kind, level, rng):
        calls.append(kind)
        if len(calls) > 5:
            raise RuntimeError("disk full")
        return ref

    monkeypatch.setattr(syn, "distort", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        syn.build_synthetic(tmp_path / "synthetic", progress=False, n_refs=1)
    assert list(tmp_path.iterdir()) == []


def test_corrupted_and_missing_files_raise(small):
    target = small / "images" / "ref_00_jpeg_2.png"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match="ref_00_jpeg_2.png"):
        syn.parse(small)
    target.unlink()
    with pytest.raises(DatasetError, match="missing.*ref_00_jpeg_2.png"):
        syn.parse(small)
    (small / "labels.csv").unlink()
    with pytest.raises(DatasetError, match="labels.csv"):
        syn.parse(small)


def test_bad_label_columns_raise(small):
    lab = pd.read_csv(small / "labels.csv").drop(columns=["mos"])
    lab.to_csv(small / "labels.csv", index=False)
    with pytest.raises(DatasetError, match="mos"):
        syn.parse(small)


def test_default_root(monkeypatch, tmp_path):
    assert syn.default_root(tmp_path) == tmp_path / "synthetic"
    monkeypatch.setenv("IQA_KIT_DATA", str(tmp_path / "env"))
    assert syn.default_root() == tmp_path / "env" / "synthetic"
    monkeypatch.delenv("IQA_KIT_DATA")
    monkeypatch.delenv("IQA_KIT_CACHE", raising=False)
    assert syn.default_root() == Path("~/.cache/iqa-kit/synthetic").expanduser()
    monkeypatch.setenv("IQA_KIT_CACHE", str(tmp_path / "cache"))      # the kit's one cache folder
    assert syn.default_root() == tmp_path / "cache" / "synthetic"


def test_all_sources_fit():
    assert len(syn.SOURCES) >= syn.DEFAULT_N_REFS
    for s in syn.SOURCES:
        ref = syn.make_reference(s)
        assert ref.shape == (syn.REF_SIZE, syn.REF_SIZE, 3) and ref.dtype == np.uint8 and ref.std() > 5


def test_scale_labels(manifest):
    rows = manifest.df.index[manifest.df.level.isin([1, 4]) & (manifest.df.ref == "ref_00")]
    sub = manifest.subset(rows)
    out = syn.scale_labels(sub, ratios=(0.2, 0.4), n_per_image=2, seed=0)
    assert len(out) == len(sub) * 2 * 2
    assert sorted(out.side.unique()) == [round(0.2 * syn.REF_SIZE), round(0.4 * syn.REF_SIZE)]
    assert out.mos_crop.between(0, 100).all()
    assert (out.top + out.side <= syn.REF_SIZE).all() and (out.left + out.side <= syn.REF_SIZE).all()
    pd.testing.assert_frame_equal(out, syn.scale_labels(sub, ratios=(0.2, 0.4), n_per_image=2, seed=0))
    assert not out.top.equals(syn.scale_labels(sub, ratios=(0.2, 0.4), n_per_image=2, seed=1).top)
    # crops of heavily distorted images score lower on average
    by_level = out.groupby("level").mos_crop.mean()
    assert by_level[1] > by_level[4]
    # a crop of the whole image gets the image's label
    full = syn.scale_labels(sub.subset(range(3)), ratios=(1.0,), n_per_image=1)
    assert np.allclose(full.mos_crop, full.mos, atol=1e-3)
