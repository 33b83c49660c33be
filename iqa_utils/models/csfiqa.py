"""CSFIQA (arXiv 2411.09007, v2): CrossViT encoder + scale contrastive learning (SCL) with noise
sample matching (NSM) + scale-focused attention (SFA = AFS top-k attention + Information Concentrator)
+ a DEIQT attention-panel decoder.

No official code exists. Known from the paper's captions and reviews: a pretrained CrossViT, SCL on
layer-l features of two scales with label-distance positives/negatives (gamma 0.2 / 0.7, InfoNCE), NSM
on same-image cross-scale discrepancies, AFS keeping the top-k attention scores, a frozen Llama-7B
component as the IC, 233M params / 45G MACs. Everything else is a reconstruction, exposed as a
`CSFIQAConfig` field (decision ids D1-D24 of docs/csfiqa.md):

- scale_mode (D4): "branch" - CrossViT's 12-px branch is the small scale, its 16-px branch the large
  one; "crop" - a 0.2 and a 0.4 image-side crop, each resized to the input size and encoded by the whole
  CrossViT (the scale's tokens are the 16-px branch of that crop); "crop_per_branch" - small crop into
  the 12-px branch, large crop into the 16-px branch, one pass; "single" - the large (16-px) branch
  encoded alone (its own blocks and norm; the small branch and the fusion are not run). In the crop
  modes the small training crop lies inside the large one (crop_nesting, D4), as the test views do.
- SCL features (D5, D6): per scale, the mean patch token after multi-scale block l of the scale's branch
  run alone (no cross-branch fusion), or the CLS / mean patch token of the joint pass (before the final
  norm); 2-layer MLP projector, L2 norm. NSM (D13): pooled pair, region-level InfoNCE, or QFM weights.
- SFA (D14, D15, D17): pre-norm multi-head self-attention with top-k masking over the joint tokens of
  both scales (small tokens linearly mapped to the large width), then the IC on the large-scale tokens;
  the decoder reads the IC output (memory = its patch tokens, query CLS = its CLS token).
- decoder (D18): DEIQT's PanelDecoder at the large width, or a linear head on that CLS.
"""
from __future__ import annotations

import math
from dataclasses import replace

import timm
import torch
import torch.nn.functional as F
from timm.models.crossvit import CrossVit
from torch import nn

from . import losses
from .base import IQAModel, TestCrops, regression_loss
from .concentrator import build_concentrator
from .deiqt import PanelDecoder, float32_linear
from .pretrained import LLAMA_HUB_ID, crossvit_hub_id, fit_pos_embed, load_encoder_weights, weights_source
from .proxy import SIZE as PROXY_SIZE
from .proxy import encoder_source
from .registry import register_model

# tiny: the same 3 x MultiScaleBlock structure as crossvit_small_240 (two branches, width 1:2, CLS
# cross-attention), narrow enough to train in seconds on a CPU. Its small branch cuts 8-px patches (a 12x12
# grid at 96 px, as DEIQT-tiny's): with 12-px patches CSFIQA-tiny stayed near chance on some splits
# (validation SRCC over split seeds 0-2, docs/datasets.md: 0.20 median with 12/16 px, 0.35 with 8/16)
TINY_CROSSVIT = dict(patch_size=[8, 16], embed_dim=[32, 64], depth=[[1, 1, 0]] * 3, num_heads=[2, 2],
                     mlp_ratio=[2, 2, 1])


# ---------------------------------------------------------------------------------------------------
# encoder
# ---------------------------------------------------------------------------------------------------
def branch_sizes(input_size: int, patch: tuple[int, int] = (12, 16)) -> tuple[int, int]:
    """Image side each branch sees (the crop is resized to it): the multiple of the small branch's patch
    nearest to the input, the multiple of the large branch's patch nearest to input * 224/240 (timm's
    img_scale): 240 -> (240, 224) as in timm, 224 -> (228, 208) (D3); tiny's 8/16 px at 96 -> (96, 96)."""
    p0, p1 = patch
    return p0 * max(1, round(input_size / p0)), p1 * max(1, round(input_size * 224 / 240 / p1))


def build_crossvit(size: str, encoder: str = "crossvit_small_240", input_size: int = 240):
    s0, s1 = branch_sizes(input_size, TINY_CROSSVIT["patch_size"] if size == "tiny" else (12, 16))
    scale = (1.0, (s1 + 0.5) / s0)            # +0.5: timm floors int(size * scale)
    if size == "tiny":
        enc = CrossVit(img_size=s0, img_scale=scale, num_classes=0, qkv_bias=True, **TINY_CROSSVIT)
    elif size == "small":
        enc = timm.create_model(encoder.split(".")[0], pretrained=False, num_classes=0, img_size=s0,
                                img_scale=scale)
    else:
        raise KeyError(f"unknown CSFIQA size {size!r}; choose tiny or small")
    assert [tuple(p.img_size) for p in enc.patch_embed] == [(s0, s0), (s1, s1)], enc.img_size_scaled
    return enc


def crossvit_key_map(encoder: nn.Module):
    """timm hub CrossViT names -> CrossVit attributes (pos_embed.0 -> pos_embed_0, as timm's own loader
    renames them), head dropped, position embeddings resampled (timm's resample_abs_pos_embed) when the
    input size differs from 240 (D3). Any other mismatch is left for the strict loader to report."""
    own = encoder.state_dict()

    def key_map(sd):
        out = {}
        for k, v in sd.items():
            if k.startswith("head."):
                continue
            if "pos_embed" in k or "cls_token" in k:
                k = k.replace(".", "_")
            if k.startswith("pos_embed_") and k in own:
                v = fit_pos_embed(v, own[k])
            out[k] = v
        return out
    return key_map


# ---------------------------------------------------------------------------------------------------
# SFA: adaptive filtering selector (top-k attention)
# ---------------------------------------------------------------------------------------------------
def topk_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keep: int | None,
                   return_weights: bool = False):
    """softmax(TopK(QK^T / sqrt(d))) V over (..., N, d): per query, scores outside the `keep` largest are
    set to -inf before the softmax (keep=None or >= N: dense attention).

    Computed by PyTorch's scaled-dot-product attention with a boolean mask of the kept keys (fused
    kernels on CUDA; flash attention when dense). The mask is a selection made without gradient; the
    gradient flows through the kept scores as in the explicit formula, which return_weights uses."""
    n = k.shape[-2]
    mask = None
    if keep is not None and keep < n:
        with torch.no_grad():
            s = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5
            mask = s >= s.topk(keep, dim=-1).values[..., -1:]     # ties with the keep-th score are kept
    if not return_weights:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    s = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5
    a = (s if mask is None else s.masked_fill(~mask, float("-inf"))).softmax(-1)
    return a @ v, a


class SelectiveAttention(nn.Module):
    """AFS (D15): x + Proj(TopKAttention(LN(x))), keeping ceil(ratio * N) keys per query."""

    def __init__(self, dim: int, num_heads: int, keep_ratio: float = 0.5):
        super().__init__()
        self.num_heads, self.keep_ratio = num_heads, keep_ratio
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def keep(self, n: int) -> int:
        return max(1, min(n, math.ceil(self.keep_ratio * n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(self.norm(x)).view(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        out = topk_attention(qkv[0], qkv[1], qkv[2], self.keep(n))
        return x + self.proj(out.transpose(1, 2).reshape(b, n, c))


def _projector(d_in: int, d_out: int) -> nn.Module:
    if d_out <= 0:                      # D6 "no projector" (the small scale then gets a width map, see __init__)
        return nn.Identity()
    return nn.Sequential(nn.Linear(d_in, d_in), nn.GELU(), nn.Linear(d_in, d_out))


# ---------------------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------------------
def _forget_host_steps(model, _incompatible) -> None:
    """After a state-dict load the step count is the checkpoint's: read it again when next needed."""
    model._steps = None


class CSFIQA(IQAModel):
    def __init__(self, csfiqa, size: str = "tiny", regression: str = "smooth_l1", device=None):
        super().__init__()
        self.csfiqa, self.size, self.regression = csfiqa, size, regression
        self.input_size = csfiqa.input_size
        self.label_range = None            # set by the caller for label_distance='dataset_range'
        self.steps_per_epoch = None        # set by the engine: NSM's warm-up is counted in epochs (D13)
        # optimizer steps taken (NSM warm-up); a buffer, so a resumed run goes on from its checkpoint.
        # `_steps` mirrors it on the host (read back once after a load), so no step waits on the device.
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))
        self._steps = 0
        self.register_load_state_dict_post_hook(_forget_host_steps)
        self.encoder = build_crossvit(size, csfiqa.encoder, csfiqa.input_size)
        enc = self.encoder
        d0, d1 = enc.embed_dim
        heads = enc.blocks[0].blocks[1][0].attn.num_heads      # the large branch's heads
        self.grids = [tuple(s // p for s, p in zip(pe.img_size, pe.patch_size)) for pe in enc.patch_embed]
        # which encoder branch gives each scale's tokens
        crop = csfiqa.scale_mode == "crop"
        self.d_small = d1 if crop else d0
        self.dim = d1
        two = csfiqa.scale_mode != "single"
        self.to_common = (nn.Linear(self.d_small, d1) if self.d_small != d1 else nn.Identity()) if two else None
        self.afs = self._build_afs(d1, heads, joint=csfiqa.afs_scope == "joint" or not two)
        self.ic = build_concentrator(d1, csfiqa.ic, weights=csfiqa.ic_weights, layer_idx=csfiqa.ic_layer,
                                     tiny=size == "tiny", dtype=csfiqa.ic_dtype, num_heads=heads, device=device,
                                     ic_norm=csfiqa.ic_norm)
        self.decoder = PanelDecoder(d1, heads) if csfiqa.decoder == "panel" else nn.Linear(d1, 1)
        self.proj_large = _projector(d1, csfiqa.proj_dim)
        self.proj_small = (_projector(self.d_small, csfiqa.proj_dim) if csfiqa.proj_dim > 0 else
                           (nn.Linear(self.d_small, d1, bias=False) if self.d_small != d1 else nn.Identity())) \
            if two else None
        if not two:
            self._freeze_small_branch()
        self._init_new_modules()

    def _build_afs(self, dim: int, heads: int, joint: bool) -> nn.Module:
        """D15: top-k selective attention, the same layer dense ("w/o AFS"), or none ("off", identity)."""
        if self.csfiqa.afs == "off":
            return nn.Identity()
        ratio = self.csfiqa.afs_k if self.csfiqa.afs == "topk" else 1.0
        if joint:
            return SelectiveAttention(dim, heads, ratio)
        return nn.ModuleList([SelectiveAttention(dim, heads, ratio), SelectiveAttention(dim, heads, ratio)])

    def _freeze_small_branch(self):
        """Single scale: only the large branch's own parts (patch embedding, CLS, position embedding,
        Transformer blocks, norm) are trained; the rest of CrossViT stays in the module, so that a
        checkpoint still loads strictly, but gets no gradient and no update."""
        enc = self.encoder
        enc.requires_grad_(False)
        for mod in [enc.patch_embed[1], enc.norm[1], *[blk.blocks[1] for blk in enc.blocks]]:
            mod.requires_grad_(True)
        enc.cls_token_1.requires_grad_(True)
        enc.pos_embed_1.requires_grad_(True)

    def _init_new_modules(self):
        """trunc-normal(0.02) on the modules CSFIQA adds (as DEIQT and timm do); the encoder keeps timm's
        init (or the checkpoint), the frozen LLaMA layer its weights."""
        mods = [self.to_common, self.afs, self.decoder, self.proj_large, self.proj_small]
        if self.csfiqa.ic != "off" and self.csfiqa.ic.startswith("llama"):
            mods += [self.ic.w1, self.ic.w2]
        for mod in mods:
            if mod is None:
                continue
            for m in mod.modules():
                if isinstance(m, nn.Linear) and m.weight.device.type != "meta":
                    nn.init.trunc_normal_(m.weight, std=0.02)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)

    # ---- encoder ----------------------------------------------------------------------------------
    def _embed_branch(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Branch i's input tokens (CLS + patches + position embedding); x is resized to its image size."""
        enc, pe = self.encoder, self.encoder.patch_embed[i]
        if x.shape[-2:] != pe.img_size:
            x = F.interpolate(x, size=pe.img_size, mode="bicubic", align_corners=False)
        t = pe(x)
        cls = getattr(enc, f"cls_token_{i}").expand(t.shape[0], -1, -1)
        return enc.pos_drop(torch.cat([cls, t], 1) + getattr(enc, f"pos_embed_{i}"))

    def _crossvit(self, x0: torch.Tensor, x1: torch.Tensor | None = None):
        """Per-block outputs [[branch0, branch1], ...] (pre-norm, with CLS) and the final normed tokens."""
        xs = [self._embed_branch(0, x0), self._embed_branch(1, x0 if x1 is None else x1)]
        blocks = []
        for blk in self.encoder.blocks:
            xs = blk(xs)
            blocks.append(xs)
        final = [norm(t) for norm, t in zip(self.encoder.norm, xs)]
        return blocks, final

    def _branch_blocks(self, i: int, x: torch.Tensor, upto: int) -> list[torch.Tensor]:
        """Branch i's tokens after each multi-scale block up to `upto`, the other branch cut off."""
        t, out = self._embed_branch(i, x), []
        for blk in self.encoder.blocks[:upto + 1]:
            t = blk.blocks[i](t)
            out.append(t)
        return out

    def branch_alone(self, i: int, x: torch.Tensor, upto: int) -> torch.Tensor:
        """Branch i's tokens after multi-scale block `upto` with the other branch cut off: each block's
        own Transformer blocks of branch i, no CLS fusion. In the joint pass only the CLS tokens are
        fused, but the patch tokens of every later block attend to that CLS, so they carry the other
        branch from the second block on; these do not (SCL's scale-pure features, D6)."""
        return self._branch_blocks(i, x, upto)[-1]

    def _views(self, x):
        """(small view, large view) for the crop modes. A 5-D (B, 2, 3, S, S) batch holds both; a plain
        (B, 3, S, S) batch (the engine's test crops) is taken as the large view and its centre half
        (0.2 / 0.4 of the side) resized to S as the small one - a reconstruction for test time (D4)."""
        if isinstance(x, (tuple, list)):
            return x[0], x[1]
        if x.dim() == 5:
            return x[:, 0], x[:, 1]
        s = x.shape[-1]
        r = self.csfiqa.crop_ratio_small / self.csfiqa.crop_ratio_large
        side = max(1, round(s * r))
        o = (s - side) // 2
        small = F.interpolate(x[..., o:o + side, o:o + side], size=(s, s), mode="bicubic", align_corners=False)
        return small, x

    def scale_views(self, x) -> tuple:
        """(small view, large view): the two scales' inputs. branch/single: the crop itself for both (a
        pair (x0, x1) feeds each branch its own input); crop modes: see `_views`."""
        if self.csfiqa.scale_mode in ("branch", "single"):
            return tuple(x) if isinstance(x, (tuple, list)) else (x, x)
        return self._views(x)

    def encode(self, x) -> dict:
        """Token features per scale: 'blocks_small'/'blocks_large' (per block, pre-norm, CLS first),
        'small'/'large' (final, normed), 'grid_small'/'grid_large'."""
        mode = self.csfiqa.scale_mode
        xs, xl = self.scale_views(x)
        if mode == "single":           # the large branch alone: no small patch embedding, no fusion (D4)
            bl = self._branch_blocks(1, xl, len(self.encoder.blocks) - 1)
            return {"blocks_large": bl, "large": self.encoder.norm[1](bl[-1]), "grid_large": self.grids[1]}
        if mode != "crop":                                   # one pass: branch 0 = small, branch 1 = large
            blocks, final = self._crossvit(xs, xl)
            bs, bl, fs, fl, gs, gl = [b[0] for b in blocks], [b[1] for b in blocks], final[0], final[1], \
                self.grids[0], self.grids[1]
        else:   # crop: both crops through the whole encoder in one batch; a scale = the 16-px branch of its crop
            blocks, final = self._crossvit(torch.cat([xs, xl]))
            b = xs.shape[0]
            bs, bl = [t[1][:b] for t in blocks], [t[1][b:] for t in blocks]
            fs, fl, gs, gl = final[1][:b], final[1][b:], self.grids[1], self.grids[1]
        return {"blocks_large": bl, "large": fl, "grid_large": gl, "blocks_small": bs, "small": fs,
                "grid_small": gs}

    # ---- SFA + decoder ----------------------------------------------------------------------------
    def sfa(self, small: torch.Tensor | None, large: torch.Tensor):
        """AFS then IC. Returns (query CLS (B, D), decoder memory (B, M, D), joint tokens before, after).
        The decoder reads the large-scale tokens after the joint AFS (ic_tokens="large"), or both scales'
        tokens (the mean of the two CLS as query) when the IC takes all of them, or when AFS is off."""
        csfiqa = self.csfiqa
        if small is None:                                   # single scale
            pre = large
            large = self.ic(self.afs(large)) if csfiqa.ic_tokens != "cls" else self._ic_cls(self.afs(large))
            return large[:, 0], large[:, 1:], pre, large
        small = self.to_common(small)
        ns = small.shape[1]
        pre = torch.cat([small, large], 1)
        if isinstance(self.afs, nn.ModuleList):
            small, large = self.afs[0](small), self.afs[1](large)
        else:
            j = self.afs(pre)
            small, large = j[:, :ns], j[:, ns:]
        if csfiqa.ic_tokens == "large":
            post = torch.cat([small, self.ic(large)], 1)
            if csfiqa.afs != "off":
                return post[:, ns], post[:, ns + 1:], pre, post
            # afs="off": nothing has brought the small scale into the large tokens, so the decoder
            # reads both scales' tokens (as ic_tokens="all" does); else the small scale would be lost
        elif csfiqa.ic_tokens == "all":
            post = self.ic(torch.cat([small, large], 1))
        else:                                               # cls: only the two CLS tokens go through the IC
            cls = self.ic(torch.stack([small[:, 0], large[:, 0]], 1))
            post = torch.cat([cls[:, :1], small[:, 1:], cls[:, 1:], large[:, 1:]], 1)
        cls = (post[:, 0] + post[:, ns]) / 2
        memory = torch.cat([post[:, 1:ns], post[:, ns + 1:]], 1)
        return cls, memory, pre, post

    def _ic_cls(self, t):
        return torch.cat([self.ic(t[:, :1]), t[:, 1:]], 1)

    def head(self, cls, memory):
        if isinstance(self.decoder, PanelDecoder):
            return self.decoder(cls, memory)
        return float32_linear(self.decoder, cls).squeeze(-1)

    def _forward(self, x):
        e = self.encode(x)
        cls, memory, pre, post = self.sfa(e.get("small"), e["large"])
        return self.head(cls, memory), cls, e, pre, post

    def forward(self, x, return_features: bool = False):
        score, cls, e, pre, post = self._forward(x)
        if not return_features:
            return score
        feats = {"cls": cls, "large": e["large"][:, 1:], "pre_sfa": pre, "post_sfa": post,
                 "grid_large": e["grid_large"]}
        if "small" in e:
            feats.update({"small": e["small"][:, 1:], "grid_small": e["grid_small"]})
        return score, feats

    # ---- training ---------------------------------------------------------------------------------
    def train_batch(self, sampler, idx, y, generator):
        csfiqa, s = self.csfiqa, self.input_size
        if csfiqa.scale_mode in ("branch", "single"):
            return super().train_batch(sampler, idx, y, generator)
        if csfiqa.crop_nesting == "nested":  # the small crop inside the large one, as at test time (D4)
            xs, xl, _ = sampler.nested_crops(idx, csfiqa.crop_ratio_small, csfiqa.crop_ratio_large, s,
                                             flip=self.flip, generator=generator)
        else:
            xs = sampler.resized_crops(idx, csfiqa.crop_ratio_small, s, flip=self.flip, generator=generator)
            xl = sampler.resized_crops(idx, csfiqa.crop_ratio_large, s, flip=self.flip, generator=generator)
        return {"x": torch.stack([xs, xl], 1), "y": y.to(xl.device, non_blocking=True), "idx": idx}

    def test_views(self, sampler, idx, crops: TestCrops):
        """Crop modes: the training geometry at test time (D4), seeded per image: a 40 % crop resized to the
        input size and a 20 % one inside it (crop_nesting); branch/single: the base class's crops."""
        csfiqa = self.csfiqa
        if csfiqa.scale_mode in ("branch", "single"):
            return super().test_views(sampler, idx, crops)
        return sampler.nested_test_crops(idx, crops.n, csfiqa.crop_ratio_small, csfiqa.crop_ratio_large,
                                         crops.size, mode=crops.mode, seed=crops.seed,
                                         nested=csfiqa.crop_nesting == "nested")

    def _scl_layer(self) -> int:
        n = len(self.encoder.blocks)
        if self.csfiqa.scl_layer == "last":
            return n - 1
        if self.csfiqa.scl_layer == "middle":
            return n // 2
        return int(self.csfiqa.scl_layer)

    def scl_tokens(self, e: dict, views: tuple):
        """(small, large) tokens (CLS first) of SCL layer l (D5); small is None in single mode.
        branch_patch_mean: each scale's branch run alone on its view (`branch_alone`); else the joint
        pass's block outputs."""
        li, mode = self._scl_layer(), self.csfiqa.scale_mode
        if self.csfiqa.scl_pool != "branch_patch_mean" or mode == "single":    # single: encoded alone already
            return (e["blocks_small"][li] if "blocks_small" in e else None), e["blocks_large"][li]
        small_branch = 1 if mode == "crop" else 0           # crop: each scale is the 16-px branch of its crop
        return self.branch_alone(small_branch, views[0], li), self.branch_alone(1, views[1], li)

    def _pool(self, t):
        return t[:, 0] if self.csfiqa.scl_pool == "cls" else t[:, 1:].mean(1)

    def scl_embeddings(self, e: dict, views: tuple):
        """L2-normalised (B, P) embeddings of both scales (small is None in single mode), and the tokens."""
        ts, tl = self.scl_tokens(e, views)
        zl = F.normalize(self.proj_large(self._pool(tl)).float(), dim=-1)
        zs = None if ts is None else F.normalize(self.proj_small(self._pool(ts)).float(), dim=-1)
        return zs, zl, (ts, tl)

    def region_embeddings(self, e: dict, ts, tl):
        """Projected, L2-normalised region embeddings (B, R, P) of both scales on the common grid."""
        rs, rl = losses.align_grids(ts[:, 1:], tl[:, 1:], e["grid_small"], e["grid_large"])
        return F.normalize(self.proj_small(rs).float(), dim=-1), F.normalize(self.proj_large(rl).float(), dim=-1)

    def after_step(self) -> None:
        self.steps_done += 1
        self._steps = self.steps_taken() + 1

    def steps_taken(self) -> int:
        if self._steps is None:                   # after a load: the checkpoint's count, read once
            self._steps = int(self.steps_done.item())
        return self._steps

    def nsm_started(self) -> bool:
        """NSM selects noise after nsm_warmup_epochs of steps (D13); without an epoch length (a model
        used outside the engine) it starts at once."""
        w = self.csfiqa.nsm_warmup_epochs
        return not w or self.steps_per_epoch is None or self.steps_taken() >= w * self.steps_per_epoch

    def nsm_args(self, emb: dict, meta: dict) -> dict:
        """The NSM (D13) keyword arguments of `losses.scl_loss`, from the embeddings (and, for regional
        NSM on tokens, the region agreement) of the whole set; before the warm-up ends nothing is noise."""
        kind, zs, zl, on = self.csfiqa.nsm, emb.get("zs"), emb["zl"], self.nsm_started()
        if kind == "off" or zs is None:
            return {}
        if kind == "pooled":
            return {"noise": losses.nsm_pooled(zs, zl) if on else zs.new_zeros(len(zs))}
        if kind == "qfm":
            return {"qfm_weight": self.csfiqa.nsm_weight if on else 1.0}
        rs, rl = emb["rs"], emb["rl"]
        weight, hard = self.noise_regions(rs, rl, meta.get("agreement"))
        if not on:
            weight, hard = torch.zeros_like(weight), torch.zeros_like(hard)
        return {"noise": weight} if kind == "regional_weight" else {"regions": (rs, rl, hard)}

    def noise_regions(self, rs, rl, agreement):
        """Regional NSM's selection (D13, nsm_input) over the whole set: on the cross-scale agreement of
        the detached SCL-layer tokens before the projectors (`step_terms` measures it per chunk), or on
        the projected region embeddings rs, rl."""
        if self.csfiqa.nsm_input == "projected":
            return losses.nsm_regional(rs, rl, self.csfiqa.nsm_quantile)
        return losses.noise_regions(agreement, self.csfiqa.nsm_quantile)

    def has_set_loss(self) -> bool:
        return self.csfiqa.scl and self.csfiqa.lam != 0

    def step_terms(self, batch: dict):
        """Regression on the chunk's crops; SCL's embeddings (both scales, NSM's regions) for the set, and
        the per-sample data the set needs (labels; regional NSM's detached token agreement)."""
        score, _, e, _, _ = self._forward(batch["x"])
        reg = regression_loss(score, batch["y"], self.regression)
        if not self.has_set_loss():
            return reg, {}, {}, {"loss_reg": reg.detach()}
        zs, zl, tokens = self.scl_embeddings(e, self.scale_views(batch["x"]))
        emb = {"zl": zl} if zs is None else {"zl": zl, "zs": zs}
        meta = {"y": batch["y"].float()}
        if zs is not None and self.csfiqa.nsm in ("regional", "regional_weight"):
            emb["rs"], emb["rl"] = self.region_embeddings(e, *tokens)
            if self.csfiqa.nsm_input == "tokens":
                ts, tl = losses.align_grids(tokens[0][:, 1:], tokens[1][:, 1:], e["grid_small"], e["grid_large"])
                meta["agreement"] = losses.region_agreement(ts, tl)
        return reg, emb, meta, {"loss_reg": reg.detach()}

    def set_loss(self, emb: dict, meta: dict):
        """lam * L_SCL over the step's sets (csfiqa.set_size: the whole global batch, or its consecutive
        groups of that size, as per-GPU sets), in float32."""
        n = self.csfiqa.set_size
        sets = torch.arange(len(meta["y"]), device=meta["y"].device) // n if n else None
        return losses.over_sets(self._scl, emb, meta, sets)

    def _scl(self, emb: dict, meta: dict):
        csfiqa = self.csfiqa
        with losses.float32(emb["zl"]):
            emb = {k: v.float() for k, v in emb.items()}
            scl, logs = losses.scl_loss(emb.get("zs"), emb["zl"], meta["y"], gamma1=csfiqa.gamma1,
                                        gamma2=csfiqa.gamma2, tau=csfiqa.tau, alpha=csfiqa.alpha, beta=csfiqa.beta,
                                        distance=csfiqa.label_distance, label_range=self.label_range,
                                        infonce=csfiqa.infonce, **self.nsm_args(emb, meta))
        logs["loss_scl"] = scl.detach()
        return csfiqa.lam * scl, logs

    def fit_precision(self, dtype) -> None:
        """fp16 autocast (cards without bf16): the frozen LLaMA layer in float32 unless csfiqa.ic_dtype
        names a dtype (its ~0.8 GB, counted by the memory estimate, which measures the model as built)."""
        if dtype == torch.float16 and self.csfiqa.ic_dtype == "auto" and hasattr(self.ic, "llama"):
            self.ic.keep_float32()

    def source_state_keys(self) -> set[str]:
        """The frozen LLaMA layer and its norm: read again from ic_weights (or, tiny, rebuilt from its seed)."""
        return {f"ic.{k}" for k in self.ic.state_dict() if k.startswith(("llama.", "llama_norm."))}

    def no_weight_decay(self) -> set[str]:
        return {f"encoder.{n}" for n in ("cls_token_0", "cls_token_1", "pos_embed_0", "pos_embed_1")}

    # ---- Grad-CAM ---------------------------------------------------------------------------------
    def cam_points(self) -> list[tuple[nn.Module, int]]:
        """[(module, input index)]: the large (16-px) branch's final tokens, what its final norm receives
        (the same kind of point as DEIQT's; plots.encoder_output_target)."""
        return [(self.encoder.norm[1], 0)]

    def cam_reshape(self, tokens: torch.Tensor) -> torch.Tensor:
        h, w = self.grids[1]
        if tokens.shape[1] == h * w + 1:
            tokens = tokens[:, 1:]
        return tokens.reshape(tokens.shape[0], h, w, -1).permute(0, 3, 1, 2)


@register_model("csfiqa", display="CSFIQA")
def csfiqa(cfg) -> CSFIQA:
    csfiqa = cfg.csfiqa
    if csfiqa.ic.startswith("llama") and cfg.model.size != "tiny" and not csfiqa.ic_weights:
        csfiqa = replace(csfiqa, ic_weights=weights_source(LLAMA_HUB_ID))     # the kit's default LLaMA-7B source
    model = CSFIQA(csfiqa, cfg.model.size, cfg.train.regression_loss)
    if cfg.model.pretrained:      # ImageNet's CrossViT (small) or the proxy pretraining's (tiny)
        src = encoder_source(cfg, "crossvit_tiny", lambda: build_crossvit("tiny", csfiqa.encoder, PROXY_SIZE),
                             crossvit_hub_id(csfiqa.encoder))
        load_encoder_weights(model.encoder, src, crossvit_key_map(model.encoder))
    return model
