"""DEIQT: DeiT-III ViT-S/16 encoder + attention-panel decoder (AAAI-23), built on timm.

Full size (`small`): 24,043,776 parameters without the ImageNet head. `tiny` is the same
architecture at a width and depth that trains in seconds on a CPU (smoke profile).
"""
from __future__ import annotations

import torch
from torch import nn
from timm.models.vision_transformer import VisionTransformer

from .base import IQAModel, deiqt_init_
from .registry import register_model
from .pretrained import DEIT_HUB_ID, load_encoder_weights, vit_key_map
from .proxy import SIZE as PROXY_SIZE, encoder_source

# name -> ViT arguments (timm's deit3_small_patch16_224 for `small`).
# `tiny` (smoke profile) uses 8-px patches and LayerScale 0.1, chosen when smoke trained from scratch: with
# 16-px patches and DEIQT's 1e-4 LayerScale (a value the pretrained checkpoint overwrites) a from-scratch
# tiny model barely moved in a few hundred steps on the synthetic set (test SRCC 0.32 vs 0.69). Its
# pretrained weights come from the proxy pretraining (models/proxy.py).
ENCODER_SIZES = {
    "small": dict(patch_size=16, embed_dim=384, depth=12, num_heads=6, init_values=1e-4),
    "tiny": dict(patch_size=8, embed_dim=48, depth=2, num_heads=3, init_values=0.1),
}


def build_vit(size: str, img_size: int = 224) -> VisionTransformer:
    """DeiT-III ViT: pos-embed on patches only (no_embed_class), LayerScale, no head."""
    if size not in ENCODER_SIZES:
        raise KeyError(f"unknown encoder size {size!r}; choose {sorted(ENCODER_SIZES)}")
    return VisionTransformer(img_size=img_size, num_classes=0, no_embed_class=True, qkv_bias=True,
                             mlp_ratio=4.0, **ENCODER_SIZES[size])


def float32_linear(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """A score head in float32 under autocast (a `.float()` input alone would be cast back to bf16/fp16):
    the score is a small difference of large sums, which bf16's 8 bits of mantissa blur."""
    if x.device.type not in ("cuda", "cpu") or not torch.is_autocast_enabled(x.device.type):
        return layer(x)
    with torch.autocast(x.device.type, enabled=False):
        return layer(x.float())


class PanelDecoder(nn.Module):
    """6 learnable queries + the CLS vector, one pre-norm decoder layer over patch tokens,
    a shared bias-free scorer averaged over the panel."""

    def __init__(self, dim: int, num_heads: int, num_queries: int = 6, mlp_ratio: float = 4.0):
        super().__init__()
        self.queries = nn.Parameter(torch.zeros(1, num_queries, dim))
        nn.init.trunc_normal_(self.queries, std=0.02)
        self.layer = nn.TransformerDecoderLayer(dim, num_heads, int(dim * mlp_ratio), dropout=0.0,
                                                activation="gelu", batch_first=True, norm_first=True)
        self.score = nn.Linear(dim, 1, bias=False)

    def forward(self, cls: torch.Tensor, memory: torch.Tensor, return_panel: bool = False):
        q = self.queries.expand(cls.shape[0], -1, -1) + cls.unsqueeze(1)
        panel = self.layer(q, memory)                         # (B, Q, D)
        score = float32_linear(self.score, panel).mean(dim=1).squeeze(-1)     # (B,)
        return (score, panel) if return_panel else score


class DEIQT(IQAModel):
    def __init__(self, size: str = "small", img_size: int = 224, regression: str = "smooth_l1"):
        super().__init__()
        self.input_size = img_size
        self.regression = regression
        self.encoder = build_vit(size, img_size)
        dim, heads = self.encoder.embed_dim, ENCODER_SIZES[size]["num_heads"]
        self.decoder = PanelDecoder(dim, heads)
        deiqt_init_(self)
        nn.init.trunc_normal_(self.encoder.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.encoder.cls_token, std=0.02)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(CLS (B, D), patch tokens (B, N, D)) after the final norm."""
        tok = self.encoder.forward_features(x)
        n = self.encoder.num_prefix_tokens
        return tok[:, 0], tok[:, n:]

    def forward(self, x: torch.Tensor, return_features: bool = False):
        cls, patches = self.features(x)
        score, panel = self.decoder(cls, patches, return_panel=True)
        if return_features:
            return score, {"cls": cls, "patches": patches, "panel": panel}
        return score

    def no_weight_decay(self) -> set[str]:
        return {"encoder.pos_embed", "encoder.cls_token"}

    # Grad-CAM (docs/lmliqa.md, Fig. 4): the one source of where figures take it (plots.encoder_output_target)
    def cam_points(self) -> list[tuple[nn.Module, int]]:
        """[(module, input index)]: the tokens the last encoder block hands on, what the final norm receives."""
        return [(self.encoder.norm, 0)]

    def cam_reshape(self, tokens: torch.Tensor) -> torch.Tensor:
        """ViT tokens (B, prefix + N, C) -> (B, C, gh, gw) on the patch grid, dropping the CLS."""
        return tokens_to_grid(tokens, self.encoder)


def tokens_to_grid(tokens: torch.Tensor, vit: VisionTransformer) -> torch.Tensor:
    gh, gw = vit.patch_embed.grid_size
    x = tokens[:, vit.num_prefix_tokens:]
    return x.reshape(x.shape[0], gh, gw, x.shape[-1]).permute(0, 3, 1, 2)


@register_model("deiqt", display="DEIQT")
def deiqt(cfg) -> DEIQT:
    model = DEIQT(cfg.model.size, cfg.data.crop_size, cfg.train.regression_loss)
    if cfg.model.pretrained:
        load_vit_weights(model.encoder, cfg)
    return model


def load_vit_weights(encoder: VisionTransformer, cfg):
    """The pretrained DeiT-III encoder of DEIQT and LML-IQA's student: ImageNet's (small) or the proxy
    pretraining's (tiny), strictly, the position embedding resampled to the crop size when it differs."""
    src = encoder_source(cfg, "vit_tiny", lambda: build_vit("tiny", PROXY_SIZE), DEIT_HUB_ID)
    return load_encoder_weights(encoder, src, vit_key_map(encoder))
