"""Run configuration: one dataclass tree, three profiles, and every undecided paper detail as a field.

A field whose value the papers do not fix carries metadata:
    decision    the id used in ../shared/reference (e.g. "CSFIQA D15")
    source      where the default comes from ("paper", "reviews", "DEIQT code", "kit default", ...)
    choices     the alternatives a reader can switch to
`decisions_table()` walks the tree and lists them, so a reader with the PDF can change one line.

Override any field by its dotted name: `override(cfg, {"csfiqa.tau": 0.2})`.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any


def decision(default, *, id: str, source: str, choices=(), doc: str = ""):
    """A config field whose value the papers leave open (or that the kit chose)."""
    meta = {"decision": id, "source": source, "choices": list(choices), "doc": doc}
    if isinstance(default, (list, dict, tuple)):
        return field(default_factory=lambda d=default: copy.deepcopy(d), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class DataConfig:
    dataset: str = "synthetic"
    data_root: str | None = None          # folder holding the datasets' release folders (paper profile)
    split_ratio: float = 0.8              # train share of the split units (DEIQT: 80/20)
    train_fraction: float = 1.0           # data-efficient runs keep this share of the training units
    val_fraction: float = decision(
        0.0, id="kit F1", source="kit default",
        choices=[0.0, 0.1], doc="share of the training units carved out as validation for model selection")
    resize_mode: str = decision(
        "keep_aspect", id="DEIQT F3", source="kit default",
        choices=["keep_aspect", "deiqt_parity"],
        doc="deiqt_parity squashes KonIQ/SPAQ to H512xW384 as DEIQT's loaders do")
    crop_size: int = 224
    crops_train: int = decision(10, id="CSFIQA D21", source="DEIQT YAMLs (PATCH_NUM)", choices=[10, 25])
    crops_test: int = decision(10, id="CSFIQA D21", source="DEIQT YAMLs (PATCH_NUM)", choices=[10, 25])
    test_crops: str = decision(
        "seeded_random", id="DEIQT F5", source="kit default",
        choices=["seeded_random", "grid", "random"],
        doc="DEIQT draws unseeded random test crops; the kit seeds them per image")
    flip: bool = True                     # random horizontal flip at train time (DEIQT)
    max_side: int | None = None           # working resolution cap for the image store (None = native)


@dataclass
class TrainConfig:
    epochs: int = 9
    warmup_epochs: int = 3
    decay_epochs: int = 3
    decay_rate: float = 0.1
    lr: float = 2e-4
    warmup_lr: float = 2e-7
    min_lr: float = 2e-7                   # used by the cosine schedule only (DEIQT's step schedule ignores it)
    weight_decay: float = 0.05
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-8
    schedule: str = decision(
        "deiqt_step", id="CSFIQA D20", source="DEIQT code", choices=["deiqt_step", "cosine"])
    global_batch: int | None = None        # None: the dataset's DEIQT global batch (deiqt_protocol §4)
    micro_batch: int | None = None         # gradient accumulation when smaller than global_batch
    clip_grad: float = 5.0
    regression_loss: str = decision(
        "smooth_l1", id="CSFIQA D19 / LML D13", source="DEIQT code", choices=["smooth_l1", "l1", "mse"])
    label_norm: str = decision(
        "raw", id="CSFIQA D12 / LML D12", source="DEIQT code (raw labels)",
        choices=["raw", "minmax"],
        doc="contrastive terms always see min-max labels; this switch is for the regression target")
    amp: str = "auto"                      # auto (bf16 if supported, fp16 with scaling on CUDA, off on CPU) | bf16 | fp16 | off
    eval_amp: str | None = None            # None: as `amp`; "off" evaluates in fp32 (deterministic scores, F5)
    compile: bool = False
    channels_last: bool = False
    fused_optimizer: bool = True           # AdamW(fused=True) on CUDA
    selection: str = decision(
        "last", id="CSFIQA D22 / LML D15", source="kit default (honest protocol)",
        choices=["last", "val", "max_test_plcc"],
        doc="max_test_plcc is DEIQT's test-set epoch selection; tables label it")
    eval_every: int = 1                    # evaluate every N epochs (per-epoch curves in the run record)
    device: str = "auto"
    num_threads: int | None = None
    seed: int = 0                          # training seed (init, crops); the split seed lives in RunConfig


@dataclass
class ModelConfig:
    name: str = "deiqt"                    # registry name: deiqt | csfiqa | lmliqa
    size: str = "tiny"                     # tiny (smoke) | small (paper)
    pretrained: bool = False
    weights: str | None = None             # local file or folder for the encoder weights (offline)
    checkpoint: str | None = None          # a kit checkpoint to start from


@dataclass
class CSFIQAConfig:
    version: str = decision("v2", id="CSFIQA D1", source="kit default", choices=["v2", "v1"])
    encoder: str = decision(
        "crossvit_small_240", id="CSFIQA D2", source="inferred from 233M params (reviews)",
        choices=["crossvit_small_240", "crossvit_15_240", "crossvit_18_240", "crossvit_9_240"])
    input_size: int = decision(240, id="CSFIQA D3", source="CrossViT native size", choices=[240, 224])
    scale_mode: str = decision(
        "branch", id="CSFIQA D4", source="inferred", choices=["branch", "crop", "crop_per_branch", "single"],
        doc="branch: CrossViT's 12px/16px branches are the two scales; crop: 20%/40% crops (Fig. 2); "
            "single: one scale only (large branch), the one-vs-two-scales ablation")
    crop_ratio_small: float = decision(0.2, id="CSFIQA D4", source="Fig. 2 caption", choices=[0.2])
    crop_ratio_large: float = decision(0.4, id="CSFIQA D4", source="Fig. 2 caption", choices=[0.4])
    scl: bool = True
    scl_layer: str = decision("last", id="CSFIQA D5", source="kit default", choices=["last", "middle"])
    scl_pool: str = decision("cls", id="CSFIQA D6", source="kit default", choices=["cls", "mean"])
    proj_dim: int = decision(128, id="CSFIQA D6", source="kit default", choices=[128, 0])
    label_distance: str = decision(
        "batch_minmax", id="CSFIQA D7", source="kit default", choices=["batch_minmax", "dataset_range", "rank"])
    gamma1: float = decision(0.2, id="CSFIQA D8", source="reviews", choices=[0.1, 0.2, 0.3])
    gamma2: float = decision(0.7, id="CSFIQA D8", source="reviews", choices=[0.5, 0.7, 0.8])
    infonce: str = decision(
        "multi_positive", id="CSFIQA D9", source="kit default", choices=["multi_positive", "supcon"])
    tau: float = decision(0.1, id="CSFIQA D10", source="kit default", choices=[0.05, 0.07, 0.1, 0.2, 0.5])
    alpha: float = decision(1.0, id="CSFIQA D11", source="kit default", choices=[0.5, 1.0, 2.0])
    beta: float = decision(1.0, id="CSFIQA D11", source="kit default", choices=[0.5, 1.0, 2.0])
    lam: float = decision(0.1, id="CSFIQA D12", source="kit default", choices=[0.01, 0.05, 0.1, 0.5, 1.0])
    nsm: str = decision("pooled", id="CSFIQA D13", source="kit default", choices=["pooled", "regional", "off"])
    nsm_quantile: float = decision(0.25, id="CSFIQA D13", source="kit default", choices=[0.1, 0.25, 0.5],
                                   doc="regional NSM: share of least-similar regions taken as hard negatives")
    afs: bool = True
    afs_scope: str = decision("joint", id="CSFIQA D14", source="kit default", choices=["joint", "per_scale"])
    afs_k: float = decision(0.5, id="CSFIQA D15", source="kit default", choices=[0.25, 0.5, 0.75, 1.0],
                            doc="share of keys kept per query (1.0 = dense attention)")
    ic: str = decision(
        "llama", id="CSFIQA D16", source="inferred (LM4VisualEncoding)",
        choices=["llama", "llama_residual", "trainable_block", "off"])
    ic_layer: int = decision(31, id="CSFIQA D16", source="LM4VisualEncoding", choices=[31, 15, 0])
    ic_tokens: str = decision("large", id="CSFIQA D17", source="inferred from 45G MACs",
                              choices=["large", "all", "cls"])
    ic_weights: str | None = decision(
        None, id="CSFIQA D23", source="kit default",
        choices=["<hub repo id>", "<local folder with sharded safetensors>"],
        doc="LLaMA-7B checkpoint (paper profile); the smoke profile uses a tiny random layer")
    ic_dtype: str = decision(
        "auto", id="CSFIQA D23", source="kit default", choices=["auto", "bfloat16", "float16", "float32"],
        doc="dtype of the frozen LLaMA layer; auto = bfloat16 for real weights (~0.4 GB), float32 for the tiny one")
    decoder: str = decision("panel", id="CSFIQA D18", source="inferred (the group's baseline)",
                            choices=["panel", "linear"])


@dataclass
class LMLIQAConfig:
    version: str = decision("v2", id="LML D1", source="kit default", choices=["v2", "v1"])
    saliency: str = decision(
        "teacher_cls_attn", id="LML D2", source="kit default",
        choices=["teacher_cls_attn", "teacher_decoder_attn", "spectral_residual", "random"])
    anchor: str = decision("global_view", id="LML D3", source="kit default",
                           choices=["global_view", "train_crop"])
    k_crops: int = decision(4, id="LML D4", source="kit default", choices=[2, 4, 6, 8])
    crop_mode: str = decision("native", id="LML D4", source="kit default", choices=["native", "multiscale"])
    loss_form: str = decision("single", id="LML D5", source="kit default", choices=["single", "two_term"])
    intra_negatives: bool = True
    inter_negatives: bool = True
    w_intra: float = decision(1.0, id="LML D5", source="kit default", choices=[0.5, 1.0, 2.0])
    proj_dim: int = decision(128, id="LML D6", source="kit default", choices=[128, 0],
                             doc="0 = no projector (the pooled feature itself, L2-normalised)")
    proj_source: str = decision("cls", id="LML D6", source="kit default",
                                choices=["cls", "patch_mean", "decoder"],
                                doc="what the projector reads: CLS token, mean patch token, mean panel output")
    tau: float = decision(0.1, id="LML D7", source="kit default", choices=[0.05, 0.07, 0.1, 0.2])
    lambda_con: float = decision(0.1, id="LML D7", source="kit default", choices=[0.01, 0.05, 0.1, 0.5, 1.0])
    mutual: str = decision("ema_only", id="LML D8", source="caption ('enabled via EMA')",
                           choices=["ema_only", "pred_consistency", "off"])
    lambda_mut: float = decision(0.1, id="LML D8", source="kit default", choices=[0.05, 0.1, 0.5])
    ema_momentum: float = decision(0.99, id="LML D8", source="kit default", choices=[0.9, 0.99, 0.996, 0.999])
    budget: str = decision("match_deiqt", id="LML D9", source="kit default", choices=["match_deiqt", "extra"],
                           doc="match_deiqt: the K crops replace K of the step's regression crops; extra: on top")
    con_share: float = decision(0.5, id="LML D9", source="kit default", choices=[0.25, 0.5, 1.0],
                                doc="share of a step's batch spent on K-crop groups: M = max(2, round(share "
                                    "* batch / K)) images per step get the K crops and the global view")
    teacher_init: str = decision("student", id="LML D10", source="kit default", choices=["student", "checkpoint"])
    teacher_checkpoint: str | None = decision(
        None, id="LML D10", source="kit default", choices=["<path to a trained DEIQT checkpoint>"],
        doc="teacher_init='checkpoint': a DEIQT state dict (or a dict holding it under 'model')")
    eval_branch: str = decision("student", id="LML D11", source="caption ('student decoder')",
                                choices=["student", "teacher", "mean"])


@dataclass
class RunConfig:
    profile: str = "smoke"
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    csfiqa: CSFIQAConfig = field(default_factory=CSFIQAConfig)
    lmliqa: LMLIQAConfig = field(default_factory=LMLIQAConfig)
    split_seed: int = 0
    test_dataset: str | None = None        # cross-dataset: evaluate on all of this dataset
    results_dir: str = "results"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def key(self) -> str:
        """Hash of what decides the numbers (not where results go)."""
        d = self.to_dict()
        for k in ("results_dir",):
            d.pop(k, None)
        d["data"].pop("data_root", None)
        d["train"].pop("device", None)
        d["train"].pop("num_threads", None)
        # method knobs of the other models do not change this run
        for other in ("csfiqa", "lmliqa"):
            if d["model"]["name"] != other:
                d.pop(other)
        blob = json.dumps(d, sort_keys=True, default=str)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]


# Profiles: one switch, the same code path. Values are dotted overrides on RunConfig.
PROFILES: dict[str, dict[str, Any]] = {
    "smoke": {
        "model.size": "tiny", "model.pretrained": False,
        "data.dataset": "synthetic", "data.crop_size": 96, "data.crops_train": 4, "data.crops_test": 4,
        "train.epochs": 6, "train.warmup_epochs": 1, "train.decay_epochs": 3, "train.global_batch": 32,
        "train.lr": 1e-3, "train.label_norm": "minmax",
        "csfiqa.input_size": 96,
        # from scratch, a tiny student lets the contrastive term swamp the regression at LML's 0.1
        # (test SRCC 0.22 vs 0.43 at 0.01 on the synthetic set); the paper profile keeps 0.1
        "lmliqa.lambda_con": 0.01,
    },
    "quick": {
        "model.size": "small", "model.pretrained": True,
        "data.crops_train": 10, "data.crops_test": 10, "train.epochs": 9,
    },
    "paper": {
        "model.size": "small", "model.pretrained": True,
        "data.crops_train": 10, "data.crops_test": 10, "train.epochs": 9,
    },
}

# What each profile sweeps over (notebooks read these).
PROFILE_PLAN: dict[str, dict[str, Any]] = {
    "smoke": {"datasets": ["synthetic"], "seeds": [0], "cross_pairs": [("synthetic_a", "synthetic_b")]},
    "quick": {"datasets": ["LIVEC", "KonIQ-10k"], "seeds": [0, 1, 2],
              "cross_pairs": [("KonIQ-10k", "LIVEC"), ("LIVEC", "KonIQ-10k")]},
    "paper": {"datasets": ["LIVE", "CSIQ", "TID2013", "KADID-10k", "LIVEC", "KonIQ-10k", "LIVEFB", "SPAQ"],
              "seeds": list(range(10)),
              "cross_pairs": [("LIVEFB", "KonIQ-10k"), ("LIVEFB", "LIVEC"), ("LIVEC", "KonIQ-10k"),
                              ("KonIQ-10k", "LIVEC"), ("LIVE", "CSIQ"), ("CSIQ", "LIVE"),
                              ("KADID-10k", "TID2013")]},
}


def _walk(obj, prefix=""):
    for f in fields(obj):
        v = getattr(obj, f.name)
        name = f"{prefix}{f.name}"
        if is_dataclass(v):
            yield from _walk(v, name + ".")
        else:
            yield name, f, v


def override(cfg: RunConfig, values: dict[str, Any]) -> RunConfig:
    """A copy of cfg with dotted fields replaced; an unknown name is an error, not a silent no-op."""
    cfg = copy.deepcopy(cfg)
    known = {name for name, _, _ in _walk(cfg)}
    for dotted, value in values.items():
        if dotted not in known:
            raise KeyError(f"unknown config field {dotted!r}; known fields: {sorted(known)}")
        *path, last = dotted.split(".")
        target = cfg
        for p in path:
            target = getattr(target, p)
        setattr(target, last, value)
    return cfg


def make_config(profile: str = "smoke", model: str = "deiqt", overrides: dict | None = None, **kw) -> RunConfig:
    """RunConfig for a profile and model, then overrides (dotted names) and keyword fields of RunConfig."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {sorted(PROFILES)}")
    cfg = RunConfig(profile=profile, **kw)
    cfg.model.name = model
    cfg = override(cfg, PROFILES[profile])
    return override(cfg, overrides or {})


def decisions_table(cfg: RunConfig | None = None):
    """Every undecided paper detail: field, decision id, value used, default, alternatives, source."""
    import pandas as pd

    cfg = cfg or RunConfig()
    rows = []
    for name, f, value in _walk(cfg):
        if "decision" not in f.metadata:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        rows.append({
            "field": name, "decision": f.metadata["decision"], "value": value, "default": default,
            "alternatives": ", ".join(map(str, f.metadata["choices"])),
            "source of default": f.metadata["source"], "note": f.metadata["doc"],
        })
    return pd.DataFrame(rows)
