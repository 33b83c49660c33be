"""Store cache: memory-mapped pixels equal decoded ones; reused, rebuilt, checked; the automatic choice.

Images are the coded ones of helpers.coded_manifest (R = row, G = column, B = noise), a few KB each.
"""
import os
import threading
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import PIL.Image
import pytest
import torch

import iqa_utils.data.cache as cache
from iqa_utils.data.cache import (CacheError, CacheFile, MappedImageStore, FreeMemory, StoreCache,
                                  default_cache_dir, open_store, ram_available, read_index)
from iqa_utils.data.manifest import DatasetError, Manifest
from iqa_utils.data.store import CropSampler, resize_settings
from iqa_utils.reporting.notebook import Session, setup
from iqa_utils.system import KitError

from helpers import CODED_SIZES, coded_image, coded_manifest

QUIET = {"resize_mode": "native", "min_side": None, "progress": False}


def _images(tmp_path: Path, **kw):
    (tmp_path / "img").mkdir()
    return coded_manifest(tmp_path / "img", **kw)


@pytest.fixture
def data(tmp_path):
    """A fresh manifest (tests change its files) and an empty cache folder."""
    return _images(tmp_path), tmp_path / "cache"


def _disk(manifest, cache_dir, **kw):
    return open_store(manifest, cache_dir=cache_dir, **{**QUIET, "kind": "disk", **kw})


def _ram(manifest, **kw):
    """Decoded into RAM (a cache folder that holds no cache: nothing read from one, nothing written)."""
    return open_store(manifest, cache_dir=Path(manifest.root) / "no-cache", **{**QUIET, "kind": "ram", **kw})


def _same_pixels(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a.images, b.images))


def _files(folder: Path) -> list[str]:
    """Every entry of the cache folder, hidden temporary files included."""
    return sorted(os.listdir(folder)) if folder.exists() else []


@pytest.fixture
def decodes(monkeypatch):
    """The names of the files the cache module decodes (a counter: no timing)."""
    calls, real = [], cache.decode_image

    def counting(path, size_fn=None):
        calls.append(Path(path).name)
        return real(path, size_fn)

    monkeypatch.setattr(cache, "decode_image", counting)
    return calls


def test_round_trip_equals_ram_store(tmp_path):
    m = _images(tmp_path, keep_aspect_short_side=100)
    kw = {"resize_mode": "keep_aspect", "max_side": 150, "min_side": None}
    disk = _disk(m, tmp_path / "cache", **kw)
    ram = _ram(m, **kw)
    assert isinstance(disk, MappedImageStore) and disk.kind == "disk" and ram.kind == "ram"
    assert _same_pixels(disk, ram) and all(im.dtype == torch.uint8 for im in disk.images)
    assert torch.equal(disk.sizes, ram.sizes) and disk.nbytes == ram.nbytes
    assert torch.equal(disk.labels, ram.labels) and disk.paths == ram.paths
    assert disk.device == torch.device("cpu") and disk.to("cpu") is disk and disk.kind == "disk"
    assert disk[-1].shape == ram[-1].shape


def test_crops_equal_ram_crops(data):
    m, cache_dir = data
    disk, ram = (CropSampler(s) for s in (_disk(m, cache_dir), _ram(m)))
    idx = torch.tensor([0, 1, 2, 3, 3, 1])

    def crops(s):
        g = torch.Generator().manual_seed(7)
        return [s.random_crops(idx, 64, True, g), s.resized_crops(idx, 0.6, 32, True, g),
                s.crops_with_boxes(idx, 3, 40, g, mode="multiscale")[0], s.test_crops(idx, 4, 48),
                s.test_crops(idx, 4, 48, mode="grid"), s.global_views(idx, 32)]

    assert all(torch.equal(a, b) for a, b in zip(crops(disk), crops(ram)))


def test_reused_without_decoding(data, decodes):
    m, cache_dir = data
    first = _disk(m, cache_dir)
    assert sorted(decodes) == sorted(Path(p).name for p in m.df.path)
    built = first.path.stat().st_mtime_ns
    again = _disk(m, cache_dir)
    in_ram = open_store(m, cache_dir=cache_dir, kind="ram", **QUIET)
    assert len(decodes) == len(m)  # no decoding after the first open
    assert again.path == first.path and first.path.stat().st_mtime_ns == built
    assert "reused" in again.reason and "read from cache" in in_ram.reason and in_ram.kind == "ram"
    assert _same_pixels(again, first) and _same_pixels(in_ram, first)


def test_ram_and_cache_file_pixels_come_from_one_decode_loop(data, monkeypatch):
    m, cache_dir = data
    loops, real = [], cache.decode_images

    def counting(paths, *a, **k):
        loops.append(len(paths))
        return real(paths, *a, **k)

    monkeypatch.setattr(cache, "decode_images", counting)
    ram = open_store(m, cache_dir=cache_dir, kind="ram", **QUIET)       # no cache file yet: decoded into RAM
    disk = open_store(m, cache_dir=cache_dir, kind="disk", **QUIET)     # the cache file built
    assert loops == [len(m), len(m)] and "decoded" in ram.reason and "built" in disk.reason
    assert _same_pixels(ram, disk)


def test_a_store_cache_reuses_its_stores_and_the_process_keeps_none(data, decodes, capsys):
    m, cache_dir = data
    stores, kw = StoreCache(), {"cache_dir": cache_dir, **QUIET, "kind": "ram"}
    first = open_store(m, stores=stores, **kw)
    again = open_store(m, stores=stores, **{**kw, "progress": True})
    assert again is first and len(decodes) == len(m) and stores.opened == 1
    assert "reused" in capsys.readouterr().out
    fresh = open_store(m, **kw)                     # no cache object: opened (and decoded) anew
    assert fresh is not first and len(decodes) == 2 * len(m) and _same_pixels(fresh, first)
    assert open_store(m, stores=stores, **{**kw, "min_side": 64}) is not first        # other options
    open_store(m.subset([0, 1]), stores=stores, **kw)                                  # keep=2: first goes
    assert len(stores) == 2 and stores.opened == 3 and open_store(m, stores=stores, **kw) is not first


def test_a_notebook_session_hands_its_cells_one_store_cache(tmp_path):
    session = Session("01_train_csfiqa", "smoke", str(tmp_path), None, "cpu", None)
    stores = session.stores                          # what every session.run passes to run_all (test_session)
    assert isinstance(stores, StoreCache) and session.stores is stores
    assert Session("02_train_lmliqa", "smoke", str(tmp_path), None, "cpu", None).stores is not stores


def test_files_outside_a_dataset_open_as_a_dataset_does(data):
    m, _ = data
    files = Manifest.of_files(list(m.df.path), "loose")
    assert files.root == Path(m.root) and (files.df.label == 0).all() and len(files) == len(m)
    assert _same_pixels(_ram(files), _ram(m))


def test_rebuilt_when_a_source_changes(data, decodes, capsys):
    m, cache_dir = data
    before = _disk(m, cache_dir)
    changed = Path(m.df.path[2])
    PIL.Image.fromarray(coded_image(*CODED_SIZES[2], seed=99)).save(changed)
    os.utime(changed, ns=(time.time_ns(), changed.stat().st_mtime_ns + 10**9))
    after = open_store(m, cache_dir=cache_dir, kind="disk", resize_mode="native", min_side=None)
    assert len(decodes) == 2 * len(m) and "built" in after.reason
    assert "out of date: 1 source images changed" in capsys.readouterr().out
    assert after.path == before.path and _files(cache_dir) == [after.path.name]  # replaced in place
    assert np.array_equal(after[2].permute(1, 2, 0).numpy(), coded_image(*CODED_SIZES[2], seed=99))
    assert _same_pixels(after, _ram(m))


def test_rebuilt_when_the_decoder_changes(data, decodes, monkeypatch):
    m, cache_dir = data
    _disk(m, cache_dir)
    monkeypatch.setattr(cache, "decoder_tag", lambda: "pillow 0, code changed")
    assert "built" in _disk(m, cache_dir).reason and len(decodes) == 2 * len(m)


def _truncate(p: Path):
    p.write_bytes(p.read_bytes()[:-1000])


def _garble_index(p: Path):
    raw = bytearray(p.read_bytes())
    raw[-100:-60] = b"#" * 40
    p.write_bytes(bytes(raw))


def _append(p: Path):
    with open(p, "ab") as f:
        f.write(b"\0" * 10)


def _flip_first_pixel(p: Path):
    raw = bytearray(p.read_bytes())
    raw[0] ^= 0xFF
    p.write_bytes(bytes(raw))


@pytest.mark.parametrize("damage", [_truncate, _garble_index, _append, _flip_first_pixel])
def test_corrupt_cache_is_named_and_rebuilt(data, damage):
    m, cache_dir = data
    path = _disk(m, cache_dir).path
    damage(path)
    with pytest.raises(CacheError, match=f"{path.name}: corrupt store cache"):
        read_index(path)
    with pytest.warns(UserWarning, match=f"{path.name}: corrupt store cache .*; rebuilding it"):
        store = _disk(m, cache_dir)
    assert "built" in store.reason and _same_pixels(store, _ram(m))
    read_index(path)  # whole again


def test_full_verification(data):
    m, cache_dir = data
    path = _disk(m, cache_dir).path
    raw = bytearray(path.read_bytes())
    raw[3 * CODED_SIZES[0][0] * CODED_SIZES[0][1] + 5] ^= 0xFF  # a pixel of image 1: not the spot-checked first or last
    path.write_bytes(bytes(raw))
    read_index(path)
    with pytest.raises(CacheError, match=f"{path.name}: corrupt .*checksum mismatch in image 1 \\(img1.png\\)"):
        read_index(path, verify=True)


def test_killed_build_leaves_nothing(data, monkeypatch):
    m, cache_dir = data
    real, calls = cache.decode_image, []

    def dies_on_third(path, size_fn=None):
        calls.append(path)
        if len(calls) == 3:
            raise RuntimeError("killed mid-build")
        return real(path, size_fn)

    monkeypatch.setattr(cache, "decode_image", dies_on_third)
    with pytest.raises(RuntimeError, match="killed"):
        _disk(m, cache_dir)
    assert _files(cache_dir) == []
    monkeypatch.setattr(cache, "decode_image", real)
    assert _same_pixels(_disk(m, cache_dir), _ram(m))


def test_temp_files_of_killed_builds_are_swept(data):
    m, cache_dir = data
    path = CacheFile.locate(m, "native", resize_settings(m, "native", None, None), cache_dir).path
    cache_dir.mkdir()
    old, live = cache_dir / f".{path.name}.dead.tmp", cache_dir / f".{path.name}.live.tmp"
    old.write_bytes(b"partial")
    live.write_bytes(b"partial")
    os.utime(old, (time.time() - 2 * cache.STALE_TEMP_S,) * 2)
    _disk(m, cache_dir)
    assert not old.exists() and live.exists()


def test_two_builds_at_once(data, monkeypatch):
    m, cache_dir = data
    ram = _ram(m)                     # decoded before the two builds' decoder is put in place
    real, meet = cache.decode_image, threading.Barrier(2, timeout=30)

    def decode_together(path, size_fn=None):
        if Path(path).name == "img0.png":
            meet.wait()  # both builds are under way before either finishes
        return real(path, size_fn)

    monkeypatch.setattr(cache, "decode_image", decode_together)
    stores, errors = [], []

    def build():
        try:
            stores.append(_disk(m, cache_dir))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and all("built" in s.reason for s in stores)
    assert _files(cache_dir) == [stores[0].path.name]  # one whole cache, no temporary files
    read_index(stores[0].path)
    assert all(_same_pixels(s, ram) for s in stores) and _same_pixels(_disk(m, cache_dir), ram)


def test_auto_choice(data, capsys):
    m, cache_dir = data
    n = sum(3 * h * w for h, w in CODED_SIZES)
    small = open_store(m, cache_dir=cache_dir, free=FreeMemory(ram_available=4 * n - 1),
                       resize_mode="native", min_side=None)
    out = [line for line in capsys.readouterr().out.splitlines() if line.startswith("store coded")]
    assert small.kind == "disk" and "of RAM available" in small.reason
    assert out == [f"store coded: disk ({small.reason})"]
    big = open_store(m, cache_dir=cache_dir, free=FreeMemory(ram_available=4 * n + 4), **QUIET)
    assert big.kind == "ram" and _same_pixels(big, small)
    gpu = torch.device("cuda")
    assert FreeMemory(ram_available=10**12, gpu_free=3 * n + 3).choose(n, gpu)[0] == "gpu"
    assert FreeMemory(ram_available=10**12, gpu_free=3 * n).choose(n, gpu)[0] == "ram"
    kind, why = FreeMemory(ram_available=0, gpu_free=0).choose(n, gpu)
    assert kind == "disk" and "free on cuda" in why and "RAM" in why
    assert FreeMemory(ram_available=10**12, gpu_free=10**12).choose(n, "cpu")[0] == "ram"


def test_bad_arguments_and_files(data, monkeypatch):
    m, cache_dir = data
    with pytest.raises(ValueError, match="kind"):
        open_store(m, kind="ssd", cache_dir=cache_dir, **QUIET)
    with pytest.raises(ValueError, match="CUDA"):
        open_store(m, kind="gpu", device="cpu", cache_dir=cache_dir, **QUIET)
    monkeypatch.setattr(cache.shutil, "disk_usage", lambda _: SimpleNamespace(free=10))
    with pytest.raises(KitError, match="needs .* only .* free.*IQA_KIT_CACHE"):
        _disk(m, cache_dir)
    Path(m.df.path[1]).unlink()
    with pytest.raises(DatasetError, match="missing.*img1.png"):
        _disk(m, cache_dir)


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("IQA_KIT_CACHE", str(tmp_path / "drive"))
    assert default_cache_dir() == tmp_path / "drive" / "stores"      # the kit's cache folder, its stores part
    monkeypatch.delenv("IQA_KIT_CACHE")
    assert default_cache_dir() == Path("~/.cache/iqa-kit/stores").expanduser()


@pytest.mark.parametrize("release_bytes", [1000, None])  # unmap after nearly every image, or never
def test_released_pages_read_back(data, release_bytes):
    m, cache_dir = data
    store, ram = _disk(m, cache_dir, release_bytes=release_bytes), _ram(m)

    def crops(s):
        g = torch.Generator().manual_seed(0)
        return [CropSampler(s).random_crops(torch.arange(4), 64, True, g) for _ in range(3)]

    assert all(torch.equal(x, y) for x, y in zip(crops(store), crops(ram)))
    assert (store.images.releases > 5) if release_bytes else store.images.releases == 0


def test_no_warning_from_the_read_only_map(data):
    m, cache_dir = data
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        store = _disk(m, cache_dir)
        CropSampler(store).random_crops(torch.arange(4), 64, True, torch.Generator().manual_seed(0))


def test_ram_available(tmp_path):
    assert ram_available() > 0
    (tmp_path / "memory.max").write_text("1000\n")
    (tmp_path / "memory.current").write_text("600\n")
    (tmp_path / "memory.stat").write_text("anon 500\ninactive_file 100\n")
    assert ram_available(cgroup=tmp_path) == 500  # the container's limit, not the host's meminfo


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_store(data):
    m, cache_dir = data
    ram = _ram(m)
    decoded = open_store(m, kind="gpu", device="cuda", cache_dir=cache_dir, **QUIET)
    _disk(m, cache_dir)
    copied = open_store(m, kind="gpu", device="cuda", cache_dir=cache_dir, **QUIET)
    assert decoded.kind == copied.kind == "gpu" and "copied from cache" in copied.reason
    assert _same_pixels(decoded.to("cpu"), ram) and _same_pixels(copied.to("cpu"), ram)


def test_a_disk_store_maps_its_local_copy_made_once(data, decodes, tmp_path):
    """Colab: the cache file stays on Drive (cache_dir), each session maps a copy on local disk."""
    m, cache_dir = data
    local = tmp_path / "local"
    first = open_store(m, cache_dir=cache_dir, kind="disk", local_dir=local, **QUIET)
    original = next(cache_dir.glob("*.u8"))
    assert first.path == local / original.name and "local copy" in first.reason
    assert original.read_bytes() == first.path.read_bytes()
    made = first.path.stat().st_ino
    again = open_store(m, cache_dir=cache_dir, kind="disk", local_dir=local, **QUIET)
    assert again.path.stat().st_ino == made and _same_pixels(again, _ram(m))    # reused, not copied again
    assert cache.local_copy(original, local) == again.path and again.path.stat().st_ino == made
    Path(m.df.path[0]).write_bytes(Path(m.df.path[1]).read_bytes())          # a source changes: rebuilt
    rebuilt = open_store(m, cache_dir=cache_dir, kind="disk", local_dir=local, **QUIET)
    assert rebuilt.path.stat().st_ino != made and torch.equal(rebuilt[0], rebuilt[1])
    assert sorted(os.listdir(local)) == [original.name]                        # no temporary file left


def test_a_drive_session_keeps_the_caches_on_drive_and_stores_local(tmp_path, monkeypatch):
    monkeypatch.setenv(cache.LOCAL_STORES_ENV, "")       # recorded, so the teardown removes setup's value
    monkeypatch.delenv(cache.LOCAL_STORES_ENV)
    monkeypatch.setenv("IQA_KIT_CACHE", str(tmp_path / "mine"))               # a user's choice is kept
    setup("00_data_prep", drive_dir=str(tmp_path / "drive"))
    assert os.environ["IQA_KIT_CACHE"] == str(tmp_path / "mine")
    assert os.environ[cache.LOCAL_STORES_ENV].endswith("iqa-kit-stores")
    monkeypatch.delenv("IQA_KIT_CACHE")
    setup("00_data_prep", drive_dir=str(tmp_path / "drive"))
    assert os.environ["IQA_KIT_CACHE"] == str(tmp_path / "drive" / "cache")


def test_free_memory_measures_ram_and_no_gpu_on_a_cpu():
    free = FreeMemory.measure("cpu")
    assert free.ram_available > 0 and free.gpu_free == 0
