"""Model cost: parameters, MACs, latency, throughput and peak memory, and one table of them all.

Units and conventions
- **MACs** are counted with PyTorch's own `torch.utils.flop_counter.FlopCounterMode`, which counts
  FLOPs of matmuls and convolutions (2 per multiply-add); `count_macs` returns FLOPs / 2 in units of
  1e9 per crop (GMACs). Papers in the DEIQT line (CSFIQA: "45G", DEIQT: "4.6G") print GMACs under the
  label "GFLOPs"; compare our GMACs with those numbers directly. Element-wise ops (norms, GELU,
  softmax, bias adds) are not counted, as in fvcore/thop and timm's model cards.
- A model too large to allocate can be built on the meta device (`with torch.device("meta"):
  model = Builder(...)`) and passed to `count_macs`/`count_params` unchanged: shapes propagate, no
  memory is used. Only models without data-dependent Python control flow (`.item()`, `.tolist()`)
  can run there.
- **Latency** is ms per image (one crop) at a batch size; **throughput** is crops per second, at
  inference or for a full training step (forward, loss, backward, optimizer step).
- **Peak memory**: on CUDA `torch.cuda.max_memory_allocated` (tensors only, not the allocator's
  cache); on CPU the growth of the process's peak resident set (Linux VmHWM after resetting it via
  /proc/self/clear_refs and trimming the malloc heap; where that reset is refused, the growth of
  `resource` ru_maxrss, which is 0 when the process already peaked higher). CPU numbers include
  allocator overhead and are best taken in a fresh process. The `method` field says which was used.
"""
from __future__ import annotations

import contextlib
import logging
import resource
import statistics
from dataclasses import dataclass
from typing import Callable

import pandas as pd
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

# torch.utils.benchmark imports cpp_extension, which warns at import time on a CUDA build of torch without
# a CUDA runtime (a CPU machine); the warning is about compiling extensions, which the kit never does.
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
from torch.utils import benchmark  # noqa: E402

from ..config.check import make_config, override
from ..config.fields import ConfigError
from ..devices import amp_dtype, autocast, device_name, train_mode
from .csfiqa import CSFIQA
from .registry import create_model

# ---------------------------------------------------------------- parameters

def count_params(model: nn.Module) -> dict[str, int]:
    """Total, trainable (requires_grad) and frozen parameter counts; shared tensors counted once."""
    total = trainable = 0
    for p in model.parameters():          # parameters() yields a shared (tied) tensor once
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return {"total": total, "trainable": trainable, "frozen": total - trainable}


# ---------------------------------------------------------------- helpers

def _hw(input_size) -> tuple[int, int]:
    if isinstance(input_size, int):
        return input_size, input_size
    h, w = input_size
    return int(h), int(w)


def _model_device(model: nn.Module) -> torch.device:
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


def _input_size_of(model: nn.Module, input_size):
    return input_size if input_size is not None else getattr(model, "input_size", 224)


@contextlib.contextmanager
def _countable_kernels():
    """Route attention through ops the flop counter knows.

    On CPU, SDPA dispatches to a fused kernel the counter has no formula for (it silently counts 0,
    ~8% of a ViT-S), and nn.MultiheadAttention's inference fast path hides its projections; the math
    SDPA backend and the slow MHA path give the same numbers through countable bmm/addmm ops.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, amp: str | None):
    return autocast(device, amp_dtype(amp or "off", device))


# ---------------------------------------------------------------- MACs

def count_macs(model: nn.Module, input_size=None, *, batch: int = 1, inputs: torch.Tensor | None = None,
               by_op: bool = False):
    """GMACs per crop (FLOPs / 2 / 1e9 / batch) of one forward pass in eval mode.

    input_size: int or (H, W) for an image batch (B, 3, H, W); defaults to `model.input_size`.
    inputs: an explicit input tensor instead (e.g. for a non-image module); batch = inputs.shape[0].
    by_op: also return {aten op: GMACs per crop}.
    Works for models on the meta device (nothing is allocated).
    """
    device = _model_device(model)
    if inputs is None:
        h, w = _hw(_input_size_of(model, input_size))
        inputs = torch.zeros(batch, 3, h, w, device=device)
    batch = inputs.shape[0]
    with train_mode(model, False), torch.no_grad(), _countable_kernels(), FlopCounterMode(display=False) as fc:
        model(inputs)
    gmacs = fc.get_total_flops() / 2 / batch / 1e9
    if not by_op:
        return gmacs
    ops = {str(k): v / 2 / batch / 1e9 for k, v in fc.get_flop_counts().get("Global", {}).items()}
    return gmacs, ops


# ---------------------------------------------------------------- timing

def _images(batch: int, input_size, device) -> torch.Tensor:
    h, w = _hw(input_size)
    return torch.randn(batch, 3, h, w, device=device)


def _time_it(fn: Callable[[], None], device: torch.device, *, warmup: int, iters: int) -> float:
    """Median seconds per call of fn over `iters` calls, each timed by torch.utils.benchmark.Timer (which
    synchronises CUDA); the median is robust to other processes sharing the CPU."""
    for _ in range(warmup):
        fn()
    _sync(device)
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn})
    return statistics.median(timer.timeit(1).mean for _ in range(iters))


def latency(model: nn.Module, input_size=None, device="cpu", *, batch: int = 1, warmup: int = 3,
            iters: int = 10, amp: str | None = None) -> float:
    """Inference latency in ms per image (median over iters of one batched forward, / batch)."""
    device = torch.device(device)
    model = model.to(device)
    x = _images(batch, _input_size_of(model, input_size), device)

    def step():
        model(x)

    with train_mode(model, False), torch.inference_mode(), _autocast(device, amp):
        sec = _time_it(step, device, warmup=warmup, iters=iters)
    return 1000.0 * sec / batch


class SyntheticSampler:
    """Stands in for data.store.CropSampler with random normalised tensors of the asked shapes, so a
    model's own `train_batch` (and its extra views: multi-scale crops, boxes, global views) is timed."""

    def __init__(self, device):
        self.device = torch.device(device)

    def _x(self, *shape):
        return torch.randn(*shape, device=self.device)

    def random_crops(self, idx, size, flip=True, generator=None):
        return self._x(len(idx), 3, size, size)

    def resized_crops(self, idx, ratio, size, flip=True, generator=None):
        return self._x(len(idx), 3, size, size)

    def nested_crops(self, idx, ratio_small, ratio_large, size, flip=True, generator=None):
        return self._x(len(idx), 3, size, size), self._x(len(idx), 3, size, size), \
            torch.rand(len(idx), 2, 4, device=self.device)

    def crops_at(self, idx, centres, size, flip=True, generator=None):
        return self._x(len(idx), 3, size, size)

    def global_views(self, idx, size):
        return self._x(len(idx), 3, size, size)

    def crops_with_boxes(self, idx, k, size, generator=None, mode="native", flip=True, max_iou=1.0):
        hw = torch.rand(len(idx), k, 2, device=self.device) * 0.5 + 0.25
        tl = torch.rand(len(idx), k, 2, device=self.device) * (1 - hw)
        return self._x(len(idx), k, 3, size, size), torch.cat([tl, hw], dim=-1)

    def test_crops(self, idx, n, size, mode="seeded_random", seed=0):
        return self._x(len(idx) * n, 3, size, size)

    def nested_test_crops(self, idx, n, ratio_small, ratio_large, size, mode="seeded_random", seed=0, nested=True):
        return self._x(len(idx) * n, 2, 3, size, size)


def _train_step_fn(model: nn.Module, input_size, device, *, batch: int, amp: str | None):
    """One full optimizer step: the model's own train_batch/loss when it has them, else MSE on scores."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=0.0)     # full update arithmetic, weights left as they were
    sampler = SyntheticSampler(device)
    gen = torch.Generator(device="cpu").manual_seed(0)
    idx = torch.arange(batch)
    y = torch.rand(batch, device=device) * 100
    uses_protocol = hasattr(model, "train_batch") and hasattr(model, "loss")
    x = _images(batch, input_size, device)

    def step():
        opt.zero_grad(set_to_none=True)
        with _autocast(device, amp):
            if uses_protocol:
                loss, _ = model.loss(model.train_batch(sampler, idx, y, gen))
            else:
                loss = (model(x).float() - y).pow(2).mean()
        loss.backward()
        opt.step()
        if hasattr(model, "after_step"):
            model.after_step()

    return step


def throughput(model: nn.Module, input_size=None, device="cpu", *, batch: int = 32, train: bool = False,
               warmup: int = 2, iters: int = 5, amp: str | None = None) -> float:
    """Crops per second. train=True times forward + loss + backward + optimizer step (the model's
    own `train_batch`/`loss` when it has them, so extra views a method samples are included: the
    count is then training samples/s). The optimizer runs with lr 0, so weights stay as they were
    (an EMA teacher's after_step still moves it toward the student). The model is moved to device."""
    device = torch.device(device)
    model = model.to(device)
    size = _input_size_of(model, input_size)
    if train:
        was_training = model.training
        model.train()
        try:
            step = _train_step_fn(model, size, device, batch=batch, amp=amp)
            sec = _time_it(step, device, warmup=warmup, iters=iters)
        finally:
            model.train(was_training)
    else:
        x = _images(batch, size, device)
        with train_mode(model, False), torch.inference_mode(), _autocast(device, amp):
            sec = _time_it(lambda: model(x), device, warmup=warmup, iters=iters)
    return batch / sec


# ---------------------------------------------------------------- memory

def _read_hwm_kib() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _trim_heap() -> None:
    """Hand freed heap pages back to the OS (glibc malloc_trim), so memory freed by earlier work is
    not silently reused by the step being measured (it would never show up as RSS growth)."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_hwm() -> bool:
    """Linux: writing 5 to clear_refs resets the peak RSS (VmHWM) to the current RSS."""
    _trim_heap()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _read_hwm_kib() is not None
    except OSError:
        return False


def _cpu_rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def peak_memory(model: nn.Module, input_size=None, device="cpu", *, batch: int = 1, train: bool = False,
                amp: str | None = None) -> dict:
    """Peak memory of one forward (train=False) or one training step beyond what was held before.

    Returns {"peak_mib", "method"}; method is "cuda_max_memory_allocated", "cpu_vmhwm_delta"
    (peak resident set, reset first) or "cpu_ru_maxrss_delta" (lower bound: 0 if already exceeded).
    """
    device = torch.device(device)
    model = model.to(device)
    size = _input_size_of(model, input_size)
    if train:
        once = _train_step_fn(model, size, device, batch=batch, amp=amp)
    else:
        x = _images(batch, size, device)

        def once():
            with train_mode(model, False), torch.inference_mode(), _autocast(device, amp):
                model(x)

    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        once()
        _sync(device)
        peak = torch.cuda.max_memory_allocated(device) - before
        return {"peak_mib": peak / 2**20, "method": "cuda_max_memory_allocated"}

    if _reset_hwm():
        before = _cpu_rss_kib()
        once()
        return {"peak_mib": (_read_hwm_kib() - before) / 1024, "method": "cpu_vmhwm_delta"}
    _trim_heap()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss      # KiB on Linux
    once()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_mib": (after - before) / 1024, "method": "cpu_ru_maxrss_delta"}


# ---------------------------------------------------------------- table

@dataclass(frozen=True)
class Timing:
    """How cost_table measures: inference throughput (and peak memory) at `batch` crops, training
    throughput at `train_batch` (not measured when None), each the median of `iters` timed calls after
    `warmup` untimed ones (training: 1 warm-up and 3 timed steps, a step being slow). A profile's
    plan gives one as its "cost" entry."""
    batch: int = 1
    train_batch: int | None = None
    warmup: int = 3
    iters: int = 10

    def __post_init__(self):
        for name, low in (("batch", 1), ("train_batch", 1), ("warmup", 0), ("iters", 1)):
            value = getattr(self, name)
            if value is None and name == "train_batch":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"Timing.{name}: {value!r}; it must be a whole number of at least {low}")


def _timed_columns(model: nn.Module, size, device, *, timing: Timing, amp: str | None) -> dict:
    """latency_ms, infer_crops_per_s@batch and (with a train_batch) train_samples_per_s@train_batch; NaN
    for a model on the meta device."""
    names = ["latency_ms", f"infer_crops_per_s@{timing.batch}"] + \
        ([f"train_samples_per_s@{timing.train_batch}"] if timing.train_batch else [])
    if _model_device(model).type == "meta":
        return dict.fromkeys(names, float("nan"))
    repeat = {"warmup": timing.warmup, "iters": timing.iters}
    values = [latency(model, size, device, batch=1, amp=amp, **repeat),
              throughput(model, size, device, batch=timing.batch, amp=amp, **repeat)]
    if timing.train_batch:
        values.append(throughput(model, size, device, batch=timing.train_batch, train=True, warmup=1, iters=3,
                                 amp=amp))
    return dict(zip(names, values))


def cost_table(models: dict[str, nn.Module], *, input_sizes=None, device="cpu", timing: Timing | None = Timing(),
               memory: bool = False, crops_per_image: int | None = None, amp: str | None = None):
    """One row per model: params (total/trainable/frozen, millions), GMACs per crop (and per image
    when crops_per_image is given), then, with a `timing`, latency ms/image, inference crops/s and
    optionally training samples/s (`Timing`), and with `memory` the peak memory of a forward at
    timing.batch (1 without timing); the device name.

    input_sizes: int, or {name: int | (H, W)}; default each model's `input_size`.
    Models on the meta device get params and MACs only (timing columns are NaN).
    """
    rows = []
    for name, model in models.items():
        size = input_sizes.get(name) if isinstance(input_sizes, dict) else input_sizes
        size = _input_size_of(model, size)
        p = count_params(model)
        row = {"model": name, "input_size": size,
               "params_M": p["total"] / 1e6, "trainable_M": p["trainable"] / 1e6, "frozen_M": p["frozen"] / 1e6,
               "GMACs_per_crop": count_macs(model, size)}
        if crops_per_image:
            row["GMACs_per_image"] = row["GMACs_per_crop"] * crops_per_image
        on_meta = _model_device(model).type == "meta"
        if timing:
            row.update(_timed_columns(model, size, device, timing=timing, amp=amp))
        if memory:
            m = {"peak_mib": float("nan"), "method": ""} if on_meta else \
                peak_memory(model, size, device, batch=timing.batch if timing else 1, amp=amp)
            row["peak_mem_MiB"], row["mem_method"] = m["peak_mib"], m["method"]
        row["device"] = "meta (not run)" if on_meta else device_name(device)
        row["amp"] = amp or "off"
        rows.append(row)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------------
# cost report (no real weights allocated)
# ---------------------------------------------------------------------------------------------------
def csfiqa_cost(cfg=None, input_size: int | None = None, macs: bool = True) -> dict:
    """Parameters (total / trainable / frozen, and per part) of the full-size CSFIQA with the real
    LLaMA-7B layer dimensions, built on the meta device, and MACs of one forward at `input_size`
    (torch.utils.flop_counter, FLOPs / 2; top-k selection and softmax are not counted).
    `train_only` counts the SCL projectors, which inference does not use."""
    cfg = cfg if cfg is not None else make_config("paper", "csfiqa")
    # shapes only: LLaMA-7B dimensions, nothing read or downloaded
    cfg = override(cfg, {"csfiqa.ic_weights": None, **({"csfiqa.input_size": input_size} if input_size else {})})
    csfiqa = cfg.csfiqa
    with torch.device("meta"):
        model = CSFIQA(csfiqa, "small", device="meta")
    counts = count_params(model)
    parts = {name: sum(p.numel() for p in mod.parameters()) for name, mod in model.named_children()}
    out = {"params_total": counts["total"], "params_trainable": counts["trainable"],
           "params_frozen": counts["frozen"], "params_by_part": parts,
           "params_train_only": parts.get("proj_large", 0) + parts.get("proj_small", 0),
           "input_size": csfiqa.input_size}
    out["params_inference"] = out["params_total"] - out["params_train_only"]
    if macs:
        x = torch.empty(1, 3, csfiqa.input_size, csfiqa.input_size, device="meta")
        if csfiqa.scale_mode in ("crop", "crop_per_branch"):
            x = torch.empty(1, 2, 3, csfiqa.input_size, csfiqa.input_size, device="meta")
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            model.eval()(x)
        out["macs"] = fc.get_total_flops() / 2
        by_mod = {k: sum(v.values()) / 2 for k, v in fc.get_flop_counts().items()}
        out["macs_by_part"] = {n: by_mod.get(f"CSFIQA.{n}", 0.0) for n in parts if n != "encoder"}
        # the encoder's submodules are called one by one (own forward), so it is the remainder
        out["macs_by_part"]["encoder"] = out["macs"] - sum(out["macs_by_part"].values())
    return out


# ---------------------------------------------------------------- memory of a training step

CARDS_GB = (16, 24, 40, 80, 141)      # T4/V100-16, L4/A10, A100-40, A100/H100-80, H200
MARGIN = 0.85                         # of a card's (or the free) memory: the allocator's fragmentation, CUDA context
# listed samples of the two measured batches: LML-IQA's contrastive images are at least 2 whatever the
# batch, so its difference is taken between larger batches
MEASURE_BATCHES = {"lmliqa": (16, 32)}
# peak of a whole step (forward, backward, update) over the bytes saved for backward: the backward's
# transient activation gradients. Measured on the CPU (peak RSS of tiny DEIQT, CSFIQA, LML-IQA steps at
# batches 32 and 64: 1.17-1.31, one 1.5); to be checked against torch.cuda.max_memory_allocated
BACKWARD_OVERHEAD = 1.3


def saved_bytes(model: nn.Module, batch: int, device="cpu", *, dtype: torch.dtype | None = None) -> int:
    """Bytes autograd saves for backward in the loss of one training batch of `batch` listed samples
    (the model's own train_batch views), summed over unique storages, the model's own tensors left out.
    Only a forward runs: the measurement needs no GPU and no backward."""
    device = torch.device(device)
    own = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    seen: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in own:
            seen[st.data_ptr()] = st.nbytes()
        return t
    idx, y = torch.arange(batch), torch.rand(batch, device=device)
    with train_mode(model, True), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
            autocast(device, dtype):
        loss, _ = model.loss(model.train_batch(SyntheticSampler(device), idx, y, torch.Generator().manual_seed(0)))
    del loss
    if getattr(model, "_pending", None):          # LML-IQA's queue waits for after_step: not a real step
        model._pending.clear()
    return sum(seen.values())


def step_memory(model: nn.Module, device="cpu", *, dtype: torch.dtype | None = None, batches=(2, 4)) -> dict:
    """A training step's memory model: bytes saved per listed sample (the difference of two small
    batches), the fixed part of the activations, and the state (weights, buffers, gradients, AdamW's two
    float32 moments of every trainable parameter). The image store is not counted."""
    small, large = (saved_bytes(model, n, device, dtype=dtype) for n in batches)
    per = max(0.0, (large - small) / (batches[1] - batches[0]))
    trainable = [p for p in model.parameters() if p.requires_grad]
    weights = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    grads = sum(p.numel() * p.element_size() for p in trainable)
    return {"per_crop": per, "fixed": max(0.0, small - per * batches[0]),
            "state": weights + grads + 2 * 4 * sum(p.numel() for p in trainable)}


def peak_bytes(mem: dict, n: int) -> float:
    """Estimated peak memory of a step computed in chunks of n samples: the state, and the activations
    saved for backward times BACKWARD_OVERHEAD (the gradient cache's first pass keeps only embeddings:
    a few KB per sample)."""
    return mem["state"] + BACKWARD_OVERHEAD * (mem["fixed"] + n * mem["per_crop"])


def largest_micro(per_rank: int, mem: dict, free_bytes: float, *, margin: float = MARGIN) -> int | None:
    """The largest divisor of `per_rank` (a process's samples of a step) whose step fits `margin` of
    free_bytes; None if not even one does."""
    for d in sorted((d for d in range(1, per_rank + 1) if per_rank % d == 0), reverse=True):
        if peak_bytes(mem, d) <= margin * free_bytes:
            return d
    return None


def cards_fitting(mem: dict, n: int, *, cards=CARDS_GB, margin: float = MARGIN) -> list[int]:
    """The cards (GB) whose `margin` holds a step computed in chunks of n samples."""
    return [card for card in cards if peak_bytes(mem, n) <= margin * card * 2**30]


def full_size_model(model: str):
    """The paper-size model on the meta device: shapes only, nothing allocated, read or downloaded."""
    cfg = make_config("paper", model, {"model.pretrained": False})
    with torch.device("meta"):
        if model == "csfiqa":                      # the LLaMA-7B layer at its real shape, no weights read
            return CSFIQA(cfg.csfiqa, "small", cfg.train.regression_loss, device="meta")
        return create_model(cfg)
