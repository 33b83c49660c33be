"""ImageStore / CropSampler: decode once, crops are exact slices, seeded test crops, clear errors.

Test images (helpers.coded_manifest) encode each pixel's position (R = row, G = column) and carry
random noise in B, so a crop tells where it was cut from and whether it is an exact slice of the
decoded image.
"""
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import iqa_utils.data.store as store_module
from iqa_utils.data.cache import open_store
from iqa_utils.data.manifest import DatasetError
from iqa_utils.data.store import (IMAGENET_MEAN, IMAGENET_STD, CropSampler, box_iou, spread_boxes,
                                   working_size)

from helpers import CODED_SIZES, coded_image, coded_manifest

@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return coded_manifest(tmp_path_factory.mktemp("coded"))


@pytest.fixture(scope="module")
def store(manifest):
    return open_store(manifest, resize_mode="native", min_side=None, kind="ram", progress=False)


def _to_u8(x):
    """Undo the normalisation: float (..., 3, h, w) -> integer pixel values."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return ((x * std + mean) * 255).round().to(torch.int64)


def _where(crop_u8):
    """(top, left) a crop of a coded image was cut from (unflipped)."""
    return int(crop_u8[0, 0, 0]), int(crop_u8[1, 0, 0])


def test_decodes_each_file_once(manifest, monkeypatch):
    opened = []                           # files decoded (open_store also reads headers: not a decode)
    real_read = store_module.read_rgb8

    def counting_read(path):
        opened.append(str(path))
        return real_read(path)

    monkeypatch.setattr(store_module, "read_rgb8", counting_read)
    st = open_store(manifest, resize_mode="native", min_side=64, kind="ram", progress=False)
    sampler = CropSampler(st)
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        sampler.random_crops(torch.arange(len(st)), 64, flip=True, generator=g)
        sampler.test_crops(torch.arange(len(st)), 4, 64)
    assert sorted(opened) == sorted(manifest.df.path)


def test_store_basics(store, manifest):
    assert len(store) == len(manifest)
    assert store.labels.dtype == torch.float64
    assert torch.equal(store.labels, torch.tensor(manifest.df.label.to_numpy()))
    assert all(im.dtype == torch.uint8 for im in store.images)
    assert [tuple(im.shape) for im in store.images] == [(3, h, w) for h, w in CODED_SIZES]
    assert store.nbytes == sum(3 * h * w for h, w in CODED_SIZES)
    assert store.to("cpu") is store
    # pixels are the file's pixels
    assert np.array_equal(store[1].permute(1, 2, 0).numpy(), coded_image(*CODED_SIZES[1], 1))


def test_resize_modes(tmp_path):
    m = coded_manifest(tmp_path, sizes=[(120, 200), (200, 150)], parity_size=(64, 48), keep_aspect_short_side=100)

    def shapes(**kw):
        st = open_store(m, kind="ram", progress=False, **kw)
        return [tuple(im.shape[1:]) for im in st.images]

    assert shapes(resize_mode="native", min_side=None) == [(120, 200), (200, 150)]
    assert shapes(resize_mode="deiqt_parity", min_side=32) == [(64, 48), (64, 48)]
    assert shapes(resize_mode="keep_aspect", min_side=None) == [(100, 167), (133, 100)]
    assert shapes(resize_mode="keep_aspect", max_side=150, min_side=None) == [(90, 150), (133, 100)]
    # min_side upscales so a crop always fits, and wins over the parity size
    assert shapes(resize_mode="deiqt_parity", min_side=96) == [(128, 96), (128, 96)]
    assert shapes(resize_mode="keep_aspect", min_side=128) == [(128, 214), (171, 128)]
    with pytest.raises(ValueError, match="resize_mode"):
        open_store(m, resize_mode="squash", progress=False)


def test_working_size_short_side_exact():
    for h, w in [(37, 1000), (1000, 37), (223, 224), (97, 129)]:
        H, W = working_size(h, w, min_side=224)
        assert min(H, W) == 224 and (H >= h and W >= w)
    assert working_size(511, 383, min_side=224) == (511, 383)


def test_random_crops_are_exact_slices(store):
    sampler = CropSampler(store)
    g = torch.Generator().manual_seed(1)
    idx = torch.tensor([0, 1, 2, 3, 3, 0, 1, 2] * 8)
    x = sampler.random_crops(idx, 64, flip=False, generator=g)
    assert x.shape == (len(idx), 3, 64, 64) and x.dtype == torch.float32
    tops = set()
    for k, i in enumerate(idx.tolist()):
        u = _to_u8(x[k])
        t, l = _where(u)
        assert torch.equal(u, store[i][:, t:t + 64, l:l + 64].long())
        tops.add(t)
    assert len(tops) > 10  # positions really vary
    # same generator state -> same crops
    a = sampler.random_crops(idx, 64, False, torch.Generator().manual_seed(5))
    b = sampler.random_crops(idx, 64, False, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_flips(store):
    sampler = CropSampler(store)
    idx = torch.zeros(200, dtype=torch.long)
    x = sampler.random_crops(idx, 32, flip=True, generator=torch.Generator().manual_seed(0))
    n_flipped = 0
    for k in range(len(idx)):
        u = _to_u8(x[k])
        cols = u[1, 0]
        if cols[0] > cols[-1]:  # mirrored: columns run backwards
            n_flipped += 1
            t, l = int(u[0, 0, 0]), int(cols[-1])
            assert torch.equal(u, store[0][:, t:t + 32, l:l + 32].flip(-1).long())
        else:
            t, l = _where(u)
            assert torch.equal(u, store[0][:, t:t + 32, l:l + 32].long())
    assert 60 < n_flipped < 140


def test_crop_larger_than_image_raises(store):
    with pytest.raises(ValueError, match="min_side"):
        CropSampler(store).random_crops(torch.tensor([2]), 101, False, torch.Generator())


def test_seeded_test_crops_independent_of_batch(store):
    sampler = CropSampler(store)
    n = 5
    full = sampler.test_crops(torch.tensor([0, 1, 2, 3]), n, 48, seed=3)
    assert full.shape == (4 * n, 3, 48, 48)
    alone = sampler.test_crops(torch.tensor([2]), n, 48, seed=3)
    reordered = sampler.test_crops(torch.tensor([3, 2, 2]), n, 48, seed=3)
    assert torch.equal(full[2 * n:3 * n], alone)
    assert torch.equal(reordered[n:2 * n], alone) and torch.equal(reordered[2 * n:], alone)
    assert torch.equal(sampler.test_crops(torch.tensor([0, 1, 2, 3]), n, 48, seed=3), full)
    assert not torch.equal(sampler.test_crops(torch.tensor([2]), n, 48, seed=4), alone)
    # the n crops of one image differ from each other and are exact slices
    pos = {_where(_to_u8(c)) for c in alone}
    assert len(pos) == n
    for c in alone:
        u = _to_u8(c)
        t, l = _where(u)
        assert torch.equal(u, store[2][:, t:t + 48, l:l + 48].long())


@pytest.mark.parametrize("n", [4, 10, 9])
def test_grid_covers_corners(store, n):
    sampler = CropSampler(store)
    x = sampler.test_crops(torch.tensor([0, 1]), n, 48, mode="grid")
    for j, i in enumerate([0, 1]):
        H, W = CODED_SIZES[i]
        pos = {_where(_to_u8(c)) for c in x[j * n:(j + 1) * n]}
        assert len(pos) == n
        assert {(0, 0), (0, W - 48), (H - 48, 0), (H - 48, W - 48)} <= pos


def test_random_test_crops_mode(store):
    x = CropSampler(store).test_crops(torch.tensor([0, 1]), 3, 48, mode="random")
    assert x.shape == (6, 3, 48, 48)
    with pytest.raises(ValueError):
        CropSampler(store).test_crops(torch.tensor([0]), 3, 48, mode="centre")


def test_resized_crops(store):
    sampler = CropSampler(store)
    g = torch.Generator().manual_seed(0)
    # side = 0.5 * 100 = 50 = size: an exact slice
    x = sampler.resized_crops(torch.tensor([2, 2, 2]), 0.5, 50, flip=False, generator=g)
    for c in x:
        u = _to_u8(c)
        t, l = _where(u)
        assert torch.equal(u, store[2][:, t:t + 50, l:l + 50].long())
    # side = 0.4 * 120 = 48 of image 0, resized to 24: rows span ~48 pixels
    x = sampler.resized_crops(torch.tensor([0, 1]), 0.4, 24, flip=True, generator=g)
    assert x.shape == (2, 3, 24, 24)
    for c, short in zip(x, [120, 150]):
        rows = _to_u8(c)[0, :, 0].float()
        assert abs((rows[-1] - rows[0]).item() - 0.4 * short * 23 / 24) < 3


def test_global_views(store):
    x = CropSampler(store).global_views(torch.tensor([0, 1, 3, 0]), 32)
    assert x.shape == (4, 3, 32, 32)
    ref = F.interpolate(store[1][None].float(), size=(32, 32), mode="bilinear", antialias=True,
                        align_corners=False)
    assert torch.allclose(_to_u8(x[1]).float(), ref[0].round(), atol=1)
    assert torch.equal(x[0], x[3])


def test_crops_with_boxes_native(store):
    sampler = CropSampler(store)
    idx = torch.tensor([0, 1, 3])
    crops, boxes = sampler.crops_with_boxes(idx, 4, 40, torch.Generator().manual_seed(2), mode="native")
    assert crops.shape == (3, 4, 3, 40, 40) and boxes.shape == (3, 4, 4)
    for a, i in enumerate(idx.tolist()):
        H, W = CODED_SIZES[i]
        for b in range(4):
            t, l, h, w = boxes[a, b].tolist()
            t, l = round(t * H), round(l * W)
            assert round(h * H) == 40 and round(w * W) == 40
            assert torch.equal(_to_u8(crops[a, b]), store[i][:, t:t + 40, l:l + 40].long())


def test_crops_with_boxes_multiscale(store):
    sampler = CropSampler(store)
    crops, boxes = sampler.crops_with_boxes(torch.tensor([0, 1]), 6, 32, torch.Generator().manual_seed(0),
                                            mode="multiscale")
    assert crops.shape == (2, 6, 3, 32, 32)
    assert (boxes >= 0).all() and (boxes[..., 0] + boxes[..., 2] <= 1 + 1e-6).all()
    for a, i in enumerate([0, 1]):
        H, W = CODED_SIZES[i]
        for b in range(6):
            t, l, h, w = boxes[a, b].tolist()
            t, l, s = round(t * H), round(l * W), round(h * H)
            assert 0.3 * min(H, W) - 1 <= s <= min(H, W)
            ref = F.interpolate(store[i][None, :, t:t + s, l:l + s].float(), size=(32, 32), mode="bilinear",
                                antialias=s > 32, align_corners=False)[0]
            assert (_to_u8(crops[a, b]).float() - ref).abs().max() <= 1


def test_unreadable_and_missing_files_raise(tmp_path):
    m = coded_manifest(tmp_path, sizes=[(64, 64), (64, 64)])
    bad = Path(m.df.path[1])
    bad.write_bytes(b"not an image at all")
    with pytest.raises(DatasetError, match="img1.png"):
        open_store(m, resize_mode="native", kind="ram", progress=False)
    bad.unlink()
    with pytest.raises(DatasetError, match="missing.*img1.png"):
        open_store(m, resize_mode="native", kind="ram", progress=False)
    # a truncated PNG is not silently padded
    good = Path(m.df.path[0])
    good.write_bytes(good.read_bytes()[:200])
    with pytest.raises(DatasetError, match="img0.png"):
        open_store(m.subset([0]), resize_mode="native", kind="ram", progress=False)


def test_nested_crops_small_is_a_resized_window_of_large(store):
    sampler = CropSampler(store)
    idx = torch.zeros(40, dtype=torch.long)                      # image 0: 120 x 200, short side 120
    small, large, boxes = sampler.nested_crops(idx, 0.25, 0.5, 60, flip=True,
                                               generator=torch.Generator().manual_seed(0))
    assert small.shape == large.shape == (40, 3, 60, 60) and boxes.shape == (40, 2, 4)
    n_flipped = 0
    for k in range(len(idx)):
        (st, sl, sh, _), (lt, ll, lh, _) = [[round(v * n) for v, n in zip(b.tolist(), (120, 200, 120, 200))]
                                            for b in boxes[k]]
        assert (sh, lh) == (30, 60) and lt <= st and ll <= sl and st + 30 <= lt + 60 and sl + 30 <= ll + 60
        L_, S_ = _to_u8(large[k]), _to_u8(small[k])
        flipped = bool(L_[1, 0, 0] > L_[1, 0, -1])               # coded columns run backwards
        n_flipped += flipped
        ref = store[0][:, lt:lt + 60, ll:ll + 60].long()
        assert torch.equal(L_, ref.flip(-1) if flipped else ref)  # the large crop: an exact 60 px slice
        a, b = st - lt, (60 - (sl - ll) - 30) if flipped else sl - ll   # the window inside the large crop
        want = F.interpolate(L_[None, :, a:a + 30, b:b + 30].float(), size=(60, 60), mode="bilinear",
                             align_corners=False)[0]
        assert (S_.float() - want).abs().max() <= 1
    assert 5 < n_flipped < 35


def _window(view):
    """(top, left, rows spanned, columns spanned) of a coded view, in store pixels (R = row, G = column)."""
    u8 = _to_u8(view)
    return (int(u8[0].min()), int(u8[1].min()), int(u8[0].max() - u8[0].min()), int(u8[1].max() - u8[1].min()))


@pytest.mark.parametrize("mode", ["seeded_random", "grid"])
def test_nested_test_crops_follow_the_training_geometry(store, mode):
    """CSFIQA's crop-mode test views: a 40 % crop and a 20 % one inside it, both resized, seeded per image."""
    sampler = CropSampler(store)
    x = sampler.nested_test_crops(torch.tensor([0, 2]), 4, 0.2, 0.4, 32, mode=mode, seed=3)
    assert x.shape == (8, 2, 3, 32, 32)
    for k, short in enumerate([120] * 4 + [100] * 4):             # image 0: 120 x 200, image 2: 100 x 100
        (st, sl, sh, sw), (lt, ll, lh, lw) = _window(x[k, 0]), _window(x[k, 1])
        assert abs(lh - (round(0.4 * short) - 1)) <= 1 and abs(sh - (round(0.2 * short) - 1)) <= 1
        assert lt <= st and ll <= sl and st + sh <= lt + lh + 1 and sl + sw <= ll + lw + 1
    again = sampler.nested_test_crops(torch.tensor([2]), 4, 0.2, 0.4, 32, mode=mode, seed=3)
    assert torch.equal(again, x[4:])                               # an image's views whatever its batch
    if mode == "seeded_random":
        assert not torch.equal(sampler.nested_test_crops(torch.tensor([2]), 4, 0.2, 0.4, 32, seed=4), again)


def test_crop_mode_csfiqa_is_tested_on_the_training_geometry(store):
    from iqa_utils.config.check import make_config
    from iqa_utils.models import create_model
    from iqa_utils.models.base import TestCrops
    from iqa_utils.training.evaluation import predict_rows, test_views   # here: pytest would collect test_views
    sampler = CropSampler(store)
    crop = create_model(make_config("smoke", "csfiqa", {"model.pretrained": False, "csfiqa.scale_mode": "crop",
                                                         "csfiqa.nsm": "off", "csfiqa.input_size": 48}))
    views = test_views(crop, sampler, torch.tensor([0, 1]), crops=TestCrops(2, 48))
    assert views.shape == (4, 2, 3, 48, 48)
    assert torch.equal(views, sampler.nested_test_crops(torch.tensor([0, 1]), 2, 0.2, 0.4, 48))
    assert len(predict_rows(crop, sampler, [0, 1], crops=TestCrops(2, 48))) == 2
    branch = create_model(make_config("smoke", "csfiqa", {"model.pretrained": False, "csfiqa.input_size": 48}))
    assert torch.equal(test_views(branch, sampler, torch.tensor([0]), crops=TestCrops(2, 48)),
                       sampler.test_crops([0], 2, 48))


def test_crops_with_boxes_iou_limit_and_flips(store):
    sampler = CropSampler(store)
    idx = torch.tensor([0, 1, 3] * 4)          # room for 4 crops of 48 px at IoU <= 0.3 (10 draws each)
    crops, boxes = sampler.crops_with_boxes(idx, 4, 48, torch.Generator().manual_seed(3), flip=True,
                                            max_iou=0.3)
    n_flipped = 0
    for a, i in enumerate(idx.tolist()):
        H, W = CODED_SIZES[i]
        px = [[round(v * n) for v, n in zip(b.tolist(), (H, W, H, W))] for b in boxes[a]]
        ious = [box_iou(px[p], px[q]) for p in range(4) for q in range(p + 1, 4)]
        assert max(ious) <= 0.3                                   # every pair, so whichever is the positive
        for b, (t, l, _, _) in enumerate(px):
            u, ref = _to_u8(crops[a, b]), store[i][:, t:t + 48, l:l + 48].long()
            flipped = bool(u[1, 0, 0] > u[1, 0, -1])
            n_flipped += flipped
            assert torch.equal(u, ref.flip(-1) if flipped else ref)   # mirror of the box's pixels
    assert 10 < n_flipped < 38
    # max_iou = 1 and no flips: the earlier draw, bit for bit
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    a = sampler.crops_with_boxes(idx, 4, 48, g1)
    b = sampler.crops_with_boxes(idx, 4, 48, g2, flip=False, max_iou=1.0)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_spread_boxes_keeps_least_overlapping_when_none_fits():
    same = (0, 0, 10, 10)
    # one image, crop 0: its first draw; crop 1: four draws overlapping it by IoU 1, 0.67, 0.43, 0.54
    boxes = [same, same, same, same, same, (0, 2, 10, 10), (0, 4, 10, 10), (0, 3, 10, 10)]
    assert box_iou(same, (0, 4, 10, 10)) == pytest.approx(60 / 140)
    assert spread_boxes(boxes, n=1, k=2, tries=4, max_iou=0.2) == [0, 6]    # none fits: the least overlap
    assert spread_boxes(boxes, n=1, k=2, tries=4, max_iou=0.6) == [0, 6]    # the first that fits
    assert spread_boxes(boxes, n=1, k=2, tries=4, max_iou=0.55) == [0, 6]
    assert spread_boxes(boxes, n=1, k=2, tries=4, max_iou=0.7) == [0, 5]
    assert spread_boxes(boxes, n=1, k=2, tries=4, max_iou=1.0) == [0, 4]


def test_crops_at_centres(store):
    sampler = CropSampler(store)
    x = sampler.crops_at(torch.tensor([0, 0, 1]), torch.tensor([[0.5, 0.5], [0.0, 1.0], [0.3, 0.4]]), 40)
    assert [_where(_to_u8(c)) for c in x] == [(40, 80), (0, 160), (40, 40)]   # centred, clamped into the image
