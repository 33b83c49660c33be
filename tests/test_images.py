"""Images as they are (iqa_utils.data.images): high bit depth scaled, never clipped; palette and alpha
converted."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from iqa_utils.data.images import image_problem, read_rgb8
from iqa_utils.data.manifest import DatasetError
from iqa_utils.data.store import decode_image

RNG = np.random.default_rng(0)
GREY16 = RNG.integers(0, 65536, (12, 10)).astype(np.uint16)
RGB16 = RNG.integers(0, 65536, (12, 10, 3)).astype(np.uint16)


def write_png16(path: Path, a: np.ndarray) -> Path:
    """A real 16-bit PNG (grey: colour type 0, RGB: 2), written byte by byte so no library rounds it."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    h, w = a.shape[:2]
    rows = b"".join(b"\x00" + a[y].astype(">u2").tobytes() for y in range(h))    # filter 0 per row
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2 if a.ndim == 3 else 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))
    return path


def write_tiff16(path: Path, a: np.ndarray) -> Path:
    tifffile.imwrite(path, a, photometric="rgb" if a.ndim == 3 else "minisblack")
    return path


WRITE16 = {"png": write_png16, "tif": write_tiff16}


def hwc(path) -> np.ndarray:
    return decode_image(path).permute(1, 2, 0).numpy()


def expected8(a: np.ndarray) -> np.ndarray:
    grey = np.rint(a / 257.0).astype(np.uint8)
    return grey if grey.ndim == 3 else np.repeat(grey[..., None], 3, axis=2)


@pytest.mark.parametrize("fmt", WRITE16)
@pytest.mark.parametrize("pixels", [GREY16, RGB16], ids=["grey", "rgb"])
def test_16bit_is_scaled_not_clipped(pixels, fmt, tmp_path):
    path = WRITE16[fmt](tmp_path / f"x.{fmt}", pixels)
    out = hwc(path)
    assert out.dtype == np.uint8 and (out < 255).mean() > 0.9        # PIL's convert("RGB") gives 255 on I;16
    if pixels.ndim == 2:
        assert Image.open(path).mode.startswith("I;16") and (out == expected8(pixels)).all()
    else:   # Pillow decodes 16-bit RGB itself, keeping the high byte (v >> 8)
        assert np.abs(out.astype(int) - expected8(pixels)).max() <= 1


def test_32bit_integers_within_16_bits_are_scaled_beyond_are_refused(tmp_path):
    tifffile.imwrite(tmp_path / "i32.tif", GREY16.astype(np.int32))
    assert Image.open(tmp_path / "i32.tif").mode == "I" and (hwc(tmp_path / "i32.tif") == expected8(GREY16)).all()
    tifffile.imwrite(tmp_path / "big.tif", GREY16.astype(np.int32) * 100)
    tifffile.imwrite(tmp_path / "f32.tif", GREY16.astype(np.float32) / 65535)
    for name, reason in (("big.tif", "beyond 16 bit"), ("f32.tif", "floating-point")):
        with pytest.raises(DatasetError, match=rf"cannot read image {tmp_path / name}: ValueError: .*{reason}"):
            decode_image(tmp_path / name)
        assert reason in image_problem(tmp_path / name)


def _alpha_images(tmp_path: Path) -> dict[str, Path]:
    """RGBA, LA and a palette image, each with a fully transparent, a half transparent and an opaque pixel."""
    rgba = np.array([[[0, 0, 0, 0], [255, 0, 0, 128], [0, 0, 255, 255]]], dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(rgba[..., [0, 3]], "LA").save(tmp_path / "la.png")
    pal = Image.fromarray(np.array([[0, 1, 2]], dtype=np.uint8), "P")
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255])
    pal.save(tmp_path / "p.png", transparency=0)
    return {k: tmp_path / f"{k}.png" for k in ("rgba", "la", "p")}


def test_alpha_is_composited_on_white_and_palette_expanded(tmp_path):
    paths = _alpha_images(tmp_path)
    rgba, la, pal = (read_rgb8(paths[k])[0] for k in ("rgba", "la", "p"))
    assert (rgba[0] == 255).all() and (la[0] == 255).all() and (pal[0] == 255).all()     # transparent -> white
    assert np.abs(rgba[1].astype(int) - [255, 127, 127]).max() <= 1                       # half red on white
    assert rgba[2].tolist() == [0, 0, 255] and pal[1].tolist() == [255, 0, 0] and pal[2].tolist() == [0, 0, 255]
    assert (hwc(paths["rgba"]) == read_rgb8(paths["rgba"])).all()                          # the store agrees
