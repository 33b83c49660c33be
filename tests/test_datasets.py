"""Dataset parsers read tiny fakes of each release's native files (tests/native_fixtures.py)."""
from __future__ import annotations

import shutil
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.io

from iqa_utils.data import csiq, kadid, koniq, live, livec, livefb, spaq, tid2013
from iqa_utils.data.manifest import EXPECTED_COUNTS, DatasetError
from iqa_utils.data.registry import (DATASET_FOLDERS, DATASETS, DEIQT_GLOBAL_BATCH,
                                     load_manifest)

import native_fixtures as nf

NAMES = list(DATASETS)
REF_SETS = {"LIVE", "CSIQ", "TID2013", "KADID-10k"}
DIRECTION = {"LIVE": "DMOS", "CSIQ": "DMOS"}          # all others are MOS (KADID despite its column)
# the file a parser cannot do without, relative to the release folder
LABEL_FILES = {"LIVE": "dmos_realigned.mat", "CSIQ": "csiq_label.txt", "TID2013": "mos_with_names.txt",
               "KADID-10k": "dmos.csv", "LIVEC": "Data/AllMOS_release.mat",
               "KonIQ-10k": "koniq10k_scores_and_distributions.csv", "LIVEFB": "labels_image.csv",
               "SPAQ": nf.SPAQ_LABELS}


@pytest.fixture(scope="module")
def native_root(tmp_path_factory) -> Path:
    """A data root with the native-format fixture of every release (not conftest's synthetic data_root)."""
    root = tmp_path_factory.mktemp("data")
    nf.write_all(root)
    return root


# ---- every dataset ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_fixture_parses_to_manifest(name, native_root):
    m = load_manifest(name, native_root, check_count=False)
    assert m.name == name and len(m) == nf.FIXTURE_COUNTS[name]
    assert set(m.df.direction) == {DIRECTION.get(name, "MOS")}
    assert m.split_unit == ("ref" if name in REF_SETS else "image")
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in m.df.path)
    assert np.isfinite(m.df.label).all() and m.df.path.is_unique
    if name in REF_SETS:
        assert m.df.ref.notna().all() and m.df.distortion.notna().all() and len(m.units) >= 3
    else:
        assert m.df.ref.isna().all()
    squashed = name in ("KonIQ-10k", "SPAQ")
    assert m.parity_size == ((512, 384) if squashed else None)
    assert m.keep_aspect_short_side == (384 if squashed else None)


@pytest.mark.parametrize("name", NAMES)
def test_release_count_is_enforced(name, native_root):
    with pytest.raises(DatasetError, match=rf"found {nf.FIXTURE_COUNTS[name]} .*expected {EXPECTED_COUNTS[name]}"):
        load_manifest(name, native_root)
    with pytest.raises(DatasetError, match=rf"expected {nf.FIXTURE_COUNTS[name] + 1}\b"):
        nf.load_fixture(name, native_root / DATASET_FOLDERS[name], expected_count=nf.FIXTURE_COUNTS[name] + 1)


@pytest.mark.parametrize("name", NAMES)
def test_missing_root_names_it(name, tmp_path):
    missing = tmp_path / "not_here"
    with pytest.raises(DatasetError, match=str(missing)):
        DATASETS[name](missing)


@pytest.mark.parametrize("name", NAMES)
def test_missing_label_file_names_it(name, tmp_path):
    root = nf.fresh(name, tmp_path)
    (root / LABEL_FILES[name]).unlink()
    with pytest.raises(DatasetError) as err:
        nf.load_fixture(name, root)
    # CSIQ with no label file at all lists the layouts it looked for
    expected = "csiq.DMOS.xlsx" if name == "CSIQ" else str(root / LABEL_FILES[name])
    assert expected in str(err.value) and LABEL_FILES[name].split("/")[-1] in str(err.value)


@pytest.mark.parametrize("name", NAMES)
def test_listed_but_absent_image_names_it(name, tmp_path):
    root = nf.fresh(name, tmp_path)
    victim = Path(nf.load_fixture(name, root).df.path[1])
    victim.unlink()
    with pytest.raises(DatasetError, match=str(victim)):
        nf.load_fixture(name, root)


@pytest.mark.parametrize("name", ["TID2013", "KonIQ-10k"])
def test_check_images_decodes_and_names_unreadable_file(name, tmp_path):
    root = nf.fresh(name, tmp_path)
    bad = Path(nf.load_fixture(name, root).df.path[2])
    bad.write_bytes(b"not an image at all")
    nf.load_fixture(name, root)                     # existence only: passes
    with pytest.raises(DatasetError, match=rf"unreadable image {bad}"):
        nf.load_fixture(name, root, check_images=True)


# ---- malformed label files ----------------------------------------------------------------------------

def test_live_mat_without_key(tmp_path):
    root = nf.fresh("LIVE", tmp_path)
    scipy.io.savemat(root / "dmos_realigned.mat", {"dmos": np.zeros((1, 22)), "orgs": np.zeros((1, 22))})
    with pytest.raises(DatasetError, match=rf"{root / 'dmos_realigned.mat'}: missing variables \['dmos_new'\]"):
        nf.load_fixture("LIVE", root)


def test_livec_mats_disagree(tmp_path):
    root = nf.fresh("LIVEC", tmp_path)
    scipy.io.savemat(root / livec.MOS_FILE, {"AllMOS_release": np.ones((1, 12))})
    with pytest.raises(DatasetError, match="lists 17 images but .*AllMOS_release.mat holds 12"):
        nf.load_fixture("LIVEC", root)


@pytest.mark.parametrize("name, column", [("KADID-10k", "ref_img"), ("KonIQ-10k", "MOS_zscore"),
                                          ("LIVEFB", "mos")])
def test_csv_with_wrong_columns(name, column, tmp_path):
    root = nf.fresh(name, tmp_path)
    path = root / LABEL_FILES[name]
    pd.read_csv(path).rename(columns={column: column + "_x"}).to_csv(path, index=False)
    with pytest.raises(DatasetError, match=rf"{path}: missing columns \['{column}'\]"):
        nf.load_fixture(name, root)


def test_spaq_xlsx_with_wrong_columns(tmp_path):
    root = nf.fresh("SPAQ", tmp_path)
    path = root / nf.SPAQ_LABELS
    pd.read_excel(path).rename(columns={"MOS": "Score"}).to_excel(path, index=False)
    with pytest.raises(DatasetError, match=r"MOS and Image attribute scores.xlsx: missing columns \['MOS'\]"):
        nf.load_fixture("SPAQ", root)


def test_non_numeric_label_names_file_and_row(tmp_path):
    root = nf.fresh("LIVEFB", tmp_path)
    path = root / "labels_image.csv"
    df = pd.read_csv(path)
    df["mos"] = df["mos"].astype(object)
    df.loc[3, "mos"] = "n/a"
    df.to_csv(path, index=False)
    with pytest.raises(DatasetError, match=rf"{path}: column 'mos' has a non-numeric value in data row 4"):
        nf.load_fixture("LIVEFB", root)


@pytest.mark.parametrize("name, bad_line", [("TID2013", "5.1 tid_image.bmp"), ("CSIQ", "1600.AWGN.png x")])
def test_malformed_text_label_line(name, bad_line, tmp_path):
    root = nf.fresh(name, tmp_path)
    path = root / LABEL_FILES[name]
    path.write_text(path.read_text() + bad_line + "\n")
    with pytest.raises(DatasetError, match=rf"{path}, line {nf.FIXTURE_COUNTS[name] + 1}"):
        nf.load_fixture(name, root)


# ---- LIVE ---------------------------------------------------------------------------------------------

def test_live_keeps_orgs_zero_in_folder_order(native_root):
    root = native_root / "databaserelease2"
    m = nf.load_fixture("LIVE", root)
    mat = scipy.io.loadmat(root / "dmos_realigned.mat")
    dmos, orgs = mat["dmos_new"].ravel(), mat["orgs"].ravel()
    names = [str(x[0]) for x in scipy.io.loadmat(root / "refnames_all.mat")["refnames_all"].ravel()]
    keep = orgs == 0
    assert keep.sum() == len(m) == 17
    np.testing.assert_allclose(m.df.label, dmos[keep])          # dmos_new, not the decoy dmos.mat
    assert m.df.ref.tolist() == [Path(n).stem for n, k in zip(names, keep) if k]
    # folder order jp2k, jpeg, wn, gblur, fastfading; the first entry of each is a reference copy
    assert m.df.distortion.value_counts().to_dict() == {"jp2k": 4, "jpeg": 4, "wn": 3, "gblur": 3,
                                                        "fastfading": 3}
    assert Path(m.df.path[0]).name == "img2.bmp" and Path(m.df.path[4]).parent.name == "jpeg"
    assert m.df.level.isna().all() and m.direction == "DMOS"


def test_live_release_structure(tmp_path):
    root = nf.write_live_release(tmp_path / "databaserelease2")
    m = live.parse(root)                                         # release count, release folder sizes
    assert len(m) == 779 and len(m.units) == 29
    entries = m.df.path.map(lambda p: Path(p).parent.name).value_counts()
    assert entries.sum() == 779 and set(entries.index) == set(live.FOLDERS)
    assert Path(m.df.path.iloc[-1]).name == "img174.bmp"         # last fastfading image is kept


def test_live_count_hint_and_bad_folder_counts(native_root):
    root = native_root / "databaserelease2"
    with pytest.raises(DatasetError, match=r"kept per folder: jp2k 4, jpeg 4"):
        live.parse(root)
    with pytest.raises(DatasetError, match="folder_counts sum to 5"):
        live.parse(root, expected_count=None, folder_counts={"jp2k": 5})


# ---- CSIQ ---------------------------------------------------------------------------------------------

def _sorted(m):
    return m.df.assign(file=m.df.path.map(lambda p: Path(p).name.lower())).sort_values("file").reset_index(drop=True)


def test_csiq_official_layout_matches_community(tmp_path):
    root = nf.write_csiq(tmp_path / "CSIQ", layout="both")
    auto = nf.load_fixture("CSIQ", root)
    assert auto.extras["layout"] == "community"                  # DEIQT's layout wins when both exist
    official = nf.load_fixture("CSIQ", root, layout="official")
    assert all("/dst_imgs/" in p for p in official.df.path)       # nested per-type subfolders
    a, b = _sorted(auto), _sorted(official)
    for col in ("file", "label", "ref", "distortion", "level"):
        assert a[col].tolist() == b[col].tolist(), col
    assert set(a.distortion) == {"awgn", "jpeg", "jpeg2000", "fnoise", "blur", "contrast"}
    assert set(a.ref) == {"1600", "aerial_city", "boston"} and set(a.level) == {1, 2}


def test_csiq_detects_official_only_layout(tmp_path):
    root = nf.write_csiq(tmp_path / "CSIQ", layout="official")
    m = nf.load_fixture("CSIQ", root)
    assert m.extras["layout"] == "official" and m.label_range == (0.0, 1.0)
    row = m.df[m.df.path.str.endswith("1600.jpeg2000.2.png")].iloc[0]
    assert Path(row.path).parent.name == "jpeg2000" and row.distortion == "jpeg2000" and row.level == 2


def test_csiq_without_any_layout_lists_expected_files(tmp_path):
    (tmp_path / "CSIQ").mkdir()
    with pytest.raises(DatasetError, match="csiq_label.txt .*dst_imgs_all.*csiq.DMOS.xlsx .*dst_imgs"):
        csiq.parse(tmp_path / "CSIQ")


def test_csiq_xlsx_with_wrong_header(tmp_path):
    import openpyxl
    root = nf.write_csiq(tmp_path / "CSIQ", layout="official")
    wb = openpyxl.Workbook()
    wb.active.append(["image", "type", "level", "score"])
    wb.save(root / "csiq.DMOS.xlsx")
    with pytest.raises(DatasetError, match=r"csiq.DMOS.xlsx: no sheet with a header row naming \['image', 'dst_idx'"):
        nf.load_fixture("CSIQ", root)


# ---- TID2013, KADID-10k -------------------------------------------------------------------------------

def test_tid2013_case_insensitive_names_and_fields(native_root):
    root = native_root / "tid2013"
    m = nf.load_fixture("TID2013", root)
    upper = m.df[m.df.ref == "02"]
    assert len(upper) == 6 and all(Path(p).name.startswith("I02_") for p in upper.path)
    assert sorted(m.units) == ["01", "02", "25"]
    row = m.df[m.df.path.str.endswith("i25_03_2.bmp")].iloc[0]
    assert (row.distortion, row.level) == ("spatially_correlated_noise", 2)
    first = (root / "mos_with_names.txt").read_text().split()
    assert m.df.label[0] == pytest.approx(float(first[0])) and m.label_range == (0.0, 9.0)


def test_tid2013_count_hint_names_missing_combination(tmp_path):
    root = nf.fresh("TID2013", tmp_path)
    path = root / "mos_with_names.txt"
    path.write_text("\n".join(path.read_text().splitlines()[1:]) + "\n")
    with pytest.raises(DatasetError, match="found 17 .*missing ref/distortion/level: 01/additive_gaussian_noise/1$"):
        nf.load_fixture("TID2013", root)


def test_kadid_single_and_split_folders(tmp_path):
    single = nf.load_fixture("KADID-10k", nf.write_kadid(tmp_path / "a", layout="images"))
    split = nf.load_fixture("KADID-10k", nf.write_kadid(tmp_path / "b", layout="split"))
    assert single.extras["image_folder"] == "images" and split.extras["image_folder"] == "distorted_images"
    assert single.df.label.tolist() == split.df.label.tolist()
    assert not single.df.path.str.contains(r"/I0\d\.png$").any()   # references are not listed
    csv = pd.read_csv(tmp_path / "a" / "dmos.csv")
    assert single.df.label.tolist() == csv.dmos.tolist() and single.direction == "MOS"
    assert single.df.ref.tolist() == csv.ref_img.str[1:3].tolist()
    assert (single.df.distortion[2], single.df.level[3]) == ("lens_blur", 2)


def test_kadid_without_image_folder_lists_candidates(tmp_path):
    root = nf.fresh("KADID-10k", tmp_path)
    shutil.rmtree(root / "images")
    with pytest.raises(DatasetError, match=f"folders found: {root / 'images'}, {root / 'distorted_images'}"):
        nf.load_fixture("KADID-10k", root)


# ---- LIVEC, KonIQ-10k, SPAQ ---------------------------------------------------------------------------

def test_livec_drops_practice_images(native_root):
    root = native_root / "ChallengeDB_release"
    m = nf.load_fixture("LIVEC", root)
    mos = scipy.io.loadmat(root / livec.MOS_FILE)["AllMOS_release"].ravel()
    assert len(mos) == 17 and len(m) == 10
    np.testing.assert_allclose(m.df.label, mos[7:])
    assert not m.df.path.str.contains("trainingImages|/t\\d\\.bmp").any()
    assert Path(m.df.path[1]).name == "101.JPG"


def test_koniq_label_column_and_folders(tmp_path):
    root = nf.write_koniq(tmp_path / "koniq10k", folders=("512x384",))
    csv = pd.read_csv(root / "koniq10k_scores_and_distributions.csv")
    z = nf.load_fixture("KonIQ-10k", root)
    assert z.df.label.tolist() == csv.MOS_zscore.tolist() and z.extras["image_folder"] == "512x384"
    mos = nf.load_fixture("KonIQ-10k", root, label_column="MOS")
    assert mos.df.label.tolist() == csv.MOS.tolist() and mos.label_range == (1.0, 5.0)
    both = nf.load_fixture("KonIQ-10k", nf.write_koniq(tmp_path / "k2", folders=("1024x768", "512x384")))
    assert both.extras["image_folder"] == "1024x768"            # the originals are preferred
    assert koniq.parse(tmp_path / "k2", expected_count=None, image_folder="512x384").df.path[0].count("512x384")


def test_spaq_resized_folder_and_spaces(tmp_path):
    data = tmp_path / "data root"
    root = nf.write_spaq(data / "SPAQ zip", folders=("512x384",))
    m = load_manifest("SPAQ", data, check_count=False)              # found under the alias "SPAQ zip"
    assert m.root == root.absolute() and m.extras["image_folder"] == "512x384"
    xlsx = pd.read_excel(root / nf.SPAQ_LABELS)
    assert m.df.label.tolist() == xlsx.MOS.tolist() and " " in m.df.path[0]
    assert spaq.PARITY_SIZE == (512, 384)


# ---- LIVEFB -------------------------------------------------------------------------------------------

def test_livefb_patch_sizes_come_from_boxes(native_root):
    m = nf.load_fixture("LIVEFB", native_root / "FLIVE_Database")
    assert m.df.path.str.contains("/database/voc_emotic_ava/").sum() == 2
    p = m.extras["patches"]
    assert len(p) == 18 and set(p.image) == set(pd.read_csv(native_root / "FLIVE_Database/labels_image.csv").name)
    for i, frac in enumerate(nf.PATCH_FRACTIONS[0] + nf.PATCH_FRACTIONS[1]):
        assert p.rel_side[i] == pytest.approx(frac, abs=0.01)
    first = p[p.image == m.df.path[0].split("database/")[1]]
    assert first.size_rank.tolist() == [1, 3, 2] and first.patch.tolist() == [1, 2, 3]
    assert p.exists.all() and p.path.str.contains("/database/patches/").all()


def test_livefb_patch_list_and_missing_patch_file(tmp_path):
    root = nf.write_livefb(tmp_path / "FLIVE_Database", patches="list")
    (root / "database/patches/img_002.jpg_patch_3.jpg").unlink()     # tolerated: 9 are missing in the wild
    with pytest.warns(UserWarning, match=r"LIVEFB: 1 of 18 listed patch files are missing .*img_002.jpg_patch_3"):
        p = nf.load_fixture("LIVEFB", root).extras["patches"]
    assert p.rel_area.isna().all() and p.image[0] == "blur_dataset/img_000.jpg"
    assert p.exists.sum() == 17 and not p.exists[8]
    nopatch = nf.write_livefb(tmp_path / "bare", patches=None)
    assert "patches" not in nf.load_fixture("LIVEFB", nopatch).extras


def test_livefb_patch_names_follow_the_release(tmp_path):
    root = nf.write_livefb(tmp_path / "FLIVE_Database", patches="both")
    pd.read_csv(root / "labels_image_3patch.csv").drop(columns="name_patch").to_csv(
        root / "labels_image_3patch.csv", index=False)              # names then come from name_image
    listed = pd.read_csv(root / "labels_patch.csv")
    listed.assign(name=listed.name.str.replace("patches/", "")).to_csv(root / "labels_patch.csv", index=False)
    from_boxes = nf.load_fixture("LIVEFB", root).extras
    (root / "labels_image_3patch.csv").unlink()
    from_list = nf.load_fixture("LIVEFB", root).extras
    for extras in (from_boxes, from_list):
        assert extras["patches_missing"] == 0 and extras["patches"].exists.all()
        assert extras["patches"].name[0] == "patches/img_000.jpg_patch_1.jpg"   # <image file name>_patch_<k>
    assert from_list["patches"].image.tolist() == from_boxes["patches"].image.tolist()


def test_livefb_missing_patch_files_are_counted_and_warned(tmp_path):
    root = nf.write_livefb(tmp_path / "FLIVE_Database")
    for k in (1, 2):
        (root / f"database/patches/img_005.jpg_patch_{k}.jpg").unlink()
    with pytest.warns(UserWarning, match=r"LIVEFB: 2 of 18 listed patch files are missing .*: "
                                         r"img_005.jpg_patch_1.jpg, img_005.jpg_patch_2.jpg"):
        m = nf.load_fixture("LIVEFB", root)
    assert m.extras["patches_missing"] == 2 and (~m.extras["patches"].exists).sum() == 2


# ---- registry -----------------------------------------------------------------------------------------

def test_registry_tables_agree():
    assert set(DATASETS) == set(DATASET_FOLDERS) == set(DEIQT_GLOBAL_BATCH) == set(EXPECTED_COUNTS)
    assert DEIQT_GLOBAL_BATCH == {"LIVE": 48, "CSIQ": 48, "TID2013": 160, "KADID-10k": 512, "LIVEC": 64,
                                  "KonIQ-10k": 512, "SPAQ": 512, "LIVEFB": 2048}
    assert DATASET_FOLDERS["LIVE"] == "databaserelease2" and DATASET_FOLDERS["KonIQ-10k"] == "koniq10k"
    assert {tid2013.NAME, kadid.NAME, livefb.NAME} <= set(DATASETS)


def test_load_manifest_names_paths_and_errors(native_root, tmp_path, monkeypatch):
    assert len(load_manifest("koniq10k", native_root, check_count=False)) == 8       # loose name
    m = load_manifest("TID2013", path=native_root / "tid2013", expected_count=18)   # explicit path
    assert m.root == (native_root / "tid2013").absolute()
    with pytest.raises(KeyError, match="LIVE, CSIQ, TID2013, KADID-10k, LIVEC, KonIQ-10k, LIVEFB, SPAQ"):
        load_manifest("PIPAL", native_root)
    with pytest.raises(DatasetError, match="'ChallengeDB_release', 'LIVEC'"):
        load_manifest("LIVEC", tmp_path)
    monkeypatch.delenv("IQA_KIT_DATA", raising=False)
    with pytest.raises(DatasetError, match="no data root"):
        load_manifest("LIVEC")
    calls = []
    fake = types.SimpleNamespace(load=lambda name, root: calls.append((name, root)) or "synthetic manifest")
    monkeypatch.setattr("iqa_utils.data.registry.synthetic", fake)
    assert load_manifest("synthetic_b", "/x") == "synthetic manifest" and calls == [("synthetic_b", "/x")]
