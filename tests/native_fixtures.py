"""Tiny fake releases of the eight IQA datasets, written in each release's native format.

Every writer takes the release folder to create and returns it; labels and image content are seeded
random values, images are real files (BMP, PNG, JPEG as each release ships them) of a few dozen pixels.
The structure (file names, label-file formats, keys, columns, folder layout, known quirks) follows
iqa_utils/data/<dataset>.py's docstrings, so parsers read these exactly as they read a release.

    write_all(data_root) -> {name: folder}   every dataset under data_root/DATASET_FOLDERS[name]
    FIXTURE_COUNTS[name]                      image count each writer gives with its defaults
    load_fixture(name, folder, **kw)          parse a fixture with expected_count=FIXTURE_COUNTS[name]
    fresh(name, root, **kw)                   a private copy of one fixture, for a test that damages it

The counts are not the releases', so pass expected_count (or load_manifest(..., check_count=False)).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import scipy.io
from PIL import Image

from iqa_utils.data.registry import DATASET_FOLDERS, DATASETS

LIVE_REFS = ("bikes", "building2", "buildings", "caps", "carnivaldolls", "cemetry", "churchandcapitol",
             "coinsinfountain", "dancers", "flowersonih35", "house", "lighthouse", "lighthouse2",
             "manfishing", "monarch", "ocean", "paintedhouse", "parrots", "plane", "rapids", "sailing1",
             "sailing2", "sailing3", "sailing4", "statue", "stream", "studentsculpture", "woman", "womanhat")
LIVE_SMALL_FOLDERS = {"jp2k": 5, "jpeg": 5, "wn": 4, "gblur": 4, "fastfading": 4}
LIVE_RELEASE_FOLDERS = {"jp2k": 227, "jpeg": 233, "wn": 174, "gblur": 174, "fastfading": 174}
# CSIQ spreadsheet dst_type, dst_idx, subfolder of dst_imgs/, tag in the file names
CSIQ_TYPES = (("noise", 1, "awgn", "AWGN"), ("jpeg", 2, "jpeg", "JPEG"), ("jpeg 2000", 3, "jpeg2000", "jpeg2000"),
              ("fnoise", 4, "fnoise", "fnoise"), ("blur", 5, "blur", "BLUR"), ("contrast", 6, "contrast", "contrast"))
SPAQ_LABELS = "Annotations/MOS and Image attribute scores.xlsx"
PATCH_FRACTIONS = ((0.2, 0.4, 0.3), (0.4, 0.3, 0.2), (0.3, 0.2, 0.4))   # side fraction of patch 1, 2, 3

FIXTURE_COUNTS = {"LIVE": 17, "CSIQ": 36, "TID2013": 18, "KADID-10k": 18, "LIVEC": 10,
                  "KonIQ-10k": 8, "LIVEFB": 6, "SPAQ": 8}


def write_image(path: Path, size=(32, 32), seed: int = 0) -> Path:
    """A random RGB image of size (W, H); the format follows the suffix (.bmp, .png, .jpg, .JPG)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def _round(x, n=4):
    return [round(float(v), n) for v in x]


# ---- synthetic-distortion datasets (split by reference) ------------------------------------------

def write_live(root: Path, n_refs: int = 3, per_folder: dict | None = None, n_orgs: int = 5,
               size=(24, 16), seed: int = 0) -> Path:
    """LIVE Release 2: five distortion folders of img1..imgN.bmp, dmos_realigned.mat (dmos_new, orgs),
    refnames_all.mat, refimgs/. Entry k of each folder uses reference k mod n_refs; the first entries
    (n_orgs of them, spread over the folders) are undistorted reference copies (orgs == 1). Also writes
    a decoy dmos.mat with other values (parity needs dmos_realigned.mat)."""
    root, rng = Path(root), np.random.default_rng(seed)
    per_folder = dict(per_folder or LIVE_SMALL_FOLDERS)
    refs = [f"{r}.bmp" for r in LIVE_REFS[:n_refs]]
    for i, r in enumerate(refs):
        write_image(root / "refimgs" / r, size, seed + 1000 + i)
    orgs_per_folder = {f: n_orgs // len(per_folder) + (i < n_orgs % len(per_folder))
                       for i, f in enumerate(per_folder)}
    names, orgs = [], []
    for folder, k in per_folder.items():
        for j in range(k):
            write_image(root / folder / f"img{j + 1}.bmp", size, seed + len(names))
            names.append(refs[j % n_refs])
            orgs.append(1 if j < orgs_per_folder[folder] else 0)
    n = len(names)
    dmos = np.where(np.array(orgs) == 1, 0.0, np.round(rng.uniform(5, 95, n), 3))
    scipy.io.savemat(root / "dmos_realigned.mat", {"dmos_new": dmos.reshape(1, n),
                                                   "orgs": np.array(orgs, float).reshape(1, n),
                                                   "dmos_std": np.full((1, n), 7.0)})
    scipy.io.savemat(root / "refnames_all.mat", {"refnames_all": np.array(names, dtype=object).reshape(1, n)})
    scipy.io.savemat(root / "dmos.mat", {"dmos": (dmos + 13.0).reshape(1, n), "orgs": np.array(orgs, float)})
    return root


def write_live_release(root: Path, seed: int = 0) -> Path:
    """LIVE at the release's exact structure: 982 entries (227/233/174/174/174), 29 references,
    203 reference copies, so 779 images are kept. Images are 8x8 to stay fast."""
    return write_live(root, n_refs=29, per_folder=LIVE_RELEASE_FOLDERS, n_orgs=203, size=(8, 8), seed=seed)


def _csiq_entries(refs, levels, seed):
    rng = np.random.default_rng(seed)
    return [(ref, t, lev, round(float(rng.uniform(0, 1)), 3), round(float(rng.uniform(0, .2)), 3))
            for ref in refs for t in CSIQ_TYPES for lev in range(1, levels + 1)]


def write_csiq(root: Path, layout: str = "community", refs=("1600", "aerial_city", "boston"), levels: int = 2,
               size=(32, 32), seed: int = 0) -> Path:
    """CSIQ. layout "community": csiq_label.txt ("<name> <dmos>") + flat dst_imgs_all/; "official":
    csiq.DMOS.xlsx (sheets all_by_image and all_by_distortion; a title row above the header and an empty
    first column) + dst_imgs/<type>/; "both". Plus src_imgs/<ref>.png. Same labels in both layouts."""
    import openpyxl
    root = Path(root)
    entries = _csiq_entries(refs, levels, seed)
    for i, ref in enumerate(refs):
        write_image(root / "src_imgs" / f"{ref}.png", size, seed + 500 + i)
    for i, (ref, (_, _, folder, tag), lev, _, _) in enumerate(entries):
        name = f"{ref}.{tag}.{lev}.png"
        if layout in ("community", "both"):
            write_image(root / "dst_imgs_all" / name, size, seed + i)
        if layout in ("official", "both"):
            write_image(root / "dst_imgs" / folder / name, size, seed + i)
    if layout in ("community", "both"):
        lines = [f"{ref}.{t[3]}.{lev}.png {dmos}" for ref, t, lev, dmos, _ in entries]
        (root / "csiq_label.txt").write_text("\n".join(lines) + "\n")
    if layout in ("official", "both"):
        wb = openpyxl.Workbook()
        for sheet, order in (("all_by_image", entries), ("all_by_distortion",
                                                         sorted(entries, key=lambda e: e[1][1]))):
            ws = wb.active if sheet == "all_by_image" else wb.create_sheet(sheet)
            ws.title = sheet
            ws.append([None, "CSIQ DMOS (fixture)"])
            ws.append([None, "image", "dst_idx", "dst_type", "dst_lev", "dmos_std", "dmos"])
            for ref, (dst_type, idx, _, _), lev, dmos, std in order:
                ws.append([None, int(ref) if ref.isdigit() else ref, idx, dst_type, lev, std, dmos])
        wb.save(root / "csiq.DMOS.xlsx")
    return root


def write_tid2013(root: Path, refs=(1, 2, 25), n_types: int = 3, n_levels: int = 2, size=(32, 24),
                  seed: int = 0) -> Path:
    """TID2013: mos_with_names.txt ("<MOS> i01_01_1.bmp"), distorted_images/, reference_images/. Case
    quirks as in the release: references I01.BMP / I02.BMP beside i25.bmp; the distorted files of the
    second reference are stored upper-case (I02_01_1.BMP) while the label file names them lower-case."""
    root, rng = Path(root), np.random.default_rng(seed)
    lines = []
    for i, r in enumerate(refs):
        write_image(root / "reference_images" / (f"i{r:02d}.bmp" if r == 25 else f"I{r:02d}.BMP"), size, 700 + i)
        for t in range(1, n_types + 1):
            for lev in range(1, n_levels + 1):
                name = f"i{r:02d}_{t:02d}_{lev}.bmp"
                on_disk = name.upper() if i == 1 else name
                write_image(root / "distorted_images" / on_disk, size, seed + len(lines))
                lines.append(f"{rng.uniform(0, 9):.5f} {name}")
    (root / "mos_with_names.txt").write_text("\n".join(lines) + "\n")
    return root


def write_kadid(root: Path, n_refs: int = 3, n_types: int = 3, n_levels: int = 2, layout: str = "images",
                size=(32, 24), seed: int = 0) -> Path:
    """KADID-10k: dmos.csv (dist_img, ref_img, dmos, var). layout "images": the official single images/
    folder holding references and distorted images; "split": DEIQT's reference_images/ +
    distorted_images/."""
    root, rng = Path(root), np.random.default_rng(seed)
    ref_dir, dist_dir = (("images", "images") if layout == "images"
                         else ("reference_images", "distorted_images"))
    rows = []
    for r in range(1, n_refs + 1):
        write_image(root / ref_dir / f"I{r:02d}.png", size, 900 + r)
        for t in range(1, n_types + 1):
            for lev in range(1, n_levels + 1):
                name = f"I{r:02d}_{t:02d}_{lev:02d}.png"
                write_image(root / dist_dir / name, size, seed + len(rows))
                rows.append(dict(dist_img=name, ref_img=f"I{r:02d}.png", dmos=round(rng.uniform(1, 5), 2),
                                 var=round(rng.uniform(0, 1), 3)))
    pd.DataFrame(rows).to_csv(root / "dmos.csv", index=False)
    return root


# ---- authentic-distortion datasets (split by image) -----------------------------------------------

def write_livec(root: Path, n_images: int = 10, size=(40, 30), seed: int = 0) -> Path:
    """LIVEC: Data/AllImages_release.mat (n_images + 7 x 1 cell), Data/AllMOS_release.mat (1 x n+7);
    the 7 practice images t1..t7.bmp in Images/trainingImages/, the rest in Images/ (.JPG and .bmp)."""
    root, rng = Path(root), np.random.default_rng(seed)
    names = [f"t{i}.bmp" for i in range(1, 8)]
    for i, n in enumerate(names):
        write_image(root / "Images" / "trainingImages" / n, size, 800 + i)
    for i in range(n_images):
        name = f"{100 + i}.JPG" if i % 3 else f"{100 + i}.bmp"
        write_image(root / "Images" / name, size, seed + i)
        names.append(name)
    (root / "Data").mkdir(parents=True, exist_ok=True)
    mos = np.round(rng.uniform(3, 92, len(names)), 4)
    scipy.io.savemat(root / "Data" / "AllImages_release.mat",
                     {"AllImages_release": np.array(names, dtype=object).reshape(-1, 1)})
    scipy.io.savemat(root / "Data" / "AllMOS_release.mat", {"AllMOS_release": mos.reshape(1, -1)})
    return root


def write_koniq(root: Path, n_images: int = 8, folders=("1024x768",), seed: int = 0) -> Path:
    """KonIQ-10k: koniq10k_scores_and_distributions.csv (image_name, c1..c5, c_total, MOS, SD,
    MOS_zscore) and the images in each of `folders` (1024x768 at 64x48, 512x384 at 32x24 here)."""
    root, rng = Path(root), np.random.default_rng(seed)
    names = [f"{826373 + 7919 * i}.jpg" for i in range(n_images)]
    sizes = {"1024x768": (64, 48), "512x384": (32, 24)}
    for folder in folders:
        for i, n in enumerate(names):
            write_image(root / folder / n, sizes.get(folder, (32, 24)), seed + i)
    counts = rng.integers(0, 40, (n_images, 5))
    mos = (counts * np.arange(1, 6)).sum(1) / counts.sum(1).clip(1)
    pd.DataFrame({"image_name": names, **{f"c{k}": counts[:, k - 1] for k in range(1, 6)},
                  "c_total": counts.sum(1), "MOS": np.round(mos, 4), "SD": np.round(rng.uniform(.3, .9, n_images), 4),
                  "MOS_zscore": np.round(rng.uniform(3, 88, n_images), 4)}).to_csv(
        root / "koniq10k_scores_and_distributions.csv", index=False)
    return root


def write_spaq(root: Path, n_images: int = 8, folders=("TestImage",), seed: int = 0) -> Path:
    """SPAQ: "Annotations/MOS and Image attribute scores.xlsx" (Image name, MOS, Brightness,
    Colorfulness, Contrast, Noisiness, Sharpness) and the images (mixed orientations) in each folder of
    `folders` ("TestImage" originals, "512x384" DEIQT's resized copies)."""
    root, rng = Path(root), np.random.default_rng(seed)
    names = [f"{i + 1:05d}.jpg" for i in range(n_images)]
    for folder in folders:
        for i, n in enumerate(names):
            write_image(root / folder / n, (48, 36) if i % 2 else (36, 48), seed + i)
    table = pd.DataFrame({"Image name": names, "MOS": np.round(rng.uniform(2, 98, n_images), 2),
                          **{a: np.round(rng.uniform(0, 100, n_images), 2) for a in
                             ("Brightness", "Colorfulness", "Contrast", "Noisiness", "Sharpness")}})
    (root / SPAQ_LABELS).parent.mkdir(parents=True, exist_ok=True)
    table.to_excel(root / SPAQ_LABELS, index=False)
    return root


def write_livefb(root: Path, n_images: int = 6, patches: str | None = "3patch", size=(100, 80),
                 seed: int = 0) -> Path:
    """LIVE-FB: labels_image.csv (name, mos) with names in source subfolders, images in database/.
    patches "3patch": labels_image_3patch.csv with boxes and name_patch ("patches/<image file name>");
    patch k of image i has side fraction PATCH_FRACTIONS[i % 3][k - 1] of the image (so index order is
    NOT size order); "list": labels_patch.csv (name, mos) only; "both"; None. Patch files are named as
    the release names them, after the whole image file name: database/patches/img_000.jpg_patch_1.jpg."""
    root, rng = Path(root), np.random.default_rng(seed)
    subfolders = ("blur_dataset", "voc_emotic_ava", "EE371R")
    W, H = size
    images, patch3, plist = [], [], []
    for i in range(n_images):
        name = f"{subfolders[i % 3]}/img_{i:03d}.jpg"
        write_image(root / "database" / name, size, seed + i)
        mos = round(float(rng.uniform(20, 90)), 3)
        images.append(dict(name=name, mos=mos))
        rec = dict(name_image=name, name_patch=f"patches/{Path(name).name}", mos_image=mos, left_image=0,
                   top_image=0, right_image=W, bottom_image=H, height_image=H, width_image=W)
        for k, frac in enumerate(PATCH_FRACTIONS[i % 3], 1):
            w, h = round(frac * W), round(frac * H)
            left, top = int(rng.integers(0, W - w + 1)), int(rng.integers(0, H - h + 1))
            rec.update({f"left_patch_{k}": left, f"top_patch_{k}": top, f"right_patch_{k}": left + w,
                        f"bottom_patch_{k}": top + h, f"mos_patch_{k}": round(float(rng.uniform(20, 90)), 3)})
            pname = f"{rec['name_patch']}_patch_{k}.jpg"
            if patches:
                write_image(root / "database" / pname, (w, h), seed + 100 * k + i)
            plist.append(dict(name=pname, mos=rec[f"mos_patch_{k}"]))
        patch3.append(rec)
    pd.DataFrame(images).to_csv(root / "labels_image.csv", index=False)
    if patches in ("3patch", "both"):
        pd.DataFrame(patch3).to_csv(root / "labels_image_3patch.csv", index=False)
    if patches in ("list", "both"):
        pd.DataFrame(plist).to_csv(root / "labels_patch.csv", index=False)
    return root


# ---- label tables, for tests that damage a release the way users do ----------------------------------
# name -> (label file, where the image names are, where the labels are): a column of a .csv / .xlsx,
# a field of a text line, or a key of a .mat file (LIVEC keeps its names in a second .mat file; LIVE
# derives them from the folders, so it has none).
LABEL_SPECS = {
    "LIVE": ("dmos_realigned.mat", None, "dmos_new"),
    "CSIQ": ("csiq_label.txt", 0, 1),
    "TID2013": ("mos_with_names.txt", 1, 0),
    "KADID-10k": ("dmos.csv", "dist_img", "dmos"),
    "LIVEC": ("Data/AllMOS_release.mat", ("Data/AllImages_release.mat", "AllImages_release"), "AllMOS_release"),
    "KonIQ-10k": ("koniq10k_scores_and_distributions.csv", "image_name", "MOS_zscore"),
    "LIVEFB": ("labels_image.csv", "name", "mos"),
    "SPAQ": (SPAQ_LABELS, "Image name", "MOS"),
}


def _read_frame(path: Path) -> pd.DataFrame:
    return pd.read_excel(path) if path.suffix == ".xlsx" else pd.read_csv(path)


def _write_frame(df: pd.DataFrame, path: Path) -> None:
    if path.suffix == ".xlsx":
        df.to_excel(path, index=False)
    else:
        df.to_csv(path, index=False)


def read_label_table(name: str, root: Path) -> pd.DataFrame:
    """Every entry of a fixture's label file, in file order: columns name (None for LIVE) and label."""
    rel, names, labels = LABEL_SPECS[name]
    path = Path(root) / rel
    if path.suffix == ".txt":
        fields = [line.split() for line in path.read_text().splitlines() if line.strip()]
        return pd.DataFrame({"name": [f[names] for f in fields], "label": [float(f[labels]) for f in fields]})
    if path.suffix == ".mat":
        label = scipy.io.loadmat(path)[labels].ravel().astype(float)
        name_list = ([str(x[0]) for x in scipy.io.loadmat(Path(root) / names[0])[names[1]].ravel()]
                     if names else [None] * len(label))
        return pd.DataFrame({"name": name_list, "label": label})
    df = _read_frame(path)
    return pd.DataFrame({"name": df[names].astype(str), "label": df[labels].astype(float)})


def write_label_table(name: str, root: Path, table: pd.DataFrame) -> Path:
    """Write `table` (as read_label_table returns it, edited) back in the native format; returns the
    label file."""
    rel, names, labels = LABEL_SPECS[name]
    path = Path(root) / rel
    if path.suffix == ".txt":
        pairs = zip(table.name, table.label)
        path.write_text("".join(" ".join((n, repr(y)) if names == 0 else (repr(y), n)) + "\n" for n, y in pairs))
    elif path.suffix == ".mat":
        mat = {k: v for k, v in scipy.io.loadmat(path).items() if not k.startswith("__")}
        scipy.io.savemat(path, {**mat, labels: table.label.to_numpy(float).reshape(mat[labels].shape)})
        if names:
            scipy.io.savemat(Path(root) / names[0],
                             {names[1]: np.array(list(table.name), dtype=object).reshape(-1, 1)})
    else:
        df = _read_frame(path)
        df[names], df[labels] = list(table.name), list(table.label)
        _write_frame(df, path)
    return path


def break_label_schema(name: str, root: Path) -> Path:
    """The label file with its label column or .mat key renamed, or (text files) one line's fields
    swapped, as an edited or other-version file would be; returns the label file."""
    rel, _, labels = LABEL_SPECS[name]
    path = Path(root) / rel
    if path.suffix == ".txt":
        lines = path.read_text().splitlines()
        lines[0] = " ".join(reversed(lines[0].split()))
        path.write_text("\n".join(lines) + "\n")
    elif path.suffix == ".mat":
        mat = {k: v for k, v in scipy.io.loadmat(path).items() if not k.startswith("__")}
        mat[labels + "_v2"] = mat.pop(labels)
        scipy.io.savemat(path, mat)
    else:
        _write_frame(_read_frame(path).rename(columns={labels: labels + " (v2)"}), path)
    return path


WRITERS = {"LIVE": write_live, "CSIQ": write_csiq, "TID2013": write_tid2013, "KADID-10k": write_kadid,
           "LIVEC": write_livec, "KonIQ-10k": write_koniq, "LIVEFB": write_livefb, "SPAQ": write_spaq}


def write_all(data_root: Path) -> dict[str, Path]:
    """Every dataset's fixture (defaults) under data_root/DATASET_FOLDERS[name]."""
    return {name: writer(Path(data_root) / DATASET_FOLDERS[name]) for name, writer in WRITERS.items()}


def fresh(name: str, root: Path, **kw) -> Path:
    """A private copy of one dataset's fixture under root/DATASET_FOLDERS[name], for a test that damages it."""
    return WRITERS[name](Path(root) / DATASET_FOLDERS[name], **kw)


def load_fixture(name: str, folder: Path, **kwargs):
    """Parse a default fixture, expecting FIXTURE_COUNTS[name] images."""
    kwargs.setdefault("expected_count", FIXTURE_COUNTS[name])
    return DATASETS[name](folder, **kwargs)


def write_rehearsal_root(base: Path) -> tuple[Path, Path]:
    """(data root, gMAD pool): all eight datasets in their native layouts, the image-split ones with 10
    images (a rehearsal's 80/20 split then keeps 2 for testing), and a folder of unlabelled images."""
    data = Path(base) / "data"
    for name, writer in WRITERS.items():
        kw = {"n_images": 10} if name in ("KonIQ-10k", "SPAQ", "LIVEFB") else {}
        writer(data / DATASET_FOLDERS[name], **kw)
    pool = Path(base) / "pool"
    for i in range(8):
        write_image(pool / f"pool{i}.png", size=(260, 300), seed=100 + i)
    return data, pool
