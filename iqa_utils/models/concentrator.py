"""CSFIQA's Information Concentrator (IC): one frozen LLaMA decoder layer between trainable maps.

What the paper says (v2, via the reviews and a summary): the IC is a frozen Llama-7B component that
"amplifies important details". Everything else here is a reconstruction (CSFIQA D16, D23) after
"Frozen Transformers in Language Models Are Effective Visual Encoder Layers" (LM4VisualEncoding):

    IC(X) = LN(W2 · RMSNorm(LLaMA_l(W1 · X)))    W1: d -> hidden, W2: hidden -> d, both bias-free

- LLaMA_l is `transformers.LlamaDecoderLayer` (never remote code), layer l = 31 of LLaMA-7B by
  default, parameters frozen (requires_grad=False) and kept in eval mode whatever `train()` says.
- RoPE is removed: the layer gets identity position embeddings (cos = 1, sin = 0).
- Attention is bidirectional: no mask is passed and the attention module's `is_causal` is set to
  False, because transformers' sdpa path otherwise falls back to a causal kernel when the mask is None.
- Norms (D16, `ic_norm`): "reference" follows LM4VisualEncoding's code, which loads only the decoder
  layers, so its final RMSNorm keeps its unit gain (it still normalises), and applies the ViT's
  LayerNorm after mapping back to d: RMSNorm(gain 1), then a trainable LayerNorm(d) after W2, so the
  decoder reads normalised tokens. "llama_final_norm" (the kit's earlier arrangement): the checkpoint's
  `model.norm` gain, no norm after W2. Whether CSFIQA does either is [unknown].
- Variants (`mode`): "llama", "llama_residual" (X + IC(X)), "trainable_block" (a small trainable
  pre-norm Transformer block at the visual width d, the ablation reviewers asked for), "off".

`load_llama_layer` reads only that layer's tensors (+ `model.norm.weight` when asked) from a sharded
safetensors checkpoint, so a 7B model is never built or downloaded whole.
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from timm.models.vision_transformer import Block
from torch import nn
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRMSNorm

from ..system import read_json
from .pretrained import HOW_TO_DOWNLOAD, WeightsError, looks_local, resolve_weights

# LLaMA-7B (v1/v2) decoder layer dimensions, for building a shape-only layer (param/MAC report).
LLAMA_7B = dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32,
                num_hidden_layers=32, rms_norm_eps=1e-6)
TINY_LLAMA = dict(hidden_size=64, intermediate_size=172, num_attention_heads=4, num_key_value_heads=4,
                  num_hidden_layers=1, rms_norm_eps=1e-6)
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _llama_config(**kw):
    cfg = LlamaConfig(**kw)
    cfg._attn_implementation = "sdpa"
    return cfg


def _make_bidirectional(layer: nn.Module) -> nn.Module:
    layer.self_attn.is_causal = False
    return layer


def _init_like_llama(layer: nn.Module, std: float) -> None:
    """LLaMA's own initialisation (transformers' LlamaPreTrainedModel._init_weights: every Linear
    N(0, initializer_range), no biases, norms at unit gain), which a bare LlamaDecoderLayer skips: built
    alone it keeps PyTorch's Linear default (uniform, ~1/sqrt(fan_in)), about 5x larger at width 64."""
    for m in layer.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=std)


def build_llama_layer(dims: dict, layer_idx: int = 0, seed: int = 0, dtype=torch.float32, device=None):
    """A LLaMA decoder layer + final RMSNorm with random weights from `seed` (smoke profile: TINY_LLAMA;
    with device="meta" and LLAMA_7B: shapes only, for the cost report).

    The smoke stand-in must act as a pretrained layer does on its residual stream: close to the identity,
    each sublayer adding a small update to what it receives (a trained LLaMA layer's update is a small
    fraction of the stream). Initialised as LLaMA is (`_init_like_llama`, std 0.02), the pre-norm
    sublayers read unit-RMS tokens and write updates of RMS ~0.03, so on the activations the smoke
    CSFIQA feeds it (W1 . tokens of a synthetic image, RMS ~0.15 at the start) its update is ~10 % of
    the input's norm (cosine 0.99; tests/test_concentrator.py). PyTorch's default init made it a random
    mixing of the tokens instead (update ~1.4x the input), which destroyed the features the IC is meant
    to concentrate (smoke: full CSFIQA below its "w/o Information Concentrator" row)."""
    cfg = _llama_config(**dims)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.device(device or "cpu"):
            layer = LlamaDecoderLayer(cfg, layer_idx)
            norm = LlamaRMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
            if device is None or str(device) != "meta":
                _init_like_llama(layer, cfg.initializer_range)
    return _make_bidirectional(layer).to(dtype), norm.to(dtype)


# ---------------------------------------------------------------------------------------------------
# partial loader
# ---------------------------------------------------------------------------------------------------
def _weight_map(source: str) -> tuple[dict, dict, callable, str]:
    """(config dict, {tensor name: shard file name}, fetch(shard) -> Path, the index file's path) of a
    local checkpoint folder or a hub repo id, through the one weights resolver (resolve_weights)."""
    source = str(source)
    if looks_local(source) and not Path(source).expanduser().is_dir():
        raise WeightsError(f"LLaMA checkpoint folder {Path(source).expanduser()} does not exist; "
                           f"{HOW_TO_DOWNLOAD}, or set csfiqa.ic_weights to it.")

    def fetch(name: str) -> Path:
        return resolve_weights(source, name)
    config = read_json(fetch("config.json"), "LLaMA config")
    try:
        index = fetch("model.safetensors.index.json")
    except WeightsError:
        single = fetch("model.safetensors")                # an unsharded checkpoint
        with safe_open(str(single), framework="pt") as f:
            return config, {k: "model.safetensors" for k in f.keys()}, fetch, str(single)
    weight_map = read_json(index, "safetensors index").get("weight_map")
    if not isinstance(weight_map, dict):
        raise WeightsError(f"{index}: no weight_map in the safetensors index")
    return config, weight_map, fetch, str(index)


def load_llama_layer(source: str, layer_idx: int = 31, dtype=torch.bfloat16, final_norm: bool = True):
    """(LlamaDecoderLayer, final LlamaRMSNorm) of `source`, a local checkpoint folder (config.json +
    model.safetensors.index.json + shards, or one model.safetensors) or a hub repo id; reads only the
    tensors of layer `layer_idx` and (final_norm) `model.norm.weight`, from only the shards that hold
    them. Without final_norm the RMSNorm keeps its unit gain, as LM4VisualEncoding's loader leaves it."""

    config, wmap, fetch, where = _weight_map(str(source))
    if config.get("model_type", "llama") != "llama":
        raise WeightsError(f"{where}: model_type {config.get('model_type')!r} is not llama")
    n_layers = config.get("num_hidden_layers")
    if n_layers is not None and not 0 <= layer_idx < n_layers:
        raise WeightsError(f"{where}: layer {layer_idx} requested but the model has {n_layers} layers")
    prefix = "model." if any(k.startswith("model.layers.") for k in wmap) else ""   # LlamaForCausalLM / LlamaModel
    cfg = LlamaConfig.from_dict(config)
    cfg._attn_implementation = "sdpa"
    with torch.device("meta"):
        layer = LlamaDecoderLayer(cfg, layer_idx)
        norm = LlamaRMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
    wanted = {f"{prefix}layers.{layer_idx}.{k}": ("layer", k) for k in layer.state_dict()}
    if final_norm:
        wanted[f"{prefix}norm.weight"] = ("norm", "weight")
    missing = [k for k in wanted if k not in wmap]
    if missing:
        raise WeightsError(f"{where} does not list {missing[:4]} (layer {layer_idx} or the final norm)")
    sds = {"layer": {}, "norm": {}}
    for shard in sorted({wmap[k] for k in wanted}):
        path = fetch(shard)
        with safe_open(str(path), framework="pt") as f:
            names = set(f.keys())
            for k, (part, name) in wanted.items():
                if wmap[k] != shard:
                    continue
                if k not in names:
                    raise WeightsError(f"{path} does not hold {k} although {where} says it does")
                sds[part][name] = f.get_tensor(k).to(dtype)
    layer.load_state_dict(sds["layer"], strict=True, assign=True)
    if not final_norm:
        sds["norm"]["weight"] = torch.ones(cfg.hidden_size, dtype=dtype)
    norm.load_state_dict(sds["norm"], strict=True, assign=True)
    return _make_bidirectional(layer), norm


# ---------------------------------------------------------------------------------------------------
# the module
# ---------------------------------------------------------------------------------------------------
class TrainableBlock(nn.Module):
    """Pre-norm Transformer block at width d (bidirectional): the IC ablation with trainable weights."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.block = Block(dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=True)

    def forward(self, x):
        return self.block(x)


class InformationConcentrator(nn.Module):
    """IC(X) on tokens (B, N, d) -> (B, N, d); see the module docstring. `layer`/`norm` come from
    `load_llama_layer` or `build_llama_layer` for the llama modes; `ic_norm` is the norm arrangement."""

    def __init__(self, dim: int, mode: str = "llama", layer: nn.Module | None = None,
                 norm: nn.Module | None = None, num_heads: int = 4, ic_norm: str = "reference"):
        super().__init__()
        self.mode = mode
        if mode.startswith("llama"):
            if layer is None:
                raise ValueError("the llama IC modes need a LLaMA layer (load_llama_layer / build_llama_layer)")
            hidden = layer.hidden_size
            self.w1 = nn.Linear(dim, hidden, bias=False)
            self.w2 = nn.Linear(hidden, dim, bias=False)
            self.llama = layer
            self.llama_norm = norm if norm is not None else nn.Identity()
            if ic_norm == "reference":
                if norm is not None:
                    with torch.no_grad():
                        norm.weight.fill_(1.0)          # unit gain: LM4VisualEncoding never loads model.norm
                self.out_norm = nn.LayerNorm(dim, eps=1e-6)
            else:
                self.out_norm = nn.Identity()
            for p in list(self.llama.parameters()) + list(self.llama_norm.parameters()):
                p.requires_grad_(False)
            self.llama.eval()
            self.llama_norm.eval()
        elif mode == "trainable_block":
            self.block = TrainableBlock(dim, num_heads)

    def train(self, mode: bool = True):
        super().train(mode)
        if hasattr(self, "llama"):          # the frozen layer never leaves eval mode (no dropout drift)
            self.llama.eval()
            self.llama_norm.eval()
        return self

    @property
    def frozen_dtype(self):
        return next(self.llama.parameters()).dtype if hasattr(self, "llama") else None

    def keep_float32(self) -> None:
        """The frozen layer in float32, run outside autocast: on cards without bf16 (T4, V100) amp is
        fp16, whose range (65504) the 7B layer's activations can exceed."""
        if hasattr(self, "llama"):
            self.llama.float()
            self.llama_norm.float()

    def _llama(self, h: torch.Tensor) -> torch.Tensor:
        dt = self.frozen_dtype
        h = h.to(dt)
        b, n, _ = h.shape
        head_dim = self.llama.self_attn.head_dim
        # identity rotary embedding = RoPE removed
        cos = torch.ones(b, n, head_dim, device=h.device, dtype=dt)
        sin = torch.zeros(b, n, head_dim, device=h.device, dtype=dt)
        out = self.llama(h, attention_mask=None, position_embeddings=(cos, sin), is_causal=False)
        out = out[0] if isinstance(out, tuple) else out
        return self.llama_norm(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "off":
            return x
        if self.mode == "trainable_block":
            return self.block(x)
        if self.frozen_dtype == torch.float32 and x.device.type in ("cuda", "cpu"):
            with torch.autocast(x.device.type, enabled=False):     # a float32 layer stays float32, maps too
                y = self._mapped(x.float())
        else:
            y = self._mapped(x)
        return x + y if self.mode == "llama_residual" else y

    def _mapped(self, x: torch.Tensor) -> torch.Tensor:
        h = self._llama(self.w1(x))
        return self.out_norm(self.w2(h.to(self.w2.weight.dtype)))


# csfiqa.ic_weights value for a LLaMA-7B layer of the real shape with random weights (nothing read)
RANDOM_WEIGHTS = "random"


def build_concentrator(dim: int, mode: str = "llama", *, weights: str | None = None, layer_idx: int = 31,
                       tiny: bool = True, dtype: str = "auto", num_heads: int = 4, seed: int = 0,
                       device=None, ic_norm: str = "reference") -> InformationConcentrator:
    """The IC a config asks for. llama modes: `weights` (folder or hub id) -> the real layer; else a tiny
    random layer when `tiny` (smoke); else a WeightsError saying how to get the weights.
    dtype "auto": bfloat16 for real weights (the 202M frozen parameters, ~0.4 GB), float32 for the tiny layer."""
    if not mode.startswith("llama"):
        return InformationConcentrator(dim, mode, num_heads=num_heads)
    if dtype == "auto":
        dtype = "bfloat16" if weights else "float32"
    dt = _DTYPES[dtype]
    if weights == RANDOM_WEIGHTS:                    # the real shape, random: benchmarks, memory estimates
        layer, norm = build_llama_layer(LLAMA_7B, layer_idx, seed, dtype=dt, device=device)
    elif weights:
        layer, norm = load_llama_layer(weights, layer_idx, dtype=dt, final_norm=ic_norm == "llama_final_norm")
    elif device is not None and str(device) == "meta":
        layer, norm = build_llama_layer(LLAMA_7B, layer_idx, dtype=dt, device="meta")
    elif tiny:
        layer, norm = build_llama_layer(TINY_LLAMA, 0, seed=seed, dtype=dt)
    else:
        raise WeightsError(f"csfiqa.ic_weights: csfiqa.ic={mode!r} at full size needs the LLaMA-7B weights; "
                           f"{HOW_TO_DOWNLOAD} (a folder with config.json, the index and the shards).")
    return InformationConcentrator(dim, mode, layer, norm, ic_norm=ic_norm)
