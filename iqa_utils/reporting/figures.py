"""The papers' figures from trained runs: notebook 06 calls one function per figure.

Models are the seed-0 runs of the profile's first dataset (LIVEC in the paper profile, as both papers'
Fig. 4 use it), taken from their run records — trained first if the record is missing. Each function
publishes its figure once (index.record_output); the plotting itself (plots) stays pure.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..config.check import make_config, override
from ..data import synthetic
from ..data.cache import build_store
from ..data.splits import Split
from ..data.store import CropSampler, ImageStore
from ..models import display_name, list_models
from ..runs.experiments import manifest_for, visual_configs
from ..runs.records import run_or_load
from ..devices import resolve_device
from ..system import MissingFile
from ..training.evaluation import LabelNorm, predict_rows
from ..training.predict import load_trained
from . import plots
from .index import record_output


@dataclass
class Visuals:
    profile: str
    dataset: str
    manifest: object
    split: object
    models: dict
    records: dict
    sampler: object
    device: torch.device
    data_root: str | None = None
    n_images: int = 6
    rows: list = field(default_factory=list)      # the test images shown in Grad-CAM figures

    def summary(self) -> pd.DataFrame:
        return pd.DataFrame([{"model": display_name(m), "dataset": self.dataset, "test SRCC": r["final"]["srcc"],
                              "checkpoint": r.get("checkpoint")} for m, r in self.records.items()])

    def views(self, rows, size: int) -> torch.Tensor:
        return self.sampler.global_views(torch.as_tensor(rows, dtype=torch.long), size)


def visual_context(profile: str, results_dir: str = "results", data_root: str | None = None,
                   device: str = "auto", dataset: str | None = None, seed: int = 0, n_images: int = 6) -> Visuals:
    """The seed-0 run of each model on the figures' dataset (trained here if its record is missing),
    loaded from its checkpoint, and the test images the Grad-CAM figures show."""
    dev = resolve_device(device)
    planned = visual_configs(profile, dataset, seed)
    dataset = planned[0][0].data.dataset
    manifest = manifest_for(profile, dataset, data_root)
    models, records = {}, {}
    for cfg, _ in planned:
        cfg = override(cfg, {"train.device": str(dev), "data.data_root": data_root})
        rec = run_or_load(cfg, results_dir, manifest=manifest)
        model, _ = load_trained(Path(results_dir) / rec["checkpoint"], device=str(dev))
        models[cfg.model.name], records[cfg.model.name] = model.eval(), rec
    split = Split.load(Path(results_dir) / records["deiqt"]["split"]["file"])
    cfg = planned[0][0]
    size = max(getattr(m, "input_size", 224) for m in models.values())
    store = build_store(manifest, cfg.data.resize_mode, cfg.data.max_side, size, dev, False, cfg.data.store)
    test = np.asarray(split.test)
    order = test[np.argsort(manifest.df.label.to_numpy()[test])]        # spread over the labels, low to high
    rows = order[np.linspace(0, len(order) - 1, min(n_images, len(order))).round().astype(int)].tolist()
    return Visuals(profile, dataset, manifest, split, models, records, CropSampler(store, device=dev), dev,
                   data_root, n_images, rows)


def _out(results_dir, name) -> Path:
    p = Path(results_dir) / "figures" / f"{name}.png"
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


def _denorm(model, pred: np.ndarray) -> np.ndarray:
    """Scores in label units (a run trained on min-max labels predicts in [0, 1])."""
    meta = getattr(model, "kit_meta", {})
    return LabelNorm(meta["config"]["train"]["label_norm"], meta.get("label_range")).inverse(pred) if meta else pred


def test_predictions(V: Visuals, model: str) -> np.ndarray:
    """The run's test predictions (mean over its test crops, as evaluated) of the images V shows."""
    p = V.records[model]["predictions"]
    pred = dict(zip(p["rows"], p["pred"]))
    return np.asarray([pred[r] for r in V.rows])


def gradcam(V: Visuals, results_dir) -> Path:
    """CSFIQA Fig. 4 / LML-IQA Fig. 4: input, then each model's Grad-CAM, GT and each model's test
    prediction (the mean over its test crops) under them."""
    size = max(m.input_size for m in V.models.values())
    x = V.views(V.rows, size)
    names = {display_name(k): m for k, m in V.models.items()}
    cams = plots.gradcam_maps(names, x)
    scores = {"GT": V.manifest.df.label.to_numpy()[V.rows],
              **{display_name(k): test_predictions(V, k) for k in V.models}}
    path = plots.plot_gradcam_grid(plots.to_uint8(x), cams, _out(results_dir, "06_gradcam"), scores=scores)
    record_output(path, "figure", f"Grad-CAM, DEIQT vs CSFIQA vs LML-IQA ({V.dataset} test images); numbers: "
                                  f"ground truth and each model's test prediction (mean over its test crops)")
    return path


def crossvit_layer_targets(model) -> list[tuple[str, list, object]]:
    """(name, Grad-CAM target layers, reshape) of each multi-scale block's large-branch output, the layers
    before the SFA module: block i's output is what block i+1's first large-branch norm (or, after the last
    block, the final norm) receives."""
    blocks, enc = model.encoder.blocks, model.encoder
    outs = [blocks[i + 1].blocks[1][0].norm1 for i in range(len(blocks) - 1)] + [enc.norm[1]]
    return [(f"CSFIQA block {i + 1}", [layer], model.cam_reshape) for i, layer in enumerate(outs)]


def csfiqa_layers(V: Visuals, results_dir) -> Path:
    """CSFIQA Fig. 5: Grad-CAM of each encoder layer before the SFA module, then after it (the model's
    own target, the large-branch tokens the decoder reads)."""
    m = V.models["csfiqa"]
    x = V.views(V.rows, m.input_size)
    layers = crossvit_layer_targets(m)
    cams = plots.gradcam_maps({name: m for name, _, _ in layers}, x,
                            targets={name: (t, r) for name, t, r in layers})
    cams["CSFIQA output (after SFA)"] = plots.gradcam_maps({"out": m}, x)["out"]
    path = plots.plot_gradcam_grid(plots.to_uint8(x), cams, _out(results_dir, "06_csfiqa_layers"))
    record_output(path, "figure", "CSFIQA Grad-CAM of each encoder layer before SFA, and of the output")
    return path


def csfiqa_scales(V: Visuals, results_dir) -> list[Path]:
    """CSFIQA Fig. 4 rows 4-5 (large- and small-scale feature maps) and Fig. 5 (before / after SFA)."""
    m = V.models["csfiqa"]
    x = V.views(V.rows, m.input_size)
    with torch.no_grad():
        _, f = m(x, return_features=True)
    images = plots.to_uint8(x)
    feats = {"large scale": f["large"]}
    if "small" in f:
        feats["small scale"] = f["small"]
    p1 = plots.plot_feature_maps(feats, _out(results_dir, "06_csfiqa_scale_features"), images=images)
    record_output(p1, "figure", "CSFIQA large- and small-scale token maps (norm)")
    gh, gw = f["grid_large"]
    n_large = gh * gw
    pre_l, post_l = f["pre_sfa"][:, -n_large:], f["post_sfa"][:, -n_large:]
    rows = [("large tokens before SFA", plots.token_maps(pre_l, grid=(gh, gw))),
            ("large tokens after SFA", plots.token_maps(post_l, grid=(gh, gw)))]
    cams = plots.gradcam_maps({"CSFIQA Grad-CAM": m}, x)
    rows.append(("Grad-CAM (score)", cams["CSFIQA Grad-CAM"]))
    p2 = plots.plot_attention_maps(rows, _out(results_dir, "06_csfiqa_sfa_maps"), images=images)
    record_output(p2, "figure", "CSFIQA maps before and after SFA (AFS + Information Concentrator)")
    return [p1, p2]


def scale_labels(V: Visuals) -> tuple[pd.DataFrame, str]:
    """(one row per image: mos_small, mos_large (and mos_image), a note of what was used) — LIVEFB's patch
    labels in the paper profile (sizes from the boxes), pseudo-MOS of 20% / 40% crops for the synthetic set."""
    if V.dataset.startswith("synthetic"):
        crops = synthetic.scale_labels(V.manifest, ratios=(0.2, 0.4), n_per_image=1)
        wide = crops.pivot_table(index="row", columns="ratio", values="mos_crop")
        return (pd.DataFrame({"mos_small": wide[0.2], "mos_large": wide[0.4],
                              "mos_image": V.manifest.df.label.to_numpy()[wide.index]}),
                f"pseudo-MOS of one 20% and one 40% crop of each of {len(wide)} synthetic images")
    fb = V.manifest if V.dataset == "LIVEFB" else manifest_for(V.profile, "LIVEFB", V.data_root)
    patches = fb.extras.get("patches")
    if patches is None or patches.empty or patches["rel_side"].isna().all():
        raise MissingFile(f"{fb.root / 'labels_image_3patch.csv'}: LIVEFB's patch labels with their boxes are "
                          f"needed for the MOS-at-two-scales figure (the patch sizes come from the boxes); they "
                          f"come with the FLIVE release")
    p = patches.assign(scale=patches["rel_side"].map(lambda r: 0.2 if abs(r - 0.2) < abs(r - 0.4) else 0.4))
    p = p[(p.rel_side - p.scale).abs() < 0.07]
    wide = p.pivot_table(index="image", columns="scale", values="mos", aggfunc="first")
    note = (f"{len(p)} of {len(patches)} listed patches used ({(p.scale == 0.2).sum()} at ~20%, "
            f"{(p.scale == 0.4).sum()} at ~40% of the side, {len(wide)} images); "
            f"{fb.extras.get('patches_missing', 0)} listed patch files absent")
    return pd.DataFrame({"mos_small": wide.get(0.2), "mos_large": wide.get(0.4)}), note


def scale_mos(V: Visuals, results_dir) -> Path:
    """CSFIQA Fig. 2: MOS distributions at a large (40%) and a small (20%) scale."""
    df, note = scale_labels(V)
    path = plots.plot_scale_mos(df, _out(results_dir, "06_mos_two_scales"))
    record_output(path, "figure", f"MOS at two scales (20% / 40% of the image): {note}")
    return path


@torch.no_grad()
def crop_features(model, sampler, rows, n_crops: int, size: int) -> torch.Tensor:
    """(images, n_crops, D) L2-normalised quality features (the CLS fed to the decoder) of random crops."""
    x = sampler.test_crops(torch.as_tensor(rows, dtype=torch.long), n_crops, size, mode="seeded_random", seed=7)
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


def local_manifold(V: Visuals, results_dir, n_crops: int = 8) -> tuple[Path, pd.DataFrame]:
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
    path = plots.plot_distance_distributions(pd.concat(frames), _out(results_dir, "06_local_manifold"))
    record_output(path, "figure", f"Distances between crops of the same image relative to distances between "
                                  f"images ({V.dataset} test set): {text}")
    return path, table


@torch.no_grad()
def features(model, sampler, rows, n_crops: int, size: int, batch: int = 64) -> np.ndarray:
    """Per-image quality feature (the CLS fed to the decoder), mean over seeded test crops."""
    out = []
    for i in range(0, len(rows), batch):
        idx = torch.as_tensor(rows[i:i + batch], dtype=torch.long)
        x = sampler.test_crops(idx, n_crops, size)
        _, f = model(x, return_features=True)
        out.append(f["cls"].float().reshape(len(idx), n_crops, -1).mean(1).cpu().numpy())
    return np.concatenate(out)


def tsne(V: Visuals, results_dir, split: str = "train") -> Path:
    """LML-IQA Fig. 5: t-SNE of the quality features of the training set, coloured by MOS range
    (LML-IQA next to DEIQT for contrast)."""
    rows = list(getattr(V.split, split))
    cfg = make_config(V.profile, "deiqt")
    feats = {display_name(k): features(V.models[k], V.sampler, rows, cfg.data.crops_test, V.models[k].input_size)
             for k in ("deiqt", "lmliqa")}
    path, _ = plots.tsne_features(feats, V.manifest.df.label.to_numpy()[rows], _out(results_dir, "06_tsne"))
    record_output(path, "figure", f"t-SNE of quality features ({V.dataset} {split} set), coloured by MOS")
    return path


def gmad_figure(V: Visuals, results_dir, pool_dir: str | None = None, n_levels: int = 4) -> Path:
    """LML-IQA Fig. 3: gMAD competition between DEIQT and LML-IQA on an unlabelled pool (the Waterloo
    Exploration Database in the paper profile; the whole synthetic set in smoke)."""
    if pool_dir:
        exts = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}
        paths = sorted(str(p) for p in Path(pool_dir).rglob("*") if p.suffix.lower() in exts)
        if not paths:
            raise FileNotFoundError(f"no images under the gMAD pool folder {pool_dir}")
        size = max(m.input_size for m in V.models.values())
        store = ImageStore.from_paths(paths, min_side=size, device=V.device, progress=True)
        sampler = CropSampler(store, device=V.device)
    else:
        paths, sampler = V.manifest.df.path.tolist(), V.sampler
    rows = list(range(len(paths)))
    cfg = make_config(V.profile, "deiqt")
    scores = {k: _denorm(V.models[k], np.asarray(predict_rows(V.models[k], sampler, rows, cfg.data.crops_test,
                                                               V.models[k].input_size)))
              for k in ("deiqt", "lmliqa")}
    table = plots.gmad_pairs(scores["deiqt"], scores["lmliqa"], n_levels=n_levels, names=("DEIQT", "LML-IQA"))
    path = plots.plot_gmad(paths, table, _out(results_dir, "06_gmad"))
    record_output(path, "figure", f"gMAD competition, DEIQT vs LML-IQA: {len(table)} pairs from a pool of "
                                  f"{len(paths)} images")
    return path


def training_curves(V: Visuals, results_dir) -> Path:
    """Per-epoch test SRCC / PLCC of the three main runs shown here (seed 0)."""
    recs = [{**r, "name": display_name(m)} for m, r in V.records.items() if len(r.get("epochs", [])) > 1]
    path = plots.plot_training_curves(recs, _out(results_dir, "06_training_curves"))
    record_output(path, "figure", f"Per-epoch test SRCC / PLCC of the main runs ({V.dataset}, seed 0)")
    return path
