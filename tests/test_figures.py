"""Notebook 06's figure functions on tiny fixtures (untrained tiny models, a one-reference synthetic set,
tiny LIVEFB copies), and where each Grad-CAM is taken: the tokens one module hands to the next."""
import numpy as np
import pandas as pd
import pytest
import torch
from native_fixtures import write_image, write_livefb

from iqa_utils.config.check import make_config
from iqa_utils.data import livefb
from iqa_utils.data import synthetic as syn
from iqa_utils.data.splits import Split
from iqa_utils.data.cache import open_store
from iqa_utils.data.store import CropSampler
from iqa_utils.models import create_model
from iqa_utils.reporting import figures, plots
from iqa_utils.reporting.notebook import setup
from iqa_utils.runs import experiments as E

SIZE = 96


def _png(path):
    data = open(path, "rb").read()
    return data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


def _made(made, tmp_path, name="fig"):
    """A figure function's (figure, caption): the figure written as the session writes it; the caption."""
    fig, caption, *_ = made
    assert _png(plots.save(fig, tmp_path / f"{name}.png")) and caption
    return caption


def _model(name, **over):
    torch.manual_seed(0)
    return create_model(make_config("smoke", name, {"model.pretrained": False, **over})).eval()


@pytest.fixture(scope="module")
def models():
    return {m: _model(m) for m in ("deiqt", "csfiqa", "lmliqa")}


@pytest.fixture(scope="module")
def visuals(models, tmp_path_factory):
    root = syn.build_synthetic(tmp_path_factory.mktemp("syn") / "synthetic", progress=False, n_refs=1)
    full = syn.parse(root)
    manifest = full.subset(np.linspace(0, len(full) - 1, 10).round().astype(int).tolist())
    split = Split("synthetic", 0, 0.8, 1.0, 0.0, "image", train=list(range(0, 10, 2)), test=list(range(1, 10, 2)))
    store = open_store(manifest, min_side=SIZE, kind="ram", progress=False)
    epochs = [{"epoch": e, "test": {"srcc": 0.1 * e, "plcc": 0.1 * e}} for e in (1, 2)]
    records = {m: {"final": {"srcc": 0.2}, "checkpoint": None, "epochs": epochs} for m in models}
    return figures.Visuals("smoke", "synthetic", manifest, split, models, records, CropSampler(store),
                           torch.device("cpu"), n_images=3, rows=figures.shown_rows(manifest, split, 3))


def _taps(model, x, points, reshape=None):
    taps = plots.InputTaps(model, points, reshape)
    try:
        score = taps(x)
        score.sum().backward()
        return list(taps.activations), list(taps.gradients)     # release() empties the lists
    finally:
        taps.release()


# ---------------------------------------------------------------- where the maps are taken

def test_csfiqa_cam_activation_is_what_the_next_module_receives(models):
    m, x = models["csfiqa"], torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        e = m.encode(x)
        _, f = m(x, return_features=True)
    blocks = figures.crossvit_block_targets(m)
    assert len(blocks) == len(m.encoder.blocks)
    for i, (_, points, reshape) in enumerate(blocks):          # block i's output, residual path included
        acts, grads = _taps(m, x, points, reshape)
        assert torch.allclose(acts[0], m.cam_reshape(e["blocks_large"][i]), atol=1e-5)
        assert grads[0].abs().sum() > 0
    (_, before, r1), (_, after, r2) = figures.sfa_targets(m)
    gh, gw = m.grids[1]
    grid = lambda t: t[:, -gh * gw:].reshape(2, gh, gw, -1).permute(0, 3, 1, 2)   # noqa: E731
    assert torch.allclose(_taps(m, x, before, r1)[0][0], grid(f["pre_sfa"]), atol=1e-5)
    assert torch.allclose(_taps(m, x, after, r2)[0][0], grid(f["post_sfa"]), atol=1e-5)
    # the main figure's point is the last block's output, the same kind as DEIQT's
    points, reshape = figures.cam_target(m)
    assert torch.allclose(_taps(m, x, points, reshape)[0][0], m.cam_reshape(e["blocks_large"][-1]), atol=1e-5)


@pytest.mark.parametrize("name", ["deiqt", "lmliqa"])
def test_vit_cam_activation_is_the_last_block_output(models, name):
    m, x = models[name], torch.randn(2, 3, SIZE, SIZE)
    net = getattr(m, "student", m)                 # LML-IQA's evaluated branch (the student, by default)
    seen = []
    h = net.encoder.blocks[-1].register_forward_hook(lambda mod, i, o: seen.append(o.detach()))
    points, reshape = figures.cam_target(m)
    acts, _ = _taps(m, x, points, reshape)
    h.remove()
    assert torch.allclose(acts[0], net.cam_reshape(seen[0]), atol=1e-6)


def test_crop_mode_cam_takes_the_large_crops_half():
    m, x = _model("csfiqa", **{"csfiqa.scale_mode": "crop", "csfiqa.nsm": "off"}), torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        e = m.encode(x)
    points, reshape = figures.cam_target(m)
    acts, _ = _taps(m, x, points, reshape)
    assert acts[0].shape[0] == 2 and torch.allclose(acts[0], m.cam_reshape(e["blocks_large"][-1]), atol=1e-5)
    cams = plots.gradcam_maps({"c": m}, x, targets={"c": (points, reshape)})["c"]
    assert cams.shape == (2, SIZE, SIZE)


def test_printed_score_is_that_of_the_mapped_input(models):
    m, x = models["deiqt"], torch.randn(3, 3, SIZE, SIZE)
    scores = {}
    plots.gradcam_maps({"d": m}, x, scores=scores)
    with torch.no_grad():
        assert np.allclose(scores["d"], m(x).numpy(), atol=1e-5)


# ---------------------------------------------------------------- every figure of notebook 06

def test_gradcam_and_csfiqa_figures(visuals, tmp_path):
    assert visuals.rows == sorted(visuals.rows, key=lambda r: visuals.manifest.df.label[r])
    assert set(visuals.rows) <= set(visuals.split.test)
    assert "ground truth under the input" in _made(figures.gradcam(visuals), tmp_path)
    assert "before SFA" in _made(figures.csfiqa_layers(visuals), tmp_path)
    assert "small-scale" in _made(figures.csfiqa_scale_features(visuals), tmp_path)
    assert "after SFA" in _made(figures.csfiqa_sfa_maps(visuals), tmp_path)
    assert list(visuals.summary()["test SRCC"]) == [0.2] * 3


def test_feature_figures(visuals, tmp_path):
    assert "t-SNE" in _made(figures.tsne(visuals), tmp_path)
    made = figures.local_manifold(visuals, n_crops=2)
    table = made[2]
    assert "DEIQT" in _made(made, tmp_path) and list(table.model) == ["DEIQT", "LML-IQA"]
    assert (table["mean intra/inter distance"] > 0).all()
    assert "Per-epoch" in _made(figures.training_curves(visuals), tmp_path)


def test_gmad_pool_and_its_absence(visuals, tmp_path):
    assert f"a pool of {len(visuals.manifest)} images" in _made(figures.gmad_figure(visuals, n_levels=2), tmp_path)
    pool = tmp_path / "pool"
    for i in range(4):
        write_image(pool / f"p{i}.png", (110, 100), i)
    assert "a pool of 4 images" in _made(figures.gmad_figure(visuals, pool_dir=str(pool), n_levels=2), tmp_path)
    missing = figures.gmad_figure(visuals, pool_dir=str(tmp_path / "nowhere"), n_levels=2)
    assert "not made" in _made(missing, tmp_path)          # its place says "not made", the notebook goes on


def _fb_visuals(root, how):
    fb = livefb.parse(write_livefb(root, n_images=6, patches=how), expected_count=None)
    return figures.Visuals("paper", "LIVEFB", fb, None, {}, {}, None, torch.device("cpu"))


@pytest.mark.parametrize("how", ["3patch", "list"])
def test_scale_mos_from_boxes_or_from_the_patch_files(tmp_path, how):
    V = _fb_visuals(tmp_path / how, how)
    df, note = figures.scale_labels(V)
    # fixture side fractions: 0.2 and 0.4 per image (0.3 dropped) -> 6 images at both scales
    assert df[["mos_small", "mos_large"]].notna().all().all() and len(df) == 6
    assert ("boxes" if how == "3patch" else "measured from the patch files") in note
    assert note in _made(figures.scale_mos(V), tmp_path)


def test_scale_mos_without_patch_labels_is_not_made(tmp_path):
    V = _fb_visuals(tmp_path / "bare", None)
    session = setup("06_x", "paper", str(tmp_path / "results"))
    fig, caption = figures.scale_mos(V)
    session.figure("06_mos_two_scales", caption, fig)
    log = pd.read_json(tmp_path / "results" / "outputs.jsonl", lines=True)
    assert log.caption.str.contains("not made: .*labels_image_3patch.csv", regex=True).any()


def test_patch_sides_measured_from_files(tmp_path):
    fb = livefb.parse(write_livefb(tmp_path, n_images=3, patches="list"), expected_count=None)
    p = fb.extras["patches"]
    assert p.rel_side.isna().all()                         # no boxes in labels_patch.csv
    sides = livefb.sides_from_files(p, fb.root / livefb.IMAGES)
    boxes = livefb.parse(write_livefb(tmp_path / "b", n_images=3, patches="3patch"),
                         expected_count=None).extras["patches"]
    assert np.allclose(sides.to_numpy(), boxes.rel_side.to_numpy(), atol=0.02)


def test_synthetic_scale_labels(visuals):
    df, note = figures.scale_labels(visuals)
    assert len(df) == len(visuals.manifest) and df.notna().all().all() and "synthetic" in note


# ---------------------------------------------------------------- the plans' dataset choices

@pytest.mark.parametrize("profile,dataset", [("smoke", "synthetic"), ("quick", "LIVEC"), ("paper", "LIVEC"),
                                             ("paper-rehearsal", "LIVEC")])
def test_figures_dataset_is_livec_when_planned(profile, dataset):
    planned = E.visual_configs(profile)
    assert {c.data.dataset for c, _ in planned} == {dataset} and {c.split_seed for c, _ in planned} == {0}
    assert sorted(c.model.name for c, _ in planned) == ["csfiqa", "deiqt", "lmliqa"]


def test_data_efficiency_runs_and_table():
    planned = E.fraction_configs("paper", ("deiqt",), seeds=[0])
    assert [(label, c.data.dataset, c.data.train_fraction) for c, label in planned] == [
        (f"{s}%", ds, s / 100) for s in (20, 40, 60) for ds in ("KonIQ-10k", "LIVEC")]
    from iqa_utils.reporting.paper_tables import data_efficiency_table
    runs = pd.DataFrame({"method": "DEIQT", "variant": ["20%", "20%", "40%"], "dataset": "KonIQ-10k",
                         "srcc": [0.80, 0.82, 0.85], "plcc": [0.8, 0.82, 0.86]})
    t = data_efficiency_table(runs, "paper")
    row = t[(t.variant == "20%") & (t.metric == "SRCC")].iloc[0]
    assert row["reported"] == pytest.approx(0.888) and row["median"] == pytest.approx(0.81)
    assert set(t.variant) == {"20%", "40%"}


@pytest.mark.slow
def test_visual_context_trains_with_the_session_s_overrides(tmp_path):
    """Notebook 06's models come from runs made with the notebook's --set overrides (here: untrained,
    epochs 0, and a test crop count of 2), as its other runs do; the figures read the same configs."""
    session = setup("06_visualizations", "smoke", str(tmp_path), device="cpu",
                    overrides={"train.epochs": 0, "data.crops_test": 2})
    V = figures.visual_context(session, n_images=2)
    assert {m: r["config"]["train"]["epochs"] for m, r in V.records.items()} == dict.fromkeys(V.models, 0)
    assert all(V.config(m).data.crops_test == 2 for m in V.models)
    assert all(r["config"]["data"]["crops_test"] == 2 for r in V.records.values())


def test_not_made_holds_the_reason_in_the_figure_and_its_caption():
    fig, caption = figures.not_made("MOS at two scales", "no labels_image_3patch.csv")
    assert caption == "MOS at two scales: not made: no labels_image_3patch.csv"
    texts = [t.get_text() for ax in fig.axes for t in ax.texts] + [t.get_text() for t in fig.texts]
    assert any("no labels_image_3patch.csv" in t for t in texts)
