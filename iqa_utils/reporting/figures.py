"""The papers' figures from trained runs: notebook 06 calls one function per figure.

Models are the seed-0 runs of the profile's first dataset (LIVEC in the paper profile, as both papers'
Fig. 4 use it), taken from their run records — trained first if the record is missing, with the
notebook's overrides, as its other runs. Each figure function returns (matplotlib figure, caption); the
notebook's Session names, writes and indexes it (`session.figure(name, caption, fig)`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from ..config.check import make_config, override
from ..data import livefb, synthetic
from ..data.cache import open_store
from ..data.splits import Split
from ..data.manifest import Manifest
from ..data.store import CropSampler
from ..models import display_name
from ..models.base import TestCrops
from ..runs.experiments import manifest_for, visual_configs, with_base
from ..runs.records import run_or_load
from ..devices import resolve_device
from ..system import KitError, MissingFile
from ..training.evaluation import LabelNorm, predict_rows, test_views
from ..training.predict import load_trained
from . import plots


@dataclass
class Visuals:
    profile: str
    dataset: str
    manifest: object
    split: object
    models: dict
    records: dict                                 # model name -> run record
    sampler: object
    device: torch.device
    data_root: str | None = None
    n_images: int = 6
    rows: list = field(default_factory=list)      # the test images shown in Grad-CAM figures
    configs: dict = field(default_factory=dict)   # model name -> the config its run was made with

    def config(self, model: str):
        """The config of a model's run (overrides included); the profile's when none is known."""
        return self.configs.get(model) or make_config(self.profile, model)

    def summary(self) -> pd.DataFrame:
        return pd.DataFrame([{"model": display_name(m), "dataset": self.dataset, "test SRCC": r["final"]["srcc"],
                              "checkpoint": r.get("checkpoint")} for m, r in self.records.items()])

    def views(self, rows, size: int) -> torch.Tensor:
        return self.sampler.global_views(torch.as_tensor(rows, dtype=torch.long), size)


def visual_context(session, dataset: str | None = None, seed: int = 0, n_images: int = 6) -> Visuals:
    """The seed-0 run of each model on the figures' dataset, with the session's overrides as its other
    runs (`run_all`'s rule, `with_base`; trained here if its record is missing), loaded from its
    checkpoint, and the test images the Grad-CAM figures show. session: a notebook.Session."""
    dev = resolve_device(session.device)
    planned = with_base(visual_configs(session.profile, dataset, seed), session.overrides)
    dataset = planned[0][0].data.dataset
    manifest = manifest_for(session.profile, dataset, session.data_root)
    models, records, configs = {}, {}, {}
    for cfg, _ in planned:                        # runs trained here and the figures share the session's stores
        cfg = override(cfg, {"train.device": str(dev), "data.data_root": session.data_root})
        rec = run_or_load(cfg, session.results_dir, manifest=manifest, stores=session.stores)
        model, _ = load_trained(Path(session.results_dir) / rec["checkpoint"], device=str(dev))
        name = cfg.model.name
        models[name], records[name], configs[name] = model.eval(), rec, cfg
    split = Split.load(Path(session.results_dir) / records["deiqt"]["split"]["file"])
    dc = configs["deiqt"].data
    size = max(getattr(m, "input_size", 224) for m in models.values())
    store = open_store(manifest, resize_mode=dc.resize_mode, max_side=dc.max_side, min_side=size,
                       device=dev, kind=dc.store, progress=False, stores=session.stores)
    return Visuals(session.profile, dataset, manifest, split, models, records, CropSampler(store, device=dev), dev,
                   session.data_root, n_images, shown_rows(manifest, split, n_images), configs)


def shown_rows(manifest, split, n_images: int) -> list[int]:
    """The test images the Grad-CAM figures show: n spread over the labels, low to high."""
    test = np.asarray(split.test)
    order = test[np.argsort(manifest.df.label.to_numpy()[test], kind="stable")]
    return order[np.linspace(0, len(order) - 1, min(n_images, len(order))).round().astype(int)].tolist()


def _denorm(model, pred: np.ndarray) -> np.ndarray:
    """Scores in label units (a run trained on min-max labels predicts in [0, 1])."""
    meta = getattr(model, "kit_meta", {})
    return LabelNorm(meta["config"]["train"]["label_norm"], meta.get("label_range")).inverse(pred) if meta else pred


CROP_MODES = ("crop", "crop_per_branch")
CAM_POINT = "the tokens each encoder's last block hands on (what its final norm receives)"
SCORE_NOTE = ("under each map, that model's score of the input shown (the whole test image resized to the "
              "model's input size), the input the map was made on")


def _large_half(model, reshape):
    """CSFIQA's crop modes run both crops through the encoder as one batch (small first): the large
    scale is the second half."""
    if getattr(getattr(model, "csfiqa", None), "scale_mode", None) not in CROP_MODES:
        return reshape
    return lambda t: reshape(t[t.shape[0] // 2:])


def cam_target(model) -> tuple[list, object]:
    """Every model's main Grad-CAM point (plots.encoder_output_target), batch halves handled."""
    points, reshape = plots.encoder_output_target(model)
    return points, _large_half(model, reshape)


def _last_tokens(model):
    """Reshape taking the last gh*gw tokens: the large scale's patches, wherever they sit in the sequence."""
    gh, gw = model.grids[1]
    return lambda t: t[:, -gh * gw:].reshape(t.shape[0], gh, gw, -1).permute(0, 3, 1, 2)


def crossvit_block_targets(model) -> list[tuple[str, list, object]]:
    """(name, [(module, input index)], reshape) of each multi-scale block's large-branch output: the tokens
    block i hands on are what block i+1's large-branch Transformer blocks (after the last block, the
    final large-branch norm) receive."""
    enc = model.encoder
    nxt = [enc.blocks[i + 1].blocks[1] for i in range(len(enc.blocks) - 1)] + [enc.norm[1]]
    reshape = _large_half(model, model.cam_reshape)
    return [(f"block {i + 1} output", [(m, 0)], reshape) for i, m in enumerate(nxt)]


def sfa_targets(model) -> list[tuple[str, list, object]]:
    """The tokens the selective attention receives (before SFA) and, with the panel decoder, the tokens
    the decoder reads (after SFA: its memory, input 1); the large scale's patch tokens of each."""
    afs = model.afs[-1] if isinstance(model.afs, torch.nn.ModuleList) else model.afs
    out = [("SFA input (before SFA)", [(afs, 0)], _last_tokens(model))]
    if model.csfiqa.decoder == "panel":                 # a linear decoder reads the CLS alone: no token map
        out.append(("decoder input (after SFA)", [(model.decoder, 1)], _last_tokens(model)))
    return out


def _cams_and_scores(models: dict, x, targets: dict | None = None) -> tuple[dict, dict]:
    """Grad-CAM maps and, in label units, each model's score of the input its map was made on."""
    raw = {}
    cams = plots.gradcam_maps(models, x, targets=targets, scores=raw)
    return cams, {k: _denorm(models[k], v) for k, v in raw.items()}


def gradcam(V: Visuals) -> tuple[Figure, str]:
    """CSFIQA Fig. 4 / LML-IQA Fig. 4: input, then each model's Grad-CAM at the same kind of point (the
    tokens its encoder's last block hands on); GT under the input, and under each map the model's score
    of the input the map was made on."""
    size = max(m.input_size for m in V.models.values())
    x = V.views(V.rows, size)
    names = {display_name(k): m for k, m in V.models.items()}
    cams, scores = _cams_and_scores(names, x, {k: cam_target(m) for k, m in names.items()})
    scores = {"GT": V.manifest.df.label.to_numpy()[V.rows], **scores}
    fig = plots.plot_gradcam_grid(plots.to_uint8(x), cams, scores=scores)
    return fig, (f"Grad-CAM, DEIQT vs CSFIQA vs LML-IQA ({V.dataset} test images), taken at {CAM_POINT}; "
                 f"numbers: ground truth under the input, {SCORE_NOTE} (the runs' test predictions, a mean "
                 f"over test crops, are in the summary table)")


def csfiqa_layers(V: Visuals) -> tuple[Figure, str]:
    """CSFIQA Fig. 5: Grad-CAM of each encoder block's output (the tokens it hands on), of the tokens the
    selective attention receives (before SFA) and of those the decoder reads (after SFA)."""
    m = V.models["csfiqa"]
    x = V.views(V.rows, m.input_size)
    layers = crossvit_block_targets(m) + sfa_targets(m)
    cams, scores = _cams_and_scores({name: m for name, _, _ in layers}, x,
                                    {name: (t, r) for name, t, r in layers})
    fig = plots.plot_gradcam_grid(plots.to_uint8(x), cams, scores={"CSFIQA": next(iter(scores.values()))})
    return fig, ("CSFIQA Grad-CAM of each encoder block's output (the tokens it hands on), of the tokens the "
                 "selective attention receives (before SFA) and of the tokens the decoder reads (after SFA); "
                 f"{SCORE_NOTE}")


def _csfiqa_features(V: Visuals) -> tuple[torch.Tensor, dict]:
    m = V.models["csfiqa"]
    x = V.views(V.rows, m.input_size)
    with torch.no_grad():
        _, f = m(x, return_features=True)
    return x, f


def csfiqa_scale_features(V: Visuals) -> tuple[Figure, str]:
    """CSFIQA Fig. 4 rows 4-5: the large- and small-scale feature maps."""
    x, f = _csfiqa_features(V)
    feats = {"large scale": f["large"]}
    if "small" in f:
        feats["small scale"] = f["small"]
    return plots.plot_feature_maps(feats, images=plots.to_uint8(x)), "CSFIQA large- and small-scale token maps (norm)"


def csfiqa_sfa_maps(V: Visuals) -> tuple[Figure, str]:
    """CSFIQA Fig. 5: the large-scale token maps before and after SFA, and the Grad-CAM at SFA's input."""
    m = V.models["csfiqa"]
    x, f = _csfiqa_features(V)
    gh, gw = f["grid_large"]
    n_large = gh * gw
    pre_l, post_l = f["pre_sfa"][:, -n_large:], f["post_sfa"][:, -n_large:]
    rows = [("large tokens before SFA", plots.token_maps(pre_l, grid=(gh, gw))),
            ("large tokens after SFA", plots.token_maps(post_l, grid=(gh, gw)))]
    name, points, reshape = sfa_targets(m)[0]
    rows.append((f"Grad-CAM at the {name}", plots.gradcam_maps({name: m}, x, targets={name: (points, reshape)})[name]))
    fig = plots.plot_attention_maps(rows, images=plots.to_uint8(x))
    return fig, "CSFIQA maps before and after SFA (AFS + Information Concentrator)"


def _patch_scales(fb) -> tuple[pd.DataFrame, str]:
    """LIVEFB's patch table with each patch's relative side: from the boxes (labels_image_3patch.csv),
    else measured from the patch files against their images (labels_patch.csv); MissingFile naming what
    is absent when neither gives a size."""
    patches = fb.extras.get("patches")
    if patches is None or patches.empty:
        raise MissingFile(f"{fb.root}: neither {livefb.PATCH3_FILE} nor {livefb.PATCH_FILE} is there (LIVEFB's "
                          f"patch labels, part of the FLIVE release)")
    if patches["rel_side"].notna().any():
        return patches, f"patch sizes from the boxes of {livefb.PATCH3_FILE}"
    patches = patches.assign(rel_side=livefb.sides_from_files(patches, fb.root / livefb.IMAGES))
    if patches["rel_side"].isna().all():
        raise MissingFile(f"{fb.root / livefb.IMAGES / livefb.PATCH_DIR}: {livefb.PATCH_FILE} lists patches but "
                          f"none of their files (nor a box file, {livefb.PATCH3_FILE}) is there to size them")
    return patches, f"patch sizes measured from the patch files against their images ({livefb.PATCH_FILE})"


def scale_labels(V: Visuals) -> tuple[pd.DataFrame, str]:
    """(one row per image: mos_small, mos_large (and mos_image), a note of what was used) — LIVEFB's patch
    labels in the paper profile (`_patch_scales`), pseudo-MOS of 20% / 40% crops for the synthetic set."""
    if V.dataset.startswith("synthetic"):
        crops = synthetic.scale_labels(V.manifest, ratios=(0.2, 0.4), n_per_image=1)
        wide = crops.pivot_table(index="row", columns="ratio", values="mos_crop")
        return (pd.DataFrame({"mos_small": wide[0.2], "mos_large": wide[0.4],
                              "mos_image": V.manifest.df.label.to_numpy()[wide.index]}),
                f"pseudo-MOS of one 20% and one 40% crop of each of {len(wide)} synthetic images")
    fb = V.manifest if V.dataset == "LIVEFB" else manifest_for(V.profile, "LIVEFB", V.data_root)
    patches, source = _patch_scales(fb)
    p = patches.assign(scale=patches["rel_side"].map(lambda r: 0.2 if abs(r - 0.2) < abs(r - 0.4) else 0.4))
    p = p[(p.rel_side - p.scale).abs() < 0.07]
    wide = p.pivot_table(index="image", columns="scale", values="mos", aggfunc="first")
    note = (f"{len(p)} of {len(patches)} listed patches used ({(p.scale == 0.2).sum()} at ~20%, "
            f"{(p.scale == 0.4).sum()} at ~40% of the side, {len(wide)} images; {source}); "
            f"{fb.extras.get('patches_missing', 0)} listed patch files absent")
    return pd.DataFrame({"mos_small": wide.get(0.2), "mos_large": wide.get(0.4)}), note


def not_made(title: str, why: str) -> tuple[Figure, str]:
    """A figure's place, holding "not made: <why>" (an optional file is absent): published like a figure,
    so the notebook goes on and results/README.md says what is missing."""
    return plots.plot_not_made(title, why), f"{title}: not made: {why}"


def scale_mos(V: Visuals) -> tuple[Figure, str]:
    """CSFIQA Fig. 2: MOS distributions at a large (40%) and a small (20%) scale."""
    title = "MOS at two scales (20% / 40% of the image)"
    try:
        df, note = scale_labels(V)
    except (KitError, FileNotFoundError) as e:            # LIVEFB or its patch labels are optional
        return not_made(title, str(e))
    return plots.plot_scale_mos(df), f"{title}: {note}"


@torch.no_grad()
def crop_features(model, sampler, rows, n_crops: int, size: int) -> torch.Tensor:
    """(images, n_crops, D) L2-normalised quality features (the CLS fed to the decoder) of random crops."""
    x = test_views(model, sampler, torch.as_tensor(rows, dtype=torch.long), crops=TestCrops(n_crops, size, seed=7))
    _, f = model(x, return_features=True)
    return torch.nn.functional.normalize(f["cls"].float(), dim=-1).reshape(len(rows), n_crops, -1).cpu()


def manifold_distances(feats: torch.Tensor) -> tuple[np.ndarray, float]:
    """(distances between crops of the same image / mean distance between crops of different images,
    the mean of that ratio). A collapsed local manifold puts an image's crops on one point: near 0."""
    n, k, _ = feats.shape
    d = torch.cdist(feats.reshape(n * k, -1), feats.reshape(n * k, -1))
    same = torch.block_diag(*[torch.ones(k, k)] * n).bool()
    inter = d[~same].mean()
    intra = d[same & ~torch.eye(n * k, dtype=torch.bool)] / inter
    return intra.numpy(), float(intra.mean())


def local_manifold(V: Visuals, n_crops: int = 8) -> tuple[Figure, str, pd.DataFrame]:
    """LML-IQA Fig. 1 made from data: how far apart the crops of one image lie, DEIQT against LML-IQA
    (the local manifold kept, or collapsed), on the test images; a plot and a number per model."""
    rows = list(V.split.test)
    frames, summary = [], []
    for k in ("deiqt", "lmliqa"):
        m = V.models[k]
        dist, mean = manifold_distances(crop_features(m, V.sampler, rows, n_crops, m.input_size))
        frames.append(pd.DataFrame({"model": display_name(k), "distance": dist}))
        summary.append({"model": display_name(k), "mean intra/inter distance": mean, "images": len(rows),
                        "crops per image": n_crops})
    table = pd.DataFrame(summary)
    text = ", ".join(f"{r['model']} {r['mean intra/inter distance']:.3f}" for r in summary)
    fig = plots.plot_distance_distributions(pd.concat(frames))
    return fig, (f"Distances between crops of the same image relative to distances between images "
                 f"({V.dataset} test set): {text}"), table


@torch.no_grad()
def features(model, sampler, rows, n_crops: int, size: int, batch: int = 64) -> np.ndarray:
    """Per-image quality feature (the CLS fed to the decoder), mean over seeded test crops."""
    out = []
    for i in range(0, len(rows), batch):
        idx = torch.as_tensor(rows[i:i + batch], dtype=torch.long)
        x = test_views(model, sampler, idx, crops=TestCrops(n_crops, size))
        _, f = model(x, return_features=True)
        out.append(f["cls"].float().reshape(len(idx), n_crops, -1).mean(1).cpu().numpy())
    return np.concatenate(out)


def tsne(V: Visuals, split: str = "train") -> tuple[Figure, str]:
    """LML-IQA Fig. 5: t-SNE of the quality features of the training set, coloured by MOS range
    (LML-IQA next to DEIQT for contrast)."""
    rows = list(getattr(V.split, split))
    feats = {display_name(k): features(V.models[k], V.sampler, rows, V.config(k).data.crops_test,
                                       V.models[k].input_size) for k in ("deiqt", "lmliqa")}
    fig, _ = plots.tsne_features(feats, V.manifest.df.label.to_numpy()[rows])
    return fig, f"t-SNE of quality features ({V.dataset} {split} set), coloured by MOS"


def gmad_figure(V: Visuals, pool_dir: str | None = None, n_levels: int = 4) -> tuple[Figure, str]:
    """LML-IQA Fig. 3: gMAD competition between DEIQT and LML-IQA on an unlabelled pool (the Waterloo
    Exploration Database in the paper profile; the whole synthetic set in smoke)."""
    title, cfg = "gMAD competition, DEIQT vs LML-IQA", V.config("deiqt")
    if pool_dir:
        exts = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}
        paths = sorted(str(p) for p in Path(pool_dir).rglob("*") if p.suffix.lower() in exts)
        if not paths:                                      # the pool is optional: say so, and go on
            why = f"{pool_dir}: {'no images in' if Path(pool_dir).is_dir() else 'no such'} gMAD pool folder"
            return not_made(title, why)
        size = max(m.input_size for m in V.models.values())
        pool = Manifest.of_files(paths, "gmad-pool")
        sampler = CropSampler(open_store(pool, resize_mode="native", min_side=size, device=V.device,
                                         kind=cfg.data.store), device=V.device)
    else:
        paths, sampler = V.manifest.df.path.tolist(), V.sampler
    rows = list(range(len(paths)))
    scores = {k: _denorm(V.models[k], np.asarray(predict_rows(
                  V.models[k], sampler, rows, crops=TestCrops(V.config(k).data.crops_test, V.models[k].input_size))))
              for k in ("deiqt", "lmliqa")}
    table = plots.gmad_pairs(scores["deiqt"], scores["lmliqa"], n_levels=n_levels, names=("DEIQT", "LML-IQA"))
    return plots.plot_gmad(paths, table), f"{title}: {len(table)} pairs from a pool of {len(paths)} images"


def training_curves(V: Visuals) -> tuple[Figure, str]:
    """Per-epoch test SRCC / PLCC of the three main runs shown here (seed 0)."""
    recs = [{**r, "name": display_name(m)} for m, r in V.records.items() if len(r.get("epochs", [])) > 1]
    return plots.plot_training_curves(recs), f"Per-epoch test SRCC / PLCC of the main runs ({V.dataset}, seed 0)"
