"""Run configuration: one dataclass tree, three profiles, and every undecided paper detail as a field.

A field whose value the papers do not fix is built with `decision(...)` and carries:
    decision    the id used in docs/csfiqa.md, docs/lmliqa.md and docs/protocol.md (e.g. "CSFIQA D15")
    source      where the default comes from ("paper", "reviews", "DEIQT code", "kit default", ...)
    choices     the closed set of values it takes (enforced), or
    alternatives  values worth trying (listed, not enforced: a number is bounded by its range)
`decisions_table()` lists them, so a reader with the PDF can change one line and re-run.

Every field is checked when a config is made (`make_config`, `override`, `config_from_dict`), not
during training: its type (from the annotation), its range (`range="(0, inf)"`), its pattern (open
text), and, for fields with choices, that the value is one of them. A bad value raises `ConfigError` naming the field and what
it accepts. Configs are never changed in place: `override(cfg, {"csfiqa.tau": 0.2})` returns a copy.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

from ..system import KitError


class ConfigError(KitError, ValueError):
    """A setting with the wrong type, range or choice; the message names the field."""


class UnknownFieldError(ConfigError, KeyError):
    def __str__(self) -> str:          # KeyError would quote the message
        return str(self.args[0])


def decision(default, *, id: str, source: str, choices=(), alternatives=(), doc: str = "",
             range: str | None = None, pattern: tuple[str, str] | None = None):
    """A config field whose value the papers leave open (or that the kit chose).

    choices       the closed set of values the field takes (always enforced, whatever the type)
    alternatives  values worth trying, listed in the decisions table but not enforced (a number's
                  bounds are its `range`, open text's its `pattern`)
    """
    if choices and alternatives:
        raise TypeError(f"decision {id}: give choices (closed) or alternatives (listed), not both")
    meta = {"decision": id, "source": source, "choices": list(choices),
            "alternatives": list(choices or alternatives), "doc": doc, "range": range, "pattern": pattern}
    if isinstance(default, (list, dict, tuple)):
        return field(default_factory=lambda d=default: copy.deepcopy(d), metadata=meta)
    return field(default=default, metadata=meta)


def setting(default, *, choices=(), range: str | None = None, pattern: tuple[str, str] | None = None,
            doc: str = ""):
    """A plain field with its allowed values: choices (a closed set, always enforced), an interval
    (range, e.g. "[0, 1)") or a pattern (regular expression, description) for text."""
    return field(default=default, metadata={"choices": list(choices), "alternatives": list(choices),
                                            "range": range, "pattern": pattern, "doc": doc})


@dataclass
class DataConfig:
    dataset: str = "synthetic"
    data_root: str | None = None          # folder holding the datasets' release folders (paper profile)
    split_ratio: float = setting(0.8, range="(0, 1]", doc="train share of the split units (DEIQT: 80/20)")
    train_fraction: float = setting(1.0, range="(0, 1]", doc="data-efficient runs keep this share")
    val_fraction: float = decision(
        0.0, id="kit F1", source="kit default", alternatives=[0.0, 0.1], range="[0, 1)",
        doc="share of the training units carved out as validation for model selection")
    cross_train: str = decision(
        "whole", id="kit X1", source="HyperIQA, TReS and LoDa code (cross-dataset: train on every source image)",
        choices=["whole", "split"],
        doc="cross-dataset runs (test_dataset set): train on the whole source (whole; the split seed then only "
            "draws the val_fraction carve-out) or on the training part of split_seed's split (split: the kit's "
            "earlier 80 % reading); the test set is the whole target either way")
    resize_mode: str = decision(
        "keep_aspect", id="DEIQT F3", source="kit default",
        choices=["keep_aspect", "deiqt_parity", "native"],
        doc="deiqt_parity squashes KonIQ/SPAQ to H512xW384 as DEIQT's loaders do")
    crop_size: int = setting(224, range="[8, 4096]")
    crops_train: int = decision(10, id="CSFIQA D21", source="DEIQT YAMLs (PATCH_NUM)", alternatives=[10, 25],
                                range="[1, 1000]")
    crops_test: int = decision(10, id="CSFIQA D21", source="DEIQT YAMLs (PATCH_NUM)", alternatives=[10, 25],
                               range="[1, 1000]")
    test_crops: str = decision(
        "seeded_random", id="DEIQT F5", source="kit default",
        choices=["seeded_random", "grid", "random"],
        doc="DEIQT draws unseeded random test crops; the kit seeds them per image")
    flip: bool = setting(True, doc="random horizontal flips of the training crops (DEIQT)")
    max_side: int | None = setting(None, range="[8, 100000]", doc="working resolution cap (None = native)")
    store: str = setting("auto", choices=["auto", "gpu", "ram", "disk"],
                         doc="where the decoded pixels live: auto chooses from their size and the free memory; "
                             "disk = a memory-mapped cache file under $IQA_KIT_CACHE/stores")


@dataclass
class TrainConfig:
    epochs: int = setting(9, range="[0, 10000]", doc="0 evaluates the untrained model")
    warmup_epochs: int = setting(3, range="[0, 10000]")
    decay_epochs: int = setting(3, range="[1, 10000]")
    decay_rate: float = setting(0.1, range="(0, 1]")
    lr: float = setting(2e-4, range="(0, 10]")
    warmup_lr: float = setting(2e-7, range="[0, 10]")
    min_lr: float = setting(2e-7, range="[0, 10]", doc="cosine schedule only (DEIQT's step schedule ignores it)")
    weight_decay: float = setting(0.05, range="[0, 10]")
    betas: tuple = (0.9, 0.999)
    eps: float = setting(1e-8, range="(0, 1)")
    schedule: str = decision(
        "deiqt_step", id="CSFIQA D20", source="DEIQT code", choices=["deiqt_step", "cosine"])
    max_steps_per_epoch: int | None = setting(None, range="[1, 1000000]",
                                              doc="a budget cap on an epoch's optimizer steps (rehearsals); "
                                                  "None: the whole epoch, as DEIQT")
    global_batch: int | None = setting(None, range="[1, 1000000]",
                                       doc="None: the dataset's DEIQT global batch (docs/protocol.md)")
    micro_batch: int | None = setting(None, range="[1, 1000000]",
                                      doc="samples per chunk of a step (a divisor of each process's share); "
                                          "None or 'auto': on CUDA the largest chunk that fits the free "
                                          "memory (engine.auto_micro), else the whole share. Never changes "
                                          "the numbers: per-sample terms accumulate, contrastive sets use "
                                          "the gradient cache")
    clip_grad: float = setting(5.0, range="[0, inf)", doc="0 = no clipping")
    regression_loss: str = decision(
        "smooth_l1", id="CSFIQA D19 / LML D13", source="DEIQT code", choices=["smooth_l1", "l1", "mse"])
    label_norm: str = decision(
        "raw", id="CSFIQA D12 / LML D12", source="DEIQT code (raw labels)",
        choices=["raw", "minmax"],
        doc="contrastive terms always see min-max labels; this switch is for the regression target")
    amp: str = setting("auto", choices=["auto", "bf16", "fp16", "off"],
                       doc="auto: bf16 if supported, fp16 with scaling on CUDA, off on CPU")
    eval_amp: str | None = setting(None, choices=["auto", "bf16", "fp16", "off"],
                                   doc="None: as `amp`; off evaluates in fp32 (deterministic scores, F5)")
    compile: bool = False
    channels_last: bool = False
    fused_optimizer: bool = setting(True, doc="AdamW(fused=True) on CUDA")
    selection: str = decision(
        "last", id="CSFIQA D22 / LML D15", source="kit default (honest protocol)",
        choices=["last", "val", "max_test_plcc"],
        doc="max_test_plcc is DEIQT's test-set epoch selection; tables label it")
    eval_every: int = setting(1, range="[1, 10000]", doc="evaluate every N epochs (and after the last)")
    device: str = setting("auto", pattern=(r"auto|cpu|mps|cuda(:\d+)?", "auto, cpu, cuda, cuda:N or mps"))
    num_threads: int | None = setting(None, range="[1, 1024]")
    seed: int = setting(0, range="[0, 4294967295]", doc="training seed (init, crops); split seed: RunConfig")


@dataclass
class ModelConfig:
    name: str = setting("deiqt", doc="a registered model: deiqt | csfiqa | lmliqa")
    size: str = setting("tiny", choices=["tiny", "small"], doc="tiny (smoke) | small (paper)")
    pretrained: bool = setting(False, doc="start the encoder from pretrained weights: ImageNet's (small) or the "
                                          "cached proxy pretraining of model.proxy_pretraining (tiny)")
    proxy_pretraining: str = decision(
        "exemplar-v1", id="kit P1", source="kit default (a stand-in for ImageNet pretraining)",
        choices=["exemplar-v1", "exemplar-3aug-v1", "rotation-v1", "degradation-v1"],
        doc="tiny size with model.pretrained: the proxy task the tiny encoder was pretrained on, once, on "
            "skimage photos that supply no synthetic reference (iqa_utils/models/proxy.py); exemplar: "
            "classify 3x3 regions of 12 photos under DeiT-III's 3-Augment; rotation: which of 4 turns")
    weights: str | None = setting(None, doc="local file or folder (or hub id) for the encoder weights")
    checkpoint: str | None = setting(None, doc="a kit run's model.safetensors (or its folder) to start from")


@dataclass
class CSFIQAConfig:
    version: str = decision("v2", id="CSFIQA D1", source="kit default", choices=["v2", "v1"])
    encoder: str = decision(
        "crossvit_small_240", id="CSFIQA D2", source="inferred from 233M params (reviews)",
        choices=["crossvit_small_240", "crossvit_15_240", "crossvit_18_240", "crossvit_9_240"])
    input_size: int = decision(240, id="CSFIQA D3", source="CrossViT native size", alternatives=[240, 224],
                               range="[24, 1024]")
    scale_mode: str = decision(
        "branch", id="CSFIQA D4", source="inferred", choices=["branch", "crop", "crop_per_branch", "single"],
        doc="branch: CrossViT's 12px/16px branches are the two scales; crop: 20%/40% crops (Fig. 2); "
            "single: one scale only (large branch), the one-vs-two-scales ablation")
    crop_ratio_small: float = decision(0.2, id="CSFIQA D4", source="Fig. 2 caption", alternatives=[0.2],
                                       range="(0, 1]")
    crop_ratio_large: float = decision(0.4, id="CSFIQA D4", source="Fig. 2 caption", alternatives=[0.4],
                                       range="(0, 1]")
    crop_nesting: str = decision(
        "nested", id="CSFIQA D4", source="inferred (the same content at two scales; test views are nested)",
        choices=["nested", "independent"],
        doc="crop modes, training: nested draws the small crop inside the large one (as the test-time views "
            "are); independent draws the two crops at unrelated positions (the kit's earlier behaviour)")
    scl: bool = True
    scl_layer: str = decision("last", id="CSFIQA D5", source="kit default", choices=["last", "middle"])
    scl_pool: str = decision(
        "branch_patch_mean", id="CSFIQA D6", source="kit default", choices=["branch_patch_mean", "cls", "mean"],
        doc="branch_patch_mean: mean patch token of each scale's branch run alone (no cross-branch fusion; "
            "one extra encoder pass in training); cls / mean: CLS or mean patch token of the joint pass, "
            "where both already carry the other branch (the CLS directly, the patches through it)")
    proj_dim: int = decision(128, id="CSFIQA D6", source="kit default", alternatives=[128, 0], range="[0, 65536]")
    label_distance: str = decision(
        "batch_minmax", id="CSFIQA D7", source="kit default", choices=["batch_minmax", "dataset_range", "rank"])
    gamma1: float = decision(0.2, id="CSFIQA D8", source="reviews", alternatives=[0.1, 0.2, 0.3], range="[0, 1]")
    gamma2: float = decision(0.7, id="CSFIQA D8", source="reviews", alternatives=[0.5, 0.7, 0.8], range="[0, 1]")
    infonce: str = decision(
        "multi_positive", id="CSFIQA D9", source="kit default", choices=["multi_positive", "supcon"])
    tau: float = decision(0.1, id="CSFIQA D10", source="kit default", alternatives=[0.05, 0.07, 0.1, 0.2, 0.5],
                          range="(0, 100]")
    alpha: float = decision(1.0, id="CSFIQA D11", source="kit default", alternatives=[0.5, 1.0, 2.0],
                            range="[0, 1000]")
    beta: float = decision(1.0, id="CSFIQA D11", source="kit default", alternatives=[0.5, 1.0, 2.0],
                           range="[0, 1000]")
    lam: float = decision(0.1, id="CSFIQA D12", source="kit default", alternatives=[0.01, 0.05, 0.1, 0.5, 1.0],
                          range="[0, 1000]")
    nsm: str = decision(
        "regional", id="CSFIQA D13", source="kit default (the caption's 'same image differing across scales', "
        "region by region)",
        choices=["regional", "pooled", "qfm", "regional_weight", "off"],
        doc="pooled: an image's small/large pair becomes a negative when unusually dissimilar; regional: "
            "region-level InfoNCE, the same region at the other scale a positive unless it is a noise "
            "region; qfm: feature-similar pairs whose labels differ by > gamma2 weigh nsm_weight times as "
            "negatives (QFM-IQM); regional_weight: noise regions only weight the pooled pair (earlier "
            "'regional')")
    nsm_quantile: float = decision(0.25, id="CSFIQA D13", source="kit default", alternatives=[0.1, 0.25, 0.5],
                                   range="(0, 1]",
                                   doc="regional NSM: share of least-similar regions taken as noise regions")
    nsm_input: str = decision(
        "tokens", id="CSFIQA D13", source="kit default (the selection should not read the embeddings it then "
        "pushes apart)", choices=["tokens", "projected"],
        doc="regional NSM: what the noise regions are measured on. tokens: the detached SCL-layer tokens "
            "before the projectors, compared by each region's similarity to the image's other regions at "
            "each scale (the two scales' widths differ); projected: the cosine of the projected region "
            "embeddings that the NSM term then contrasts (the kit's earlier selection)")
    nsm_warmup_epochs: float = decision(
        1.0, id="CSFIQA D13", source="kit default (the projectors and features start random)",
        alternatives=[1.0, 0.0, 3.0], range="[0, 10000]",
        doc="epochs of training before NSM selects noise (until then no region or pair is noise: the "
            "regional term contrasts every region as a positive); 0 = from the first step (earlier behaviour)")
    nsm_weight: float = decision(2.0, id="CSFIQA D13", source="kit default", alternatives=[2.0, 4.0],
                                 range="[0, 1000]",
                                 doc="qfm NSM: weight of a noise pair among the negatives (1 = no NSM)")
    afs: str = decision(
        "topk", id="CSFIQA D15", source="paper (AFS keeps the top-k attention scores)",
        choices=["topk", "dense", "off"],
        doc="topk: the selective-attention layer keeping afs_k of the keys; dense: the same trainable layer "
            "keeping every key (the kit's earlier afs=False, the 'w/o AFS' row); off: no such layer "
            "(identity; 'w/o SFA' with ic='off')")
    afs_scope: str = decision("joint", id="CSFIQA D14", source="kit default", choices=["joint", "per_scale"])
    afs_k: float = decision(0.5, id="CSFIQA D15", source="kit default", alternatives=[0.25, 0.5, 0.75, 1.0],
                            range="(0, 1]", doc="share of keys kept per query (1.0 = dense attention)")
    ic: str = decision(
        "llama", id="CSFIQA D16", source="inferred (LM4VisualEncoding)",
        choices=["llama", "llama_residual", "trainable_block", "off"])
    ic_norm: str = decision(
        "reference", id="CSFIQA D16", source="LM4VisualEncoding code (final RMSNorm left at ones; the ViT's "
        "LayerNorm after the 4096->d map)", choices=["reference", "llama_final_norm"],
        doc="reference: RMSNorm with unit gain after the frozen layer, then a trainable LayerNorm at the visual "
            "width after W2; llama_final_norm: the checkpoint's model.norm weights, no LayerNorm after W2 "
            "(the kit's earlier arrangement)")
    ic_layer: int = decision(31, id="CSFIQA D16", source="LM4VisualEncoding", alternatives=[31, 15, 0],
                             range="[0, 1000]")
    ic_tokens: str = decision("large", id="CSFIQA D17", source="inferred from 45G MACs",
                              choices=["large", "all", "cls"])
    ic_weights: str | None = decision(
        None, id="CSFIQA D23", source="kit default",
        alternatives=["<hub repo id>", "<local folder with sharded safetensors>", "random"],
        doc="LLaMA-7B checkpoint (paper profile); the smoke profile uses a tiny random layer; 'random': "
            "the 7B layer's shape with random weights (benchmarks, memory estimates; nothing read)")
    ic_dtype: str = decision(
        "auto", id="CSFIQA D23", source="kit default", choices=["auto", "bfloat16", "float16", "float32"],
        doc="dtype of the frozen LLaMA layer; auto = bfloat16 for real weights (~0.4 GB), float32 for the tiny "
            "one, and float32 (~0.8 GB, outside autocast) when amp is fp16 (cards without bf16)")
    decoder: str = decision("panel", id="CSFIQA D18", source="inferred (the group's baseline)",
                            choices=["panel", "linear"])
    set_size: int = decision(
        0, id="CSFIQA D25", alternatives=[0, "<per-GPU batch>"],
        source="kit default (one set over the global batch); per-GPU sets: github LXDxmu/CSIQA ee89a1a "
               "models/vit.py Loss_contrastive",
        range="[0, 1000000]",
        doc="scope of SCL's positives and negatives: 0 = one set over the step's global batch, whatever "
            "micro-batches or GPUs split it into; n = consecutive sets of n samples (as one GPU's batch "
            "without a gather, the authors' group's CSIQA code); must divide the global batch")


@dataclass
class LMLIQAConfig:
    version: str = decision("v2", id="LML D1", source="kit default", choices=["v2", "v1"])
    saliency: str = decision(
        "teacher_cls_attn", id="LML D2", source="kit default",
        choices=["teacher_cls_attn", "teacher_decoder_attn", "spectral_residual", "random"])
    anchor: str = decision(
        "global_view", id="LML D3", source="kit default", choices=["global_view", "train_crop", "native_crop"],
        doc="global_view: the whole image squashed to the crop size; train_crop: a random regression crop; "
            "native_crop: a crop at the crops' resolution centred on the saliency peak (regressed too)")
    k_crops: int = decision(4, id="LML D4", source="kit default", alternatives=[2, 4, 6, 8], range="[2, 64]")
    crop_mode: str = decision("native", id="LML D4", source="kit default", choices=["native", "multiscale"])
    max_iou: float = decision(
        0.5, id="LML D4", source="kit default (0.5: PASCAL VOC's overlap for 'the same region')",
        alternatives=[0.3, 0.5, 0.7, 1.0], range="(0, 1]",
        doc="largest IoU between any two of an image's K crops, so an intra-image negative is never nearly "
            "the positive; each crop takes the first of 10 draws within it, else the least-overlapping "
            "draw; 1.0 = no limit (the kit's earlier behaviour)")
    flip_crops: bool = decision(
        True, id="LML D4", source="kit default (DEIQT flips its training crops)", choices=[True, False],
        doc="random horizontal flips of the K crops and a native_crop anchor (when data.flip is on); "
            "False = the kit's earlier unflipped crops")
    loss_form: str = decision("single", id="LML D5", source="kit default", choices=["single", "two_term"])
    intra_negatives: bool = True
    inter_negatives: bool = True
    w_intra: float = decision(1.0, id="LML D5", source="kit default", alternatives=[0.5, 1.0, 2.0], range="[0, 1000]")
    proj_dim: int = decision(128, id="LML D6", source="kit default", alternatives=[128, 0], range="[0, 65536]",
                             doc="0 = no projector (the pooled feature itself, L2-normalised)")
    proj_source: str = decision("cls", id="LML D6", source="kit default",
                                choices=["cls", "patch_mean", "decoder"],
                                doc="what the projector reads: CLS token, mean patch token, mean panel output")
    tau: float = decision(0.1, id="LML D7", source="kit default", alternatives=[0.05, 0.07, 0.1, 0.2], range="(0, 100]")
    lambda_con: float = decision(0.1, id="LML D7", source="kit default", alternatives=[0.01, 0.05, 0.1, 0.5, 1.0],
                                 range="[0, 1000]")
    mutual: str = decision("ema_only", id="LML D8", source="caption ('enabled via EMA')",
                           choices=["ema_only", "pred_consistency", "off"])
    lambda_mut: float = decision(0.1, id="LML D8", source="kit default", alternatives=[0.05, 0.1, 0.5], range="[0, 1000]")
    ema_momentum: float = decision(0.99, id="LML D8", source="kit default", alternatives=[0.9, 0.99, 0.996, 0.999],
                                   range="[0, 1]")
    budget: str = decision("match_deiqt", id="LML D9", source="kit default", choices=["match_deiqt", "extra"],
                           doc="match_deiqt: the K crops replace K of the step's regression crops; extra: on top")
    con_share: float = decision(0.5, id="LML D9", source="kit default", alternatives=[0.25, 0.5, 1.0], range="(0, 1]",
                                doc="share of a step's batch spent on K-crop groups: M = max(2, round(share "
                                    "* batch / K)) images per step get the K crops and the global view")
    teacher_init: str = decision("student", id="LML D10", source="kit default", choices=["student", "checkpoint"])
    teacher_checkpoint: str | None = decision(
        None, id="LML D10", source="kit default", alternatives=["<path to a trained DEIQT checkpoint>"],
        doc="teacher_init='checkpoint': a DEIQT state dict (or a dict holding it under 'model')")
    eval_branch: str = decision("student", id="LML D11", source="caption ('student decoder')",
                                choices=["student", "teacher", "mean"])
    queue_size: int = decision(
        0, id="LML D16", source="kit default", alternatives=[0, 1024, 4096], range="[0, 1000000]",
        doc="memory queue of past crop embeddings used as extra inter-image negatives (crops of the anchor's "
            "own image excluded); 0 = off, the batch's images only")
    queue_source: str = decision(
        "teacher", id="LML D16", source="MoCo (He et al., CVPR 2020): keys from the momentum encoder",
        choices=["teacher", "student"],
        doc="what the queue holds: teacher = MoCo's keys, the EMA teacher (with an EMA copy of the projector) "
            "on the step's crops, one no-grad pass; student = the student's own detached crop embeddings "
            "(the kit's earlier queue)")
    set_size: int = decision(
        0, id="LML D19", alternatives=[0, "<per-GPU batch>"],
        source="kit default (one set over the global batch); per-GPU sets: github LXDxmu/CSIQA ee89a1a "
               "models/vit.py Loss_contrastive",
        range="[0, 1000000]",
        doc="scope of the local-manifold sets: 0 = the contrastive images of the whole global batch; n = "
            "the global batch cut in sets of n listed samples (per-GPU sets), each set's contrastive images "
            "compared among themselves; must divide the global batch")


@dataclass
class RunConfig:
    profile: str = setting("smoke", doc="a key of PROFILES")
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    csfiqa: CSFIQAConfig = field(default_factory=CSFIQAConfig)
    lmliqa: LMLIQAConfig = field(default_factory=LMLIQAConfig)
    split_seed: int = setting(0, range="[0, 4294967295]")
    test_dataset: str | None = None        # cross-dataset: evaluate on all of this dataset

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def uses_proxy_weights(self) -> bool:
        """The model starts from the tiny encoders' proxy pretraining (models/proxy.py), built on first use
        or ahead of time by `iqa-kit proxy`."""
        return self.model.pretrained and self.model.size == "tiny" and not self.model.weights

    def is_cross(self) -> bool:
        """Trained on one dataset, tested on all of another."""
        return bool(self.test_dataset) and self.test_dataset != self.data.dataset

    def key(self) -> str:
        """Hash of what decides the numbers (not where the data or the results live, nor the profile's
        name: quick and paper runs of the same config are the same run). The data itself is hashed into
        the run key next to it (runs.data_digest)."""
        d = self.to_dict()
        d.pop("profile")
        d["data"].pop("data_root", None)
        d["data"].pop("store", None)                     # where the pixels live, not what they are
        d["train"].pop("device", None)
        d["train"].pop("num_threads", None)
        d["train"].pop("micro_batch", None)              # how a step is computed, not its numbers
        for m in ("csfiqa", "lmliqa"):                   # keys of runs made before the field existed
            if not d[m].get("set_size"):
                d[m].pop("set_size", None)
        if not self.is_cross():
            d["data"].pop("cross_train")                 # only read by cross-dataset runs
        if not (d["model"]["pretrained"] and d["model"]["size"] == "tiny" and not d["model"]["weights"]):
            d["model"].pop("proxy_pretraining")      # the weights do not come from a proxy recipe
        # method knobs of the other models do not change this run, nor which paper version a table quotes
        for other in ("csfiqa", "lmliqa"):
            if d["model"]["name"] != other:
                d.pop(other)
            else:
                d[other].pop("version")
        blob = json.dumps(d, sort_keys=True, default=str)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]
