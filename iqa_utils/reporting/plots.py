"""Figures of the papers, regenerated from models and run records, as PNG files.

Rule for return values: every `plot_*` draws one matplotlib figure and returns it, unsaved: whoever
publishes it (`notebook.Session.figure`) names, stamps, writes and indexes it in one place (`save`
writes one). Functions that compute something (`gradcam_maps`, `token_maps`, `gmad_pairs`,
`curves_frame`) return the data, and `tsne_features` (which does both) returns (Figure, DataFrame of
the plotted points).

Images are given either as uint8 arrays (N, H, W, 3) / lists of (H, W, 3) arrays of any size, or as
normalised float tensors (N, 3, H, W) (see `to_uint8`). Maps (CAMs, token maps, attention) are
(N, h, w) arrays at any resolution; plots resize them to the image they are drawn over.

Which paper figure each function serves:
    gradcam_maps + plot_gradcam_grid    CSFIQA Fig. 4, LML-IQA Fig. 4
    token_maps + plot_feature_maps      CSFIQA Fig. 4 rows 4-5 (large / small scale features)
    plot_attention_maps                 CSFIQA Fig. 5 (per-layer maps before/after SFA)
    plot_scale_mos                      CSFIQA Fig. 2 (MOS at 20% and 40% patch scale)
    gmad_pairs + plot_gmad                   LML-IQA Fig. 3
    tsne_features                       LML-IQA Fig. 5
    plot_mos_histograms, plot_examples_per_distortion, plot_training_curves   kit notebooks
"""
from __future__ import annotations

import textwrap
import warnings
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402
from pytorch_grad_cam import GradCAM  # noqa: E402
from pytorch_grad_cam.activations_and_gradients import ActivationsAndGradients  # noqa: E402
from sklearn.manifold import TSNE  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402
from timm.data import IMAGENET_DEFAULT_MEAN as IMAGENET_MEAN  # noqa: E402
from timm.data import IMAGENET_DEFAULT_STD as IMAGENET_STD

from ..devices import train_mode  # noqa: E402
from ..system import atomic_write  # noqa: E402

CAM_CMAP = "jet"
# ================================================================ small helpers

def save(fig: Figure, path, stamp: str | None = None) -> Path:
    """Write the figure's PNG atomically (a unique temp file, then rename) and close it; `stamp`, when
    given, is written across its top (a rehearsal's figures say so)."""
    if stamp:
        fig.text(0.5, 1.0, stamp, ha="center", va="bottom", color="tab:red", fontsize=11, weight="bold")
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format=Path(path).suffix.lstrip(".") or "png",
                                                          dpi=120, bbox_inches="tight"))
    finally:
        plt.close(fig)


def to_uint8(images, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> list[np.ndarray]:
    """A list of (H, W, 3) uint8 images from normalised (N, 3, H, W) tensors, uint8 (N, 3, H, W) /
    (N, H, W, 3) arrays or a list of such single images."""
    if isinstance(images, torch.Tensor):
        x = images.detach().cpu()
        if x.dtype != torch.uint8:                   # normalised floats, (N, 3, H, W)
            x = x.float() * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
            x = (x.clamp(0, 1) * 255).round().to(torch.uint8)
        if x.shape[1] == 3 and x.shape[-1] != 3:
            x = x.permute(0, 2, 3, 1)
        return list(x.numpy())
    out = []
    for img in images:
        img = np.asarray(img)
        if img.ndim == 3 and img.shape[0] == 3 and img.shape[-1] != 3:
            img = img.transpose(1, 2, 0)
        if img.dtype != np.uint8:
            img = np.clip(img * 255 if img.max() <= 1.0 else img, 0, 255).astype(np.uint8)
        out.append(img)
    return out


def resize_maps(maps, size: tuple[int, int]) -> np.ndarray:
    """(N, h, w) -> (N, H, W) float32, bilinear."""
    t = torch.as_tensor(np.asarray(maps, dtype=np.float32))
    if tuple(t.shape[-2:]) == tuple(size):
        return t.numpy()
    return F.interpolate(t[:, None], size=size, mode="bilinear", align_corners=False)[:, 0].numpy()


def _minmax(m: np.ndarray) -> np.ndarray:
    lo, hi = np.nanmin(m), np.nanmax(m)
    return (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)


def _score_text(v) -> str:
    if isinstance(v, str):
        return v
    return f"{v:.2f}" if abs(v) < 10 else f"{v:.1f}"


def _blank(ax):
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(False)


# ================================================================ Grad-CAM

class InputTaps(ActivationsAndGradients):
    """pytorch-grad-cam's recorder of activations and their gradients, hooked at what a module
    *receives* (its positional input `arg`, a forward pre-hook) rather than what it returns: Grad-CAM at
    the tokens one stage hands to the next, residual path included."""

    def __init__(self, model, points: Sequence[tuple[torch.nn.Module, int]], reshape_transform, detach=True):
        super().__init__(model, [], reshape_transform, detach)
        for module, arg in points:
            self.handles.append(module.register_forward_pre_hook(self._tap(arg)))

    def _tap(self, arg: int):
        def hook(module, args):
            self.save_activation(module, args, args[arg])
            self.save_gradient(module, args, args[arg])
        return hook


def encoder_output_target(model) -> tuple[list[tuple[torch.nn.Module, int]], object]:
    """The default Grad-CAM point, the same kind for every model: the tokens the encoder's last block
    hands on, i.e. what its final norm receives. Each model names its own point (`cam_points`, the one
    source) and how its tokens lie on the patch grid (`cam_reshape`). Returns ([(module, input index)],
    reshape to (N, C, h, w))."""
    if not hasattr(model, "cam_points"):
        raise TypeError(f"{type(model).__name__} names no Grad-CAM point (`cam_points`); pass targets=")
    return model.cam_points(), model.cam_reshape


class ScoreTarget:
    """Grad-CAM target for a regression model: the predicted score itself (sign=-1 shows the regions
    that pull the score down instead)."""

    def __init__(self, sign: float = 1.0):
        self.sign = sign

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return self.sign * output.reshape(())


def gradcam_maps(models: Mapping[str, torch.nn.Module], images: torch.Tensor, sign: float = 1.0,
                 batch: int = 8, targets: Mapping[str, tuple] | None = None,
                 scores: dict | None = None) -> dict[str, np.ndarray]:
    """Grad-CAM (pytorch-grad-cam's GradCAM) of each model's predicted score, per image.

    images: normalised (N, 3, H, W). Each model sees them resized to its `input_size` (when it has
    one); the maps come back at (H, W) so rows of different models align. Values are in [0, 1]
    (min-max per image, as the library does; all zeros when no region raises the score).
    targets: {name: ([(module, input index)], reshape)}: where the map is taken (the tokens `module`
    receives, `InputTaps`); default `encoder_output_target` (e.g. one row per layer instead).
    scores: a dict filled with {name: (N,) the model's score of the very input its map was made on}.
    """
    n, _, h, w = images.shape
    out = {}
    for name, model in models.items():
        points, reshape = (targets or {}).get(name) or encoder_output_target(model)
        device = next(model.parameters()).device
        size = getattr(model, "input_size", None)
        maps, seen = [], []
        with train_mode(model, model.training):    # the library switches to eval; restore after
            cam = GradCAM(model, [m for m, _ in points], reshape_transform=reshape)
            cam.activations_and_grads.release()
            cam.activations_and_grads = InputTaps(model, points, reshape)
            try:        # not `with cam:` -- the library's __exit__ swallows IndexError
                for i in range(0, n, batch):
                    x = images[i:i + batch].to(device).float()
                    if size is not None and tuple(x.shape[-2:]) != (size, size):
                        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
                    maps.append(cam(x, targets=[ScoreTarget(sign)] * len(x)))
                    seen.append(cam.outputs.detach().float().reshape(-1).cpu().numpy())
            finally:
                cam.activations_and_grads.release()
        out[name] = resize_maps(np.concatenate(maps), (h, w))
        if scores is not None:
            scores[name] = np.concatenate(seen)
    return out


def plot_gradcam_grid(images, cams: Mapping[str, np.ndarray], scores: Mapping[str, Sequence] | None = None,
                      extra_rows: Sequence[tuple[str, np.ndarray]] = (), alpha: float = 0.5,
                      col_titles: Sequence[str] | None = None) -> Figure:
    """Rows: the input, then each model's CAM over the input, then optional plain map rows
    (e.g. CSFIQA's large-/small-scale feature maps). Columns: images.

    scores: {label: (N,)}; a label equal to a CAM row's name is printed under that row (its
    prediction), any other label (e.g. "MOS") under the input row, so the numbers read as in Fig. 4.
    """
    imgs = to_uint8(images)
    rows = [("Input", None)] + [(k, v) for k, v in cams.items()] + list(extra_rows)
    scores = dict(scores or {})
    n_rows, n_cols = len(rows), len(imgs)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.1 * n_cols, 2.3 * n_rows), squeeze=False)
    for r, (name, maps) in enumerate(rows):
        for c, img in enumerate(imgs):
            ax = axes[r, c]
            if r == 0:
                ax.imshow(img)
                text = [f"{k} {_score_text(v[c])}" for k, v in scores.items() if k not in cams]
            else:
                m = resize_maps(maps[c:c + 1], img.shape[:2])[0]
                if name in cams:
                    ax.imshow(img)
                    ax.imshow(m, cmap=CAM_CMAP, alpha=alpha, vmin=0, vmax=1)
                else:
                    ax.imshow(_minmax(m), cmap="viridis")
                text = [f"pred {_score_text(scores[name][c])}"] if name in scores else []
            _blank(ax)
            if text:
                ax.set_xlabel("\n".join(text), fontsize=9)
            if c == 0:
                ax.set_ylabel(name, fontsize=10)
            if r == 0 and col_titles is not None:
                ax.set_title(col_titles[c], fontsize=9)
    fig.tight_layout()
    return fig


def plot_not_made(title: str, why: str) -> Figure:
    """A figure's place when it cannot be made: its title and "not made: <why>"."""
    fig, ax = plt.subplots(figsize=(7, 1.8))
    _blank(ax)
    ax.text(0.5, 0.62, title, ha="center", va="center", fontsize=11, weight="bold")
    ax.text(0.5, 0.3, "\n".join(textwrap.wrap(f"not made: {why}", 90)), ha="center", va="center", fontsize=9,
            color="tab:red")
    return fig


# ================================================================ feature / attention maps

def token_maps(tokens, method: str = "norm", prefix_tokens: int = 0,
               grid: tuple[int, int] | None = None) -> np.ndarray:
    """(N, h, w) scalar maps from a token grid, for visualising features.

    tokens: (N, L, D) tokens (prefix tokens first, dropped) or (N, D, h, w) feature maps.
    method: "norm" (L2 norm over channels) or "pca" (each image's first principal component over
    its tokens, sign chosen so it correlates positively with the norm: deterministic).
    """
    t = torch.as_tensor(np.asarray(tokens, dtype=np.float32)) if not isinstance(tokens, torch.Tensor) \
        else tokens.detach().float().cpu()
    if t.ndim == 4:
        n, d, h, w = t.shape
        t = t.flatten(2).transpose(1, 2)
    else:
        t = t[:, prefix_tokens:]
        n, length, d = t.shape
        if grid is None:
            side = int(round(length ** 0.5))
            if side * side != length:
                raise ValueError(f"{length} tokens do not form a square grid; pass grid=(h, w)")
            grid = (side, side)
        h, w = grid
    norm = t.norm(dim=-1)
    if method == "norm":
        out = norm
    elif method == "pca":
        centred = t - t.mean(dim=1, keepdim=True)
        _, _, v = torch.linalg.svd(centred, full_matrices=False)
        out = torch.einsum("nld,nd->nl", centred, v[:, 0])
        flip = torch.sign((out * (norm - norm.mean(1, keepdim=True))).sum(1, keepdim=True))
        out = out * torch.where(flip == 0, torch.ones_like(flip), flip)
    else:
        raise ValueError(f"unknown method {method!r}; choose norm or pca")
    return out.reshape(n, h, w).numpy()


def plot_map_rows(rows: Sequence[tuple[str, np.ndarray]], images=None, overlay: bool = False,
                  col_titles: Sequence[str] | None = None, cmap: str = "viridis", alpha: float = 0.5,
                  title: str | None = None) -> Figure:
    """Generic grid: optional input row, then one row per (name, (N, h, w) maps); each map min-max
    scaled on its own. overlay=True draws maps over the images (needs images)."""
    imgs = to_uint8(images) if images is not None else None
    all_rows = ([("Input", None)] if imgs is not None else []) + list(rows)
    n_cols = len(imgs) if imgs is not None else len(rows[0][1])
    fig, axes = plt.subplots(len(all_rows), n_cols, figsize=(2.0 * n_cols, 2.0 * len(all_rows)), squeeze=False)
    for r, (name, maps) in enumerate(all_rows):
        for c in range(n_cols):
            ax = axes[r, c]
            if maps is None:
                ax.imshow(imgs[c])
            else:
                size = imgs[c].shape[:2] if imgs is not None else np.asarray(maps[c]).shape
                m = _minmax(resize_maps(np.asarray(maps[c:c + 1]), size)[0])
                if overlay and imgs is not None:
                    ax.imshow(imgs[c])
                    ax.imshow(m, cmap=cmap, alpha=alpha, vmin=0, vmax=1)
                else:
                    ax.imshow(m, cmap=cmap, vmin=0, vmax=1)
            _blank(ax)
            if c == 0:
                ax.set_ylabel(name, fontsize=9)
            if r == 0 and col_titles is not None:
                ax.set_title(col_titles[c], fontsize=9)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_feature_maps(features: Mapping[str, object], images=None, method: str = "norm",
                      prefix_tokens: int | Mapping[str, int] = 0, overlay: bool = False, **kw) -> Figure:
    """CSFIQA's large- and small-scale token maps: {name: (N, L, D) tokens or (N, D, h, w)} ->
    one row per name of `token_maps(..., method)` (grids may differ per branch)."""
    rows = []
    for name, tok in features.items():
        pre = prefix_tokens.get(name, 0) if isinstance(prefix_tokens, Mapping) else prefix_tokens
        rows.append((f"{name} ({method})", token_maps(tok, method, pre)))
    return plot_map_rows(rows, images=images, overlay=overlay, **kw)


def plot_attention_maps(rows: Sequence[tuple[str, np.ndarray]], images=None, overlay: bool = True,
                        **kw) -> Figure:
    """Per-layer attention (or Grad-CAM) maps, e.g. before / after SFA: a list of
    (row name, (N, h, w) array) -> grid, over the images when given (CSFIQA Fig. 5)."""
    return plot_map_rows(rows, images=images, overlay=overlay and images is not None,
                         cmap=CAM_CMAP if overlay else "viridis", **kw)


def plot_distance_distributions(df: pd.DataFrame, title: str | None = None) -> Figure:
    """LML-IQA Fig. 1 from data: per model, the distribution of feature distances between crops of the
    same image (relative to the model's mean distance between crops of different images).
    df: columns model, distance."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    sns.histplot(df, x="distance", hue="model", stat="density", common_norm=False, kde=True, element="step",
                 fill=False, ax=ax)
    ax.set_xlabel("distance between crops of one image / mean distance between images")
    ax.set_title(title or "local manifold: spread of an image's crops")
    fig.tight_layout()
    return fig


# ================================================================ MOS across scales (CSFIQA Fig. 2)

def plot_scale_mos(df: pd.DataFrame, small_label: str = "small scale (20%)",
                   large_label: str = "large scale (40%)", big_diff: float = 5.0) -> Figure:
    """Left: distributions (histogram + KDE) of patch MOS at the two scales (and the image MOS if a
    `mos_image` column is present). Right: per-image difference mos_large - mos_small, titled with
    its mean, sd and the share of images whose two scales differ by more than `big_diff`."""
    cols = {"mos_small": small_label, "mos_large": large_label}
    if "mos_image" in df:
        cols["mos_image"] = "whole image"
    long = df[list(cols)].rename(columns=cols).melt(var_name="view", value_name="MOS").dropna()
    diff = (df["mos_large"] - df["mos_small"]).dropna()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    sns.histplot(long, x="MOS", hue="view", stat="density", common_norm=False, kde=True,
                 element="step", fill=False, ax=a)
    a.set_title("MOS distribution per scale")
    sns.histplot(diff, kde=True, ax=b, color="tab:purple")
    b.axvline(0, color="k", lw=0.8)
    b.set_xlabel("MOS(large) - MOS(small), per image")
    share = (diff.abs() > big_diff).mean()
    b.set_title(f"mean {diff.mean():.2f}, sd {diff.std():.2f}, |diff| > {big_diff:g}: {share:.0%}")
    fig.tight_layout()
    return fig


# ================================================================ t-SNE (LML-IQA Fig. 5)

def mos_bins(mos, bins=4) -> pd.Series:
    """Quality-score range of each value (categorical Series, ordered low to high): `bins` quantile
    bins (int) or explicit edges (sequence)."""
    mos = pd.Series(np.asarray(mos, dtype=float))
    if isinstance(bins, int):
        cats = pd.qcut(mos, q=bins, duplicates="drop", precision=1)
    else:
        cats = pd.cut(mos, bins=bins, include_lowest=True, precision=1)
    return cats.cat.rename_categories([f"{iv.left:.1f}-{iv.right:.1f}" for iv in cats.cat.categories])


def tsne_features(features, mos, bins=4, perplexity: float | None = None, random_state: int = 0,
                  title: str | None = None, n_threads: int | None = 1) -> tuple[Figure, pd.DataFrame]:
    """2-D t-SNE of quality features coloured by MOS range. features: (N, D) array or
    {model name: (N, D)} (one panel each, same MOS). Deterministic for a given random_state
    (PCA init, n_threads=1; None lets sklearn use every core). Perplexity defaults to
    min(30, (N - 1) / 3). Returns (figure, DataFrame model, x, y, mos, mos_range)."""
    sets = features if isinstance(features, Mapping) else {"features": features}
    mos = np.asarray(mos, dtype=float)
    ranges = mos_bins(mos, bins)
    frames = []
    for name, feats in sets.items():
        x = np.asarray(feats.detach().cpu() if isinstance(feats, torch.Tensor) else feats, dtype=np.float32)
        if len(x) != len(mos):
            raise ValueError(f"{name}: {len(x)} feature rows but {len(mos)} MOS values")
        perp = perplexity or max(2.0, min(30.0, (len(x) - 1) / 3))
        # one OpenMP thread: float sums in a fixed order (same map whatever the core count), and for
        # pools of ~1e3 points faster than threads that contend with other work
        with threadpool_limits(n_threads):
            xy = TSNE(2, perplexity=perp, init="pca", random_state=random_state).fit_transform(x)
        frames.append(pd.DataFrame({"model": name, "x": xy[:, 0], "y": xy[:, 1], "mos": mos, "mos_range": ranges}))
    df = pd.concat(frames, ignore_index=True)
    fig, axes = plt.subplots(1, len(sets), figsize=(5 * len(sets), 4.4), squeeze=False)
    palette = sns.color_palette("viridis", len(ranges.cat.categories))
    for ax, (name, part) in zip(axes[0], df.groupby("model", sort=False)):
        sns.scatterplot(part, x="x", y="y", hue="mos_range", palette=palette, s=18, ax=ax, linewidth=0)
        ax.set_title(name)
        ax.set_xlabel("t-SNE 1")
        ax.set_ylabel("t-SNE 2")
        ax.legend(title="MOS range", fontsize=8, title_fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig, df


# ================================================================ gMAD (LML-IQA Fig. 3)

def gmad_pairs(scores_a, scores_b, n_levels: int = 5, tol: float | None = None,
         names: tuple[str, str] = ("A", "B")) -> pd.DataFrame:
    """gMAD competition pairs (Ma et al., TPAMI 2018), both roles.

    Rule, for each defender D in (A, B) with the other model as attacker T:
      1. split D's score range [min, max] over the pool into `n_levels` equal-width bins; level k is
         the bin centre c_k (k = 0 low quality ... n_levels-1 high);
      2. candidates for level k: images with |s_D - c_k| <= tol, where tol defaults to a quarter of
         the bin width, so D scores any two candidates within half a bin of each other
         ("near-equal");
      3. the pair is the candidate the attacker scores highest and the one it scores lowest
         (maximal attacker difference among the candidates; ties -> lowest image index);
      4. a level with fewer than 2 candidates is skipped.
    Both models' scores must point the same way (higher = better quality).
    Returns one row per (defender, level): defender, attacker, level, center, tol, n_candidates,
    img_high / img_low (attacker's better / worse pick, pool indices), defender_high / defender_low,
    attacker_high / attacker_low (scores), attacker_gap.
    """
    s = {names[0]: np.asarray(scores_a, dtype=float), names[1]: np.asarray(scores_b, dtype=float)}
    if s[names[0]].shape != s[names[1]].shape:
        raise ValueError("the two score vectors must score the same pool")
    rows = []
    for defender, attacker in ((names[0], names[1]), (names[1], names[0])):
        d, t = s[defender], s[attacker]
        lo, hi = np.nanmin(d), np.nanmax(d)
        width = (hi - lo) / n_levels
        level_tol = width / 4 if tol is None else tol
        for k in range(n_levels):
            center = lo + (k + 0.5) * width
            cand = np.flatnonzero(np.abs(d - center) <= level_tol)
            if len(cand) < 2:
                continue
            i_hi, i_lo = cand[np.argmax(t[cand])], cand[np.argmin(t[cand])]
            rows.append({"defender": defender, "attacker": attacker, "level": k, "center": center,
                         "tol": level_tol, "n_candidates": len(cand), "img_high": int(i_hi), "img_low": int(i_lo),
                         "defender_high": d[i_hi], "defender_low": d[i_lo],
                         "attacker_high": t[i_hi], "attacker_low": t[i_lo], "attacker_gap": t[i_hi] - t[i_lo]})
    return pd.DataFrame(rows)


def _load_image(item, max_side: int | None = None) -> np.ndarray:
    if isinstance(item, (str, Path)):
        with Image.open(item) as im:
            im = im.convert("RGB")
            if max_side:
                im.thumbnail((max_side, max_side))
            return np.asarray(im)
    return to_uint8([item])[0]


def plot_gmad(images, table: pd.DataFrame, max_side: int = 256) -> Figure:
    """LML-IQA Fig. 3 layout: rows = defender levels, low to high; columns 1-2 = the first defender
    held fixed (second model attacks: its better / worse pick), columns 3-4 = roles reversed.
    Under each image: the attacker's score (and the defender's, in brackets).
    images: indexable by pool index -> (H, W, 3) array or image path. A table without pairs (a pool too
    small for any level to hold two near-equal images) gives a figure that says so."""
    if table.empty:
        fig, ax = plt.subplots(figsize=(6, 1.6))
        _blank(ax)
        ax.text(0.5, 0.5, "gMAD: no level holds two images the defender scores alike;\nuse a larger pool",
                ha="center", va="center")
        return fig
    defenders = list(dict.fromkeys(table["defender"]))
    levels = sorted(table["level"].unique())
    n_cols = 2 * len(defenders)
    fig, axes = plt.subplots(len(levels), n_cols, figsize=(2.4 * n_cols, 2.5 * len(levels)), squeeze=False)
    for ax in axes.flat:
        _blank(ax)
    for j, defender in enumerate(defenders):
        for _, row in table[table["defender"] == defender].iterrows():
            r = levels.index(row["level"])
            for c, side in enumerate(("high", "low")):
                ax = axes[r, 2 * j + c]
                ax.imshow(_load_image(images[int(row[f"img_{side}"])], max_side))
                ax.set_xlabel(f"{row['attacker']} {_score_text(row[f'attacker_{side}'])} "
                              f"({row['defender']} {_score_text(row[f'defender_{side}'])})", fontsize=8)
                if r == 0:
                    pick = "best" if side == "high" else "worst"
                    ax.set_title(f"{row['defender']} defends: {row['attacker']} {pick}", fontsize=9)
        for r, level in enumerate(levels):
            if j == 0:
                axes[r, 0].set_ylabel(f"level {level}", fontsize=9)
    fig.tight_layout()
    return fig


# ================================================================ dataset figures (notebook 00)

def plot_mos_histograms(frames, label: str = "label", by: str | None = "distortion") -> Figure:
    """Label histograms: one panel per dataset ({name: manifest df} or a single df); when the
    frame has several values in `by` (distortion types), a second row shows labels per type."""
    frames = frames if isinstance(frames, Mapping) else {"dataset": frames}
    with_types = {k: df for k, df in frames.items()
                  if by and by in df and df[by].dropna().nunique() > 1}
    n_rows = 2 if with_types else 1
    fig, axes = plt.subplots(n_rows, len(frames), figsize=(4.5 * len(frames), 3.6 * n_rows), squeeze=False)
    for j, (name, df) in enumerate(frames.items()):
        ax = axes[0, j]
        sns.histplot(df[label].dropna(), kde=True, ax=ax)
        direction = df["direction"].iloc[0] if "direction" in df and len(df) else ""
        ax.set_title(f"{name}: {len(df)} images")
        ax.set_xlabel(f"{label} ({direction})" if direction else label)
        if n_rows == 2:
            ax2 = axes[1, j]
            if name in with_types:
                with warnings.catch_warnings():     # seaborn 0.13 passes matplotlib's deprecated `vert`
                    warnings.simplefilter("ignore", DeprecationWarning)
                    sns.boxplot(df, x=label, y=by, ax=ax2, fliersize=2, color="tab:blue")
                ax2.tick_params(axis="y", labelsize=7)
            else:
                _blank(ax2)
    fig.tight_layout()
    return fig


def _pick_spread(df: pd.DataFrame, n: int, label: str, rng: np.random.Generator) -> list:
    """n rows spread over the label range (low to high quality), a random one per label quantile."""
    order = df.sort_values(label)
    chunks = np.array_split(np.arange(len(order)), min(n, len(order)))
    return [order.index[rng.choice(c)] for c in chunks if len(c)]


def plot_examples_per_distortion(df: pd.DataFrame, images=None, root=None, n_per_type: int = 4,
                                 max_types: int = 12, by: str = "distortion", label: str = "label",
                                 seed: int = 0, max_side: int = 192) -> Figure:
    """A few images per distortion type (rows), spread from low to high label, with label and
    level under each. images: None (read df["path"], relative to root) or indexable by the df's
    index (e.g. ImageStore images, CHW uint8). Datasets without types show one row."""
    rng = np.random.default_rng(seed)
    groups = ([(t, g) for t, g in df.groupby(by, sort=True)] if by in df and df[by].dropna().nunique() > 0
              else [("all", df)])[:max_types]
    fig, axes = plt.subplots(len(groups), n_per_type, figsize=(2.2 * n_per_type, 2.3 * len(groups)), squeeze=False)
    for ax in axes.flat:
        _blank(ax)
    for r, (name, g) in enumerate(groups):
        for c, i in enumerate(_pick_spread(g, n_per_type, label, rng)):
            ax = axes[r, c]
            if images is None:
                p = Path(df.at[i, "path"])
                item = p if root is None or p.is_absolute() else Path(root) / p
            else:
                item = images[i]
            ax.imshow(_load_image(item, max_side))
            level = df.at[i, "level"] if "level" in df and pd.notna(df.at[i, "level"]) else None
            text = f"{label} {_score_text(float(df.at[i, label]))}" + (f", level {level}" if level is not None else "")
            ax.set_xlabel(text, fontsize=8)
        axes[r, 0].set_ylabel(str(name), fontsize=9)
    fig.tight_layout()
    return fig


# ================================================================ training curves

def _run_name(rec: Mapping, i: int) -> str:
    parts = [str(rec[k]) for k in ("name", "model", "dataset") if rec.get(k) is not None]
    if rec.get("seed") is not None:
        parts.append(f"seed {rec['seed']}")
    return " / ".join(parts) or f"run {i}"


def curves_frame(records: Sequence[Mapping]) -> pd.DataFrame:
    """Long table (run, epoch, metric, value) from run records' per-epoch lists."""
    rows = []
    for i, rec in enumerate(records):
        run = _run_name(rec, i)
        for ep in rec.get("epochs", []):
            # engine records nest the evaluation: {"epoch", "lr", ..., "test": {"srcc", ...}, "val": {...}}
            flat = {**{k: v for k, v in ep.items() if not isinstance(v, Mapping)}, **ep.get("test", {})}
            for metric, value in flat.items():
                if metric != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    rows.append({"run": run, "epoch": ep["epoch"], "metric": metric, "value": value})
    return pd.DataFrame(rows, columns=["run", "epoch", "metric", "value"])


def plot_training_curves(records: Sequence[Mapping], metrics: Sequence[str] = ("srcc", "plcc")) -> Figure:
    """Per-epoch metrics (default SRCC and PLCC), one panel per metric, one line per run record."""
    df = curves_frame(records)
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.8), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        part = df[df["metric"] == metric]
        if len(part):
            sns.lineplot(part, x="epoch", y="value", hue="run", marker="o", ax=ax)
            ax.legend(fontsize=7)
        ax.set_title(metric.upper())
        ax.set_ylabel(metric.upper())
    fig.tight_layout()
    return fig


# ================================================================ sweeps as plots (notebooks 02, 03)

def plot_data_efficiency(runs: pd.DataFrame, metric: str = "srcc") -> Figure:
    """Median test metric over split seeds against the share of the training split, per method
    (one panel per dataset). runs: one row per run with method, dataset, train_fraction, metric."""
    df = runs.groupby(["method", "dataset", "train_fraction"], as_index=False)[metric].median()
    datasets = list(dict.fromkeys(df["dataset"]))
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.5 * len(datasets), 3.6), squeeze=False)
    for ax, ds in zip(axes[0], datasets):
        sns.lineplot(df[df["dataset"] == ds], x="train_fraction", y=metric, hue="method", marker="o", ax=ax)
        ax.set_title(ds)
        ax.set_xlabel("share of the training split")
        ax.set_ylabel(f"test {metric.upper()} (median)")
    fig.tight_layout()
    return fig


def plot_ablation(runs: pd.DataFrame, metric: str = "srcc") -> Figure:
    """Median test metric per ablation variant, one panel per method (rows in the order given)."""
    methods = list(dict.fromkeys(runs["method"]))
    fig, axes = plt.subplots(1, len(methods), figsize=(5.5 * len(methods), 0.5 + 0.45 * runs["variant"].nunique()),
                             squeeze=False)
    for ax, m in zip(axes[0], methods):
        part = runs[runs["method"] == m]
        med = part.groupby("variant", sort=False)[metric].median()
        ax.barh(range(len(med)), med.to_numpy(), color=sns.color_palette()[0])
        ax.set_yticks(range(len(med)), med.index)
        ax.invert_yaxis()
        ax.set_title(m)
        ax.set_xlabel(f"test {metric.upper()} (median)")
    fig.tight_layout()
    return fig
