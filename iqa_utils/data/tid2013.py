"""TID2013 -> Manifest.

Release layout under root (default folder name `tid2013`):

    mos_with_names.txt     "<MOS> <name>" per line, e.g. "5.51429 i01_01_1.bmp" (3000 lines)
    distorted_images/      i01_01_1.bmp ... i25_24_5.bmp  (name = i<ref>_<type>_<level>.bmp)
    reference_images/      I01.BMP ... I25.BMP (not listed)

File-name case varies between copies (I01.BMP beside i25.bmp, upper-case I in some distorted names),
so names are matched exactly first and then ignoring case. Label: MOS on a 0-9 scale (higher is
better). Reference id = characters 2-3 of the name ("01".."25"); type 1..24, level 1..5.
"""
from __future__ import annotations

import re
from pathlib import Path

from .manifest import (EXPECTED_COUNTS, DatasetError, FolderIndex, Manifest, finish_manifest, make_df,
                       missing_grid, require_dir)

NAME = "TID2013"
LABEL_FILE, IMAGES = "mos_with_names.txt", "distorted_images"
# The 24 distortion types, numbered as in the release's readme (index 0 = type 1).
DISTORTIONS = (
    "additive_gaussian_noise", "additive_noise_color", "spatially_correlated_noise", "masked_noise",
    "high_frequency_noise", "impulse_noise", "quantization_noise", "gaussian_blur", "image_denoising",
    "jpeg", "jpeg2000", "jpeg_transmission_errors", "jpeg2000_transmission_errors",
    "non_eccentricity_pattern_noise", "local_blockwise_distortions", "mean_shift", "contrast_change",
    "color_saturation_change", "multiplicative_gaussian_noise", "comfort_noise",
    "lossy_compression_of_noisy_images", "color_quantization_dither", "chromatic_aberrations",
    "sparse_sampling_reconstruction")
_NAME_RE = re.compile(r"^i(\d\d)_(\d\d)_(\d)\.bmp$", re.IGNORECASE)


def distortion_name(code: int) -> str:
    return DISTORTIONS[code - 1] if 1 <= code <= len(DISTORTIONS) else f"type{code:02d}"


def parse(root: Path | str, expected_count: int | None = EXPECTED_COUNTS[NAME], check_files: bool = True,
          check_images: bool = False) -> Manifest:
    """Parse TID2013 (layout in the module docstring)."""
    root = require_dir(root, NAME)
    label_path = root / LABEL_FILE
    if not label_path.is_file():
        raise DatasetError(f"label file not found: {label_path}")
    images = FolderIndex(require_dir(root / IMAGES, NAME) if check_files else root / IMAGES)
    rows = []
    for lineno, line in enumerate(label_path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        m = _NAME_RE.match(parts[1]) if len(parts) == 2 else None
        try:
            mos = float(parts[0]) if m else None
        except ValueError:
            m = None
        if m is None:
            raise DatasetError(f"{label_path}, line {lineno}: expected '<MOS> iRR_TT_L.bmp', got {line!r}")
        ref, code, level = m.group(1), int(m.group(2)), int(m.group(3))
        rows.append(dict(path=images.resolve(parts[1]), label=mos, direction="MOS", ref=ref,
                         distortion=distortion_name(code), level=level, label_row=lineno))
    # the experiment's scale is 0..9 (released MOS lie about 0.2..7.2)
    manifest = Manifest(NAME, root, make_df(rows), split_unit="ref", label_range=(0.0, 9.0),
                        label_file=label_path)
    return finish_manifest(manifest, expected_count, check_files, check_images,
                           lambda: missing_grid(manifest.df))
