"""Figures: Grad-CAM maps, token maps, t-SNE, gMAD selection; every plot draws a figure that `save` writes."""
import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure

from iqa_utils.models.deiqt import DEIQT
from iqa_utils.reporting import plots

SIZE = 96          # smoke crop size


def _is_png(path):
    data = open(path, "rb").read()
    return data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000


def _png_of(fig, path):
    """A plots figure (drawn, unsaved) written as its publisher writes it."""
    assert isinstance(fig, Figure)
    return _is_png(plots.save(fig, path))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return DEIQT("tiny", img_size=SIZE)


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(1)
    smooth = torch.linspace(-1, 1, SIZE).view(1, 1, SIZE).expand(3, SIZE, SIZE)
    half = smooth.clone()
    half[:, :, SIZE // 2:] = torch.randn(3, SIZE, SIZE // 2, generator=g) * 1.5   # right half noise
    return torch.stack([smooth, half, torch.randn(3, SIZE, SIZE, generator=g)])


# ---------------------------------------------------------------- Grad-CAM

def test_gradcam_shapes_values_and_input_dependence(tiny, images):
    cams = plots.gradcam_maps({"DEIQT": tiny}, images)["DEIQT"]
    assert cams.shape == (3, SIZE, SIZE) and np.isfinite(cams).all()
    assert cams.min() >= 0 and cams.max() <= 1 + 1e-5
    assert not np.allclose(cams[1], cams[2])                        # different inputs, different maps
    left, right = cams[1][:, : SIZE // 2].mean(), cams[1][:, SIZE // 2:].mean()
    assert abs(left - right) > 0.02                                 # half-noise image: halves differ
    assert tiny.training                                            # library's .eval() undone


def test_gradcam_resizes_to_model_input_and_back(tiny, images):
    big = torch.nn.functional.interpolate(images[:2], size=(120, 150), mode="bilinear")
    cams = plots.gradcam_maps({"m": tiny}, big)["m"]
    assert cams.shape == (2, 120, 150)


def test_gradcam_default_point_is_what_the_final_norm_receives(tiny, images):
    """The same kind of point for every model: the tokens the encoder's last block hands on (the input of
    its final norm), not a LayerNorm output inside a block's attention branch."""
    (module, arg), = plots.encoder_output_target(tiny)[0]
    assert module is tiny.encoder.norm and arg == 0
    calls = []

    class Reshaped(DEIQT):
        def cam_reshape(self, tokens):
            calls.append(tokens.shape)
            return super().cam_reshape(tokens)

    torch.manual_seed(0)
    cams = plots.gradcam_maps({"h": Reshaped("tiny", img_size=SIZE)}, images[:1])["h"]
    assert cams.shape == (1, SIZE, SIZE) and calls[0] == (1, 145, 48)     # CLS + 12x12 patches at 96 px


# ---------------------------------------------------------------- token maps, t-SNE, gMAD

def test_token_maps_norm_and_pca():
    tok = torch.zeros(2, 1 + 4, 3)
    tok[:, 1:, 0] = torch.tensor([1.0, 2.0, 3.0, 4.0])          # one prefix token, 2x2 grid
    m = plots.token_maps(tok, "norm", prefix_tokens=1)
    np.testing.assert_allclose(m[0], [[1, 2], [3, 4]])
    p = plots.token_maps(tok, "pca", prefix_tokens=1)
    assert p.shape == (2, 2, 2) and p[0, 1, 1] > p[0, 0, 0]      # sign follows the norm
    chw = plots.token_maps(torch.randn(2, 5, 3, 4))                  # (N, D, h, w) input
    assert chw.shape == (2, 3, 4)


def test_tsne_shape_and_determinism(tmp_path):
    rng = np.random.default_rng(0)
    mos = rng.uniform(0, 100, 40)
    feats = np.c_[mos[:, None] / 10, rng.normal(size=(40, 7))]
    f1, df1 = plots.tsne_features(feats, mos, bins=4)
    _, df2 = plots.tsne_features(feats, mos, bins=4)
    assert df1.shape[0] == 40 and {"x", "y", "mos", "mos_range"} <= set(df1)
    assert df1["mos_range"].nunique() == 4
    np.testing.assert_allclose(df1[["x", "y"]], df2[["x", "y"]])
    assert _png_of(f1, tmp_path / "a.png")
    f3, df3 = plots.tsne_features({"DEIQT": feats, "LML-IQA": feats[:, ::-1]}, mos)
    assert len(df3) == 80 and _png_of(f3, tmp_path / "c.png")


def test_gmad_picks_constructed_pair():
    # defender A: 0..100 in 5 bins of width 20 -> centres 10, 30, ...; tol = 5
    a = np.array([0, 100, 29, 31, 30, 36, 70, 71, 69])
    b = np.array([50, 50, 40, 90, 10, 60, 55, 54, 56])
    t = plots.gmad_pairs(a, b, n_levels=5, names=("A", "B"))
    row = t[(t.defender == "A") & (t.level == 1)].iloc[0]         # centre 30: images 2, 3, 4 (36 is out)
    assert row.n_candidates == 3 and (row.img_high, row.img_low) == (3, 4)
    assert row.attacker_gap == pytest.approx(80)
    assert set(t[t.defender == "A"].level) == {1, 3}               # levels with < 2 candidates skipped
    assert (t.defender == "B").any() and set(t.attacker) == {"A", "B"}


# ---------------------------------------------------------------- every plot draws a figure; `save` writes it

def test_plots_write_pngs(tmp_path, tiny, images):
    cams = plots.gradcam_maps({"DEIQT": tiny, "DEIQT-2": tiny}, images)
    scores = {"MOS": [20.0, 50.5, 80.0], "DEIQT": [1.0, 2.0, 3.0], "DEIQT-2": [3.0, 2.0, 1.0]}
    tokens = torch.randn(3, 1 + 36, 48)
    extra = [("large", plots.token_maps(tokens, prefix_tokens=1))]
    assert _png_of(plots.plot_gradcam_grid(images, cams, scores=scores, extra_rows=extra), tmp_path / "cam.png")
    assert _png_of(plots.plot_feature_maps({"large": tokens, "small": torch.randn(3, 1 + 64, 48)},
                                           images=images, method="pca", prefix_tokens=1), tmp_path / "feat.png")
    assert _png_of(plots.plot_attention_maps([("before SFA", np.random.rand(3, 6, 6)),
                                              ("after SFA", np.random.rand(3, 8, 8))], images=images),
                   tmp_path / "attn.png")

    rng = np.random.default_rng(0)
    small = rng.uniform(0, 100, 200)
    scale_df = pd.DataFrame({"mos_small": small, "mos_large": small + rng.normal(3, 5, 200),
                             "mos_image": small + 2})
    assert _png_of(plots.plot_scale_mos(scale_df), tmp_path / "scale.png")

    a, b = rng.uniform(0, 100, 60), rng.uniform(0, 100, 60)
    table = plots.gmad_pairs(a, b, n_levels=3, names=("DEIQT", "LML-IQA"))
    pool = [rng.integers(0, 255, (40 + i % 3, 50, 3), dtype=np.uint8) for i in range(60)]
    assert _png_of(plots.plot_gmad(pool, table), tmp_path / "gmad.png")

    manifest = pd.DataFrame({"path": [f"img{i}.png" for i in range(24)], "label": rng.uniform(0, 100, 24),
                             "direction": "MOS", "distortion": ["blur", "noise", "jpeg"] * 8,
                             "level": [1, 2, 3, 4] * 6})
    assert _png_of(plots.plot_mos_histograms({"synthetic": manifest, "authentic": manifest.drop(columns="distortion")}),
                   tmp_path / "hist.png")
    store_like = [torch.randint(0, 255, (3, 60, 80), dtype=torch.uint8).numpy() for _ in range(24)]
    assert _png_of(plots.plot_examples_per_distortion(manifest, images=store_like, n_per_type=3), tmp_path / "ex.png")

    records = [{"model": m, "dataset": "synthetic", "seed": 0,
                "epochs": [{"epoch": e, "srcc": 0.1 * e + k, "plcc": 0.1 * e, "loss": 1.0 / (e + 1)}
                           for e in range(1, 5)]} for k, m in enumerate(["deiqt", "csfiqa"])]
    assert set(plots.curves_frame(records)["metric"]) == {"srcc", "plcc", "loss"}
    assert _png_of(plots.plot_training_curves(records), tmp_path / "curves.png")


def test_gmad_without_pairs_says_so(tmp_path):
    """A pool too small for any level to hold two near-equal images: no pairs, and a figure saying so."""
    table = plots.gmad_pairs(np.array([0.0, 1.0]), np.array([1.0, 0.0]), n_levels=4)
    assert table.empty
    assert _png_of(plots.plot_gmad([np.zeros((8, 8, 3), np.uint8)] * 2, table), tmp_path / "none.png")


def test_save_writes_atomically_stamps_only_when_asked_and_closes(tmp_path):
    import matplotlib.pyplot as plt
    plain = plots.save(plots.plot_not_made("t", "why"), tmp_path / "plain.png")
    fig = plots.plot_not_made("t", "why")
    stamped = plots.save(fig, tmp_path / "stamped.png", stamp="REHEARSAL")
    assert _is_png(plain) and _is_png(stamped) and plain.read_bytes() != stamped.read_bytes()
    assert [t.get_text() for t in fig.texts] == ["REHEARSAL"] and not plt.fignum_exists(fig.number)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.png", "stamped.png"]     # no temp files left
