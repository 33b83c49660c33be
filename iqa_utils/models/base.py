"""What the engine asks of every model: scores for crops, a training batch, a loss, a step hook."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn
import torch.nn.functional as F

from ..config.fields import ConfigError, DataConfig

# the test crop placements: the choices of data.test_crops, so the two cannot drift
TEST_CROP_MODES = tuple(next(f for f in dataclasses.fields(DataConfig) if f.name == "test_crops").metadata["choices"])


@dataclass(frozen=True)
class TestCrops:
    """How an image is scored at test time: the mean over `n` views of `size` x `size` pixels, placed by
    `mode` (data.test_crops) from `seed`. One value, so that n, size and seed are never swapped by position."""
    __test__ = False                  # a kit class, not a pytest test class

    n: int
    size: int
    mode: str = "seeded_random"
    seed: int = 0

    def __post_init__(self):
        for name, low in (("n", 1), ("size", 1), ("seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"TestCrops.{name}: {value!r}; it must be a whole number of at least {low}")
        if self.mode not in TEST_CROP_MODES:
            raise ConfigError(f"TestCrops.mode: {self.mode!r}; choose one of {', '.join(TEST_CROP_MODES)}")


def regression_loss(pred: torch.Tensor, target: torch.Tensor, kind: str = "smooth_l1") -> torch.Tensor:
    pred, target = pred.float().view(-1), target.float().view(-1)
    if kind == "smooth_l1":
        return F.smooth_l1_loss(pred, target, beta=1.0)
    if kind == "l1":
        return F.l1_loss(pred, target)
    if kind == "mse":
        return F.mse_loss(pred, target)
    raise ValueError(f"unknown regression loss {kind!r}; choose smooth_l1, l1 or mse")


class IQAModel(nn.Module):
    """Base class. Subclasses set `input_size` and implement `forward(x) -> (B,) scores`.

    The engine calls, per optimizer step:
        batch = model.train_batch(sampler, idx, y, generator)   # views the method needs
        loss, logs = model.loss(batch)                           # regression (+ method terms)
        ... backward, optimizer step ...
        model.after_step()                                       # e.g. EMA teacher update
    and at evaluation `model(x)` on the test crops.
    """
    input_size: int = 224
    regression: str = "smooth_l1"
    flip: bool = True                 # random horizontal flips of training crops (cfg.data.flip)

    def train_batch(self, sampler, idx: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> dict:
        x = sampler.random_crops(idx, self.input_size, flip=self.flip, generator=generator)
        # non_blocking: a blocking host-to-device copy would wait for the GPU to finish its queue
        return {"x": x, "y": y.to(x.device, non_blocking=True), "idx": idx}

    def test_views(self, sampler, idx: torch.Tensor, crops: TestCrops) -> torch.Tensor:
        """The inputs of crops.n test views per image, rows i*n .. i*n+n-1 for idx[i] (evaluation's
        per-image mean): crops.size-pixel crops at the stored resolution, as DEIQT tests."""
        return sampler.test_crops(idx, crops.n, crops.size, mode=crops.mode, seed=crops.seed)

    def loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        """The loss of one whole batch: its per-sample terms plus the set terms over its embeddings."""
        terms, emb, meta, logs = self.step_terms(batch)
        if not self.has_set_loss():
            return terms, logs
        con, clogs = self.set_loss(emb, meta)
        return terms + con, {**logs, **clogs}

    # ---- the two halves of a loss, for batches computed in pieces (training.engine) ----------------
    def step_terms(self, batch: dict) -> tuple[torch.Tensor, dict, dict, dict]:
        """(per-sample terms, embeddings, meta, logs) of a batch or of one chunk of it. The per-sample
        terms (the regression loss) are a mean over the chunk unless the chunk says otherwise (LML-IQA);
        `embeddings` are the differentiable (n, ...) rows the set terms are built from, `meta` the rows
        that go with them without gradient (labels, ids). Chunks and ranks are concatenated row-wise."""
        pred = self(batch["x"])
        reg = regression_loss(pred, batch["y"], self.regression)
        return reg, {}, {}, {"loss_reg": reg.detach()}

    def has_set_loss(self) -> bool:
        """Whether the loss has terms that compare the samples of a step (contrastive sets)."""
        return False

    def set_loss(self, emb: dict, meta: dict) -> tuple[torch.Tensor, dict]:
        """The set terms over the embeddings of a whole step (every chunk, every rank), in float32."""
        raise NotImplementedError

    def step_batches(self, sampler, idx: torch.Tensor, labels: torch.Tensor, streams, micro: int,
                     share: slice | None = None) -> list:
        """[(weight, make_batch)] for this process's chunks of the step's batch `idx` (all ranks'): each
        make_batch() cuts its chunk's views (again, the same ones: crops are a pure function of a sample's
        position); the weights times the chunks' per-sample terms, summed over every chunk of every rank,
        give the whole step's per-sample terms (here a chunk's share of the batch). `streams`:
        (position, n) -> the crop stream of positions [position, position + n) of the step, or one
        torch.Generator the chunks draw from in turn."""
        share = share or slice(0, len(idx))
        out = []
        for off in range(share.start, share.stop, micro):
            chunk = idx[off:min(off + micro, share.stop)]
            out.append((len(chunk) / len(idx), _chunk_maker(self, sampler, chunk, labels, streams, off)))
        return out

    def after_step(self) -> None:
        pass

    def fit_precision(self, dtype: torch.dtype | None) -> None:
        """Adapt to the run's autocast dtype (CSFIQA keeps its frozen LLaMA layer in float32 under fp16)."""

    def no_weight_decay(self) -> set[str]:
        """Parameter names kept out of weight decay besides every 1-D tensor (DEIQT: pos/cls tokens)."""
        return set()

    def source_state_keys(self) -> set[str]:
        """State entries rebuilt from their source whenever the model is built and never trained (CSFIQA's
        frozen LLaMA layer): the kit's checkpoints and weights files leave them out (models.pretrained)."""
        return set()


def _chunk_maker(model, sampler, chunk, labels, streams, off: int):
    """A chunk's views; a fresh stream on every call (a stream counts its draws), so a second call cuts
    the same crops."""
    def make():
        gen = streams(off, len(chunk)) if callable(streams) else streams
        return model.train_batch(sampler, chunk, labels[chunk], gen)
    return make


def deiqt_init_(module: nn.Module) -> None:
    """DEIQT's init: trunc-normal(0.02) Linear weights with zero bias, LayerNorm (1, 0)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
