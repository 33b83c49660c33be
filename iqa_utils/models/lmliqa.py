"""LML-IQA: contrastive local-manifold learning on top of DEIQT (arXiv 2406.19247), reconstructed.

There is no public code and the method text is unknown; what the figure captions fix
(docs/lmliqa.md, "Data flow") is implemented as is, everything else is a named decision of
`LMLIQAConfig` (ids D1-D18):
    * the student is DEIQT (same group, DEIQT is the baseline of every comparison) [inferred];
    * a teacher finds the most salient region; its source is D2 (default: the EMA teacher's last-block
      CLS->patch attention on the global view, head mean) [reconstruction];
    * K random crops per image (D4: mirrored at random, any two overlapping by IoU <= max_iou); the
      salient one is the positive, the other crops of the same image are intra-class negatives, crops of
      other images (and, with a memory queue, earlier crops of other images: D16) inter-class negatives;
      the anchor is D3 (default: the student's embedding of the global view); loss form D5, projector
      D6, tau / weight D7;
    * the student decoder predicts the score (eval branch D11, default student);
    * teacher-student mutual learning through an EMA of the student (D8; optional prediction
      consistency term), teacher initialised as a copy of the student (D10).

Compute budget (D9). The engine lists every training image `crops_train` times per epoch and hands a
batch of B listed samples to `train_batch`. Per step, M = max(2, round(con_share * B / K)) distinct
images of the batch (the first ones in the shuffled order) get the contrastive views: K crops, the global
view (student, and teacher for the saliency) and their labels. Every crop the student sees is regressed
on its image's label.
    * "match_deiqt": the M*K crops take the place of M*K of the B regression crops (the other listed
      samples get one random crop each, the last (K-1)*M listed samples are not used in this step), so
      the student still regresses B crops per step and, in expectation over the shuffled listing, each
      image `crops_train` crops per epoch, as in DEIQT. Extra cost: M student + M teacher passes on the
      global views.
    * "extra": all B listed samples get their regression crop and the M*K crops come on top.
With a memory queue (D16) the teacher also encodes the step's M*K crops once (no grad) for its keys.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import get_ema_multi_avg_fn
from torchvision.transforms.functional import gaussian_blur

from .base import IQAModel, deiqt_init_, regression_loss
from .deiqt import DEIQT, PanelDecoder, build_vit, load_vit_weights, tokens_to_grid  # noqa: F401 (re-exported)
from .losses import float32, local_manifold_loss, local_manifold_two_term, over_sets
from .pretrained import WeightsError, read_state_dict
from .registry import register_model

# ---------------------------------------------------------------------------------------------------
# Saliency: maps on a grid of the global view, and the crop that covers the most of it
# ---------------------------------------------------------------------------------------------------

def salient_crop(saliency_map: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Index of the box with the highest mean saliency (eq. 1 of the reconstruction, docs/lmliqa.md, "Losses").

    saliency_map (B, h, w) (or (h, w)) covers the whole image; boxes (B, K, 4) (or (K, 4)) are
    (top, left, height, width) relative to the image, in [0, 1]. The mean is area-weighted: a grid cell
    counts by the fraction of it that the box covers, so boxes need not align with the grid.
    Returns (B,) long (or a 0-d tensor for unbatched input).
    """
    single = saliency_map.dim() == 2
    if single:
        saliency_map, boxes = saliency_map.unsqueeze(0), boxes.unsqueeze(0)
    B, h, w = saliency_map.shape
    boxes = boxes.to(saliency_map.device, saliency_map.dtype)

    def cover(start, length, n):                            # (B, K, n): covered share of each cell
        edges = torch.arange(n + 1, device=saliency_map.device, dtype=saliency_map.dtype) / n
        lo = torch.maximum(start.unsqueeze(-1), edges[:-1])
        hi = torch.minimum((start + length).unsqueeze(-1), edges[1:])
        return (hi - lo).clamp(min=0) * n

    ry = cover(boxes[..., 0], boxes[..., 2], h)             # (B, K, h)
    cx = cover(boxes[..., 1], boxes[..., 3], w)             # (B, K, w)
    mass = torch.einsum("bkh,bhw,bkw->bk", ry, saliency_map, cx)
    area = ry.sum(-1) * cx.sum(-1)
    idx = (mass / area.clamp(min=1e-12)).argmax(dim=1)
    return idx[0] if single else idx


def cls_attention(vit: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Last-block CLS->patch attention of a timm ViT, mean over heads, on the patch grid: (B, gh, gw).

    timm's fused attention does not return weights, so they are recomputed from the last block's qkv
    on the input the block's attention received (captured by a pre-hook on one normal forward).
    """
    blk = vit.blocks[-1]
    seen = {}
    handle = blk.attn.register_forward_pre_hook(lambda m, args: seen.__setitem__("x", args[0]))
    try:
        vit.forward_features(x)
    finally:
        handle.remove()
    a = blk.attn
    t = seen["x"]
    B, N, _ = t.shape
    qkv = a.qkv(t).reshape(B, N, 3, a.num_heads, a.head_dim).permute(2, 0, 3, 1, 4)
    q, k = a.q_norm(qkv[0]), a.k_norm(qkv[1])
    attn = ((q[:, :, :1] * a.scale) @ k.transpose(-2, -1)).softmax(-1)    # (B, H, 1, N)
    attn = attn[:, :, 0, vit.num_prefix_tokens:].mean(1)                  # (B, N patches)
    gh, gw = vit.patch_embed.grid_size
    return attn.reshape(B, gh, gw)


def decoder_attention(model: DEIQT, x: torch.Tensor) -> torch.Tensor:
    """Panel decoder cross-attention (queries -> patch tokens), mean over heads and queries: (B, gh, gw)."""
    mha = model.decoder.layer.multihead_attn
    seen = {}
    handle = mha.register_forward_pre_hook(lambda m, args: seen.__setitem__("qkv", args[:3]))
    try:
        model(x)
    finally:
        handle.remove()
    q, k, v = seen["qkv"]
    _, w = mha(q, k, v, need_weights=True, average_attn_weights=True)        # (B, Q, N)
    gh, gw = model.encoder.patch_embed.grid_size
    return w.mean(1).reshape(x.shape[0], gh, gw)


def spectral_residual(img: torch.Tensor, size: int = 64, avg: int = 3, sigma: float = 2.5) -> torch.Tensor:
    """Spectral-residual saliency (Hou & Zhang, CVPR 2007), written from the paper's description.

    img (B, C, H, W) or (B, H, W) -> (B, size, size) in [0, 1]. The grey image is shrunk to size x size;
    the residual is the log amplitude spectrum minus its local (avg x avg) mean; back-transformed with
    the original phase, squared, and smoothed with a Gaussian (sigma in pixels of the small image).
    """
    g = img.float().mean(1, keepdim=True) if img.dim() == 4 else img.float().unsqueeze(1)
    g = F.interpolate(g, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    spec = torch.fft.fft2(g)
    log_amp = torch.log(spec.abs().clamp(min=1e-8))
    local = F.avg_pool2d(F.pad(log_amp, (avg // 2,) * 4, mode="replicate"), avg, stride=1)
    s = torch.fft.ifft2(torch.polar(torch.exp(log_amp - local), spec.angle())).abs() ** 2
    r = max(1, int(math.ceil(3 * sigma)))
    s = gaussian_blur(s, [2 * r + 1, 2 * r + 1], [sigma, sigma]).squeeze(1)
    lo = s.flatten(1).min(1)[0].view(-1, 1, 1)
    hi = s.flatten(1).max(1)[0].view(-1, 1, 1)
    return (s - lo) / (hi - lo).clamp(min=1e-12)


# ---------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------

class ProjectionHead(nn.Module):
    """D6 default: Linear(dim, dim) - GELU - Linear(dim, out) (kit choice; dims per docs/lmliqa.md D6)."""

    def __init__(self, dim: int, out: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, out)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class LMLIQA(IQAModel):
    """Student DEIQT + projection head, and an EMA teacher (a copy of the student, never trained)."""

    def __init__(self, student: DEIQT, lmliqa, regression: str = "smooth_l1"):
        super().__init__()
        self.lmliqa = copy.deepcopy(lmliqa)
        self.regression = regression
        self.student = student
        self.input_size = student.input_size
        dim = student.encoder.embed_dim
        self.proj = ProjectionHead(dim, lmliqa.proj_dim) if lmliqa.proj_dim > 0 else nn.Identity()
        deiqt_init_(self.proj)
        self.eval_branch = lmliqa.eval_branch
        # D10: the teacher starts as an exact copy of the (possibly pretrained) student
        self.teacher = copy.deepcopy(student)
        self._ema = get_ema_multi_avg_fn(float(lmliqa.ema_momentum))
        self.teacher.requires_grad_(False)
        self.teacher.eval()
        # D16 "teacher": MoCo's momentum keys need the projector on the teacher's side too (an EMA copy)
        self.teacher_proj = None
        if lmliqa.queue_size > 0 and lmliqa.queue_source == "teacher":
            self.teacher_proj = copy.deepcopy(self.proj).requires_grad_(False)
        # D16: a ring buffer of past crop embeddings (and their store index) as extra inter-image
        # negatives; buffers, so checkpoints carry them and a resumed run matches an uninterrupted one
        if lmliqa.queue_size > 0:
            width = lmliqa.proj_dim if lmliqa.proj_dim > 0 else dim
            self.register_buffer("queue", torch.zeros(lmliqa.queue_size, width))
            self.register_buffer("queue_img", torch.full((lmliqa.queue_size,), -1, dtype=torch.long))
            self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []

    # ---- teacher ---------------------------------------------------------------------------------
    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()          # the teacher only ever infers
        return self

    @torch.no_grad()
    def after_step(self) -> None:
        """D16: the step's crop embeddings enter the queue. D8: teacher <- m * teacher + (1 - m) * student
        after every optimizer step (torch's EMA update, a lerp); buffers are copied. mutual == "off"
        keeps the teacher at its initialisation."""
        self._enqueue()
        if self.lmliqa.mutual == "off":
            return
        pairs = [(self.teacher, self.student)]
        if self.teacher_proj is not None:
            pairs.append((self.teacher_proj, self.proj))
        for t, s in pairs:
            self._ema(list(t.parameters()), [p.detach() for p in s.parameters()], 0)
        for bt, bs in zip(self.teacher.buffers(), self.student.buffers()):
            bt.copy_(bs)

    # ---- memory queue (D16) -------------------------------------------------------------------------
    def _queue_args(self, idx_con: torch.Tensor) -> dict:
        """The queue as loss arguments: entries valid for an anchor image when filled and not cut from
        that same image (an earlier crop of it would be a false negative)."""
        if self.lmliqa.queue_size == 0:
            return {}
        img = self.queue_img.view(1, -1)
        return {"queue": self.queue, "queue_valid": (img >= 0) & (img != idx_con.view(-1, 1).to(img.device))}

    @torch.no_grad()
    def _queue_keys(self, crops: torch.Tensor, z_crop: torch.Tensor) -> torch.Tensor:
        """The step's crops as queue entries (M*K, P): the EMA teacher's keys (one no-grad pass through
        the teacher and its projector, MoCo) or the student's detached embeddings ("student")."""
        if self.teacher_proj is None:
            return z_crop.detach().flatten(0, 1).float()
        _, feats = self.teacher(crops.flatten(0, 1), return_features=True)
        return self.embed(feats, self.teacher_proj)

    @torch.no_grad()
    def _enqueue(self) -> None:
        """Write the pending (detached) crop embeddings into the ring buffer, overwriting the oldest."""
        if not self._pending:
            return
        z = torch.cat([p[0] for p in self._pending])
        img = torch.cat([p[1] for p in self._pending])
        self._pending = []
        n = self.queue.shape[0]
        z, img = z[-n:], img[-n:]
        slots = (self.queue_ptr + torch.arange(len(z), device=self.queue.device)) % n
        self.queue[slots] = z.to(self.queue)
        self.queue_img[slots] = img.to(self.queue_img)
        self.queue_ptr.copy_((self.queue_ptr + len(z)) % n)

    def load_teacher(self, path: str) -> None:
        """D10 "checkpoint": the teacher starts from a trained DEIQT (two-stage); loaded strictly."""
        sd = read_state_dict(Path(path).expanduser())
        if any(k.startswith("student.") for k in sd):              # an LML-IQA checkpoint: take its student
            sd = {k[len("student."):]: v for k, v in sd.items() if k.startswith("student.")}
        try:
            self.teacher.load_state_dict(sd, strict=True)
        except RuntimeError as e:
            raise WeightsError(f"{path} is not a DEIQT checkpoint of this size: "
                               f"{str(e).splitlines()[0][:160]}") from None

    @torch.no_grad()
    def saliency(self, glob: torch.Tensor) -> torch.Tensor:
        """D2 saliency map of each global view, (M, h, w); "random" is handled in train_batch."""
        kind = self.lmliqa.saliency
        if kind == "teacher_cls_attn":
            return cls_attention(self.teacher.encoder, glob).float()
        if kind == "teacher_decoder_attn":
            return decoder_attention(self.teacher, glob).float()
        if kind == "spectral_residual":
            return spectral_residual(glob)
        raise ValueError(f"saliency {kind!r} has no map")

    # ---- inference -------------------------------------------------------------------------------
    def _branch(self) -> str:
        return "student" if self.training else self.eval_branch

    def forward(self, x: torch.Tensor, return_features: bool = False):
        """Scores (B,) from the D11 branch (always the student while training); feats from that
        branch (the student's for "mean"), plus feats["proj"], the student's contrastive embedding."""
        branch = self._branch()
        net = self.teacher if branch == "teacher" else self.student
        score, feats = net(x, return_features=True)
        if branch == "mean":
            score = 0.5 * (score + self.teacher(x))
        if not return_features:
            return score
        if branch != "teacher":
            feats["proj"] = self.embed(feats)
        return score, feats

    def embed(self, feats: dict, proj: nn.Module | None = None) -> torch.Tensor:
        """The L2-normalised contrastive embedding (D6) of one branch's features, by `proj` (the student's
        projector unless given)."""
        src = self.lmliqa.proj_source
        h = feats["cls"] if src == "cls" else feats["patches"].mean(1) if src == "patch_mean" \
            else feats["panel"].mean(1)
        return F.normalize((self.proj if proj is None else proj)(h).float(), dim=-1)

    def cam_points(self) -> list[tuple[nn.Module, int]]:
        """The evaluated branch's Grad-CAM point (the student for "student" and "mean")."""
        net = self.teacher if self._branch() == "teacher" else self.student
        return net.cam_points()

    def cam_reshape(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens_to_grid(tokens, self.student.encoder)

    # ---- training --------------------------------------------------------------------------------
    def contrastive_images(self, idx: torch.Tensor) -> torch.Tensor:
        """Positions in the batch of the M images that get the contrastive views (first distinct ones)."""
        B, K = idx.numel(), self.lmliqa.k_crops
        M = max(2, round(self.lmliqa.con_share * B / K))
        if self.lmliqa.budget == "match_deiqt":
            M = min(M, max(2, B // K))
        first = []
        seen = set()
        for pos, i in enumerate(idx.tolist()):
            if i not in seen:
                seen.add(i)
                first.append(pos)
            if len(first) == M:
                break
        return torch.tensor(first, dtype=torch.long)

    def roles(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(positions of the contrastive images, positions regressed on one random crop each) of a batch."""
        pick = self.contrastive_images(idx)
        if self.lmliqa.budget != "match_deiqt":
            return pick, torch.arange(idx.numel())
        rest = torch.ones(idx.numel(), dtype=torch.bool)
        rest[pick] = False
        return pick, rest.nonzero().view(-1)[:max(0, idx.numel() - pick.numel() * self.lmliqa.k_crops)]

    def train_batch(self, sampler, idx: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> dict:
        lmliqa, size = self.lmliqa, self.input_size
        idx = torch.as_tensor(idx, dtype=torch.long).view(-1).cpu()
        y = torch.as_tensor(y).view(-1)
        pick, rest = self.roles(idx)
        M, K = pick.numel(), lmliqa.k_crops
        flip = self.flip and lmliqa.flip_crops
        crops, boxes = sampler.crops_with_boxes(idx[pick], K, size, generator=generator, mode=lmliqa.crop_mode,
                                                flip=flip, max_iou=lmliqa.max_iou)
        dev = crops.device
        # host-to-device copies with non_blocking: a blocking one waits for the GPU to finish its queue
        batch = {"crops": crops, "boxes": boxes, "y_con": y[pick].to(dev, non_blocking=True), "idx": idx,
                 "pick": pick.to(dev, non_blocking=True),
                 "idx_con": idx[pick].to(dev, non_blocking=True), "glob": sampler.global_views(idx[pick], size)}
        # the regression crops (random crop + flip, as DEIQT)
        if rest.numel():
            batch["x"] = sampler.random_crops(idx[rest], size, flip=self.flip, generator=generator)
        else:
            batch["x"] = crops.new_zeros(0, 3, size, size)
        batch["y"] = y[rest].to(dev, non_blocking=True)
        if lmliqa.anchor == "train_crop":    # D3: the anchor is a regression crop of the image
            batch["anchor_x"] = sampler.random_crops(idx[pick], size, flip=self.flip, generator=generator)
        elif lmliqa.anchor == "native_crop":
            batch.update(self._native_anchor(sampler, idx[pick], batch["glob"], flip, generator))
        if lmliqa.saliency == "random":
            batch["rand_pos"] = torch.randint(K, (M,), generator=generator).to(dev, non_blocking=True)
        return batch

    def _native_anchor(self, sampler, idx, glob, flip: bool, generator) -> dict:
        """D3 "native_crop": an anchor at the crops' resolution (not the squashed global view), centred on
        the saliency peak of the global view (a random centre for saliency="random"); the map is kept
        so that the positive is chosen on the same map."""
        if self.lmliqa.saliency == "random":
            centres = torch.rand(len(idx), 2, generator=generator, dtype=torch.float64)
            return {"anchor_x": sampler.crops_at(idx, centres, self.input_size, flip, generator)}
        sal = self.saliency(glob)
        h, w = sal.shape[-2:]
        peak = sal.flatten(1).argmax(1).cpu()
        centres = torch.stack([(peak // w + 0.5) / h, (peak % w + 0.5) / w], 1)
        return {"anchor_x": sampler.crops_at(idx, centres, self.input_size, flip, generator), "sal_map": sal}

    # ---- the loss in two halves: per-sample terms of a chunk, the local-manifold sets of the step ------
    def step_batches(self, sampler, idx, labels, streams, micro: int, share: slice | None = None) -> list:
        """Which images get the contrastive views depends on the whole global batch, so the step's views
        are cut once for all of it (positions 0.. of the step's stream) and each chunk is a row slice: this
        process's share of the regression crops and of the contrastive images, cut in ceil(share/micro)
        chunks. Each chunk's terms are normalised by the step's totals (den_reg, den_mut), so the chunks
        of all ranks add up to the whole batch's: each weighs 1."""
        share = share or slice(0, len(idx))
        global_batch = len(idx)
        pick, rest = self.roles(torch.as_tensor(idx).view(-1).cpu())
        M, n_reg, K = pick.numel(), rest.numel(), self.lmliqa.k_crops
        anchored = self.lmliqa.loss_form == "single" and self.lmliqa.anchor in ("train_crop", "native_crop")
        dens = {"den_reg": n_reg + M * K + (M if anchored else 0), "den_mut": M * K}
        gen = streams(0, global_batch) if callable(streams) else streams
        whole: dict = {}

        def cut(r: slice, c: slice):
            def make():
                if not whole:
                    whole.update(self.train_batch(sampler, idx, labels[idx], gen))
                return {**_rows(whole, r, c), **dens}
            return make
        n = max(1, -(-(share.stop - share.start) // micro))
        reg_at = _bounds(n_reg * share.start // global_batch, n_reg * share.stop // global_batch, n)
        con_at = _bounds(M * share.start // global_batch, M * share.stop // global_batch, n)
        parts = [(slice(*r), slice(*c)) for r, c in zip(reg_at, con_at) if r[1] > r[0] or c[1] > c[0]]
        return [(1.0, cut(r, c)) for r, c in (parts or [(slice(0, 0), slice(0, 0))])]

    def has_set_loss(self) -> bool:
        return self.lmliqa.lambda_con > 0

    def step_terms(self, batch: dict):
        """Regression on every crop the chunk's student sees (and the mutual term); the embeddings of its
        contrastive images (anchor or augmented salient crop, K crops) with their salient crop index."""
        lmliqa = self.lmliqa
        crops, boxes = batch["crops"], batch["boxes"]
        M, K = crops.shape[:2]
        anchor_crop = lmliqa.loss_form == "single" and lmliqa.anchor in ("train_crop", "native_crop")
        views = [batch["x"], crops.flatten(0, 1)]
        if lmliqa.loss_form == "single":
            views.append(batch["anchor_x"] if anchor_crop else batch["glob"])
        n_reg, n_crop = batch["x"].shape[0], M * K
        pos = self._salient(batch, boxes) if M else torch.zeros(0, dtype=torch.long, device=crops.device)
        if lmliqa.loss_form == "two_term":   # augmented copy of the salient crop for the intra term
            views.append(crops[torch.arange(M, device=crops.device), pos].flip(-1))
        score, feats = self.student(torch.cat(views), return_features=True)
        z = self.embed(feats)
        pred = [score[:n_reg], score[n_reg:n_reg + n_crop]]
        target = [batch["y"], batch["y_con"].repeat_interleave(K)]
        if anchor_crop:
            pred.append(score[n_reg + n_crop:])
            target.append(batch["y_con"])
        n = n_reg + n_crop + (M if anchor_crop else 0)
        reg = regression_loss(torch.cat(pred), torch.cat(target).to(score.device), self.regression) * \
            (n / batch.get("den_reg", n)) if n else score.sum() * 0
        total, logs = reg, {"loss_reg": reg.detach()}
        if lmliqa.mutual == "pred_consistency" and M:
            # D8: student scores on the K crops vs the stop-grad teacher score on the salient crop (L1)
            with torch.no_grad():
                t = self.teacher(crops[torch.arange(M, device=crops.device), pos]).float()
            mut = (score[n_reg:n_reg + n_crop].float().view(M, K) - t.view(M, 1)).abs().sum() / \
                batch.get("den_mut", M * K)
            total = total + lmliqa.lambda_mut * mut
            logs["loss_mut"] = mut.detach()
        emb = {"anchor": z[n_reg + n_crop:], "crops": z[n_reg:n_reg + n_crop].view(M, K, -1)}
        meta = {"pos": pos, "idx_con": batch["idx_con"], "at": batch.get("pick", torch.arange(M))}
        if lmliqa.queue_size:                            # D16: this chunk's queue keys, enqueued after the step
            meta["keys"] = self._queue_keys(crops, emb["crops"]).view(M, K, z.shape[-1]) if M else \
                emb["crops"].detach().float()
        return total, emb, meta, logs

    def _salient(self, batch: dict, boxes: torch.Tensor) -> torch.Tensor:
        """D2: the salient crop of each contrastive image (teacher pass under no_grad)."""
        if self.lmliqa.saliency == "random":
            return batch["rand_pos"]
        return salient_crop(batch["sal_map"] if "sal_map" in batch else self.saliency(batch["glob"]), boxes)

    def set_loss(self, emb: dict, meta: dict):
        """lambda_con * L_con (D5) over the step's contrastive images, with the queue's negatives (D16);
        the step's queue keys (the teacher's, or the student's own: lmliqa.queue_source) wait for
        `after_step`, which enqueues them once per step. lmliqa.set_size
        (D19): the images of each set of that many listed samples compared among themselves."""
        lmliqa = self.lmliqa
        if lmliqa.queue_size:
            keys = meta["keys"]
            self._pending.append((keys.flatten(0, 1).float(), meta["idx_con"].repeat_interleave(keys.shape[1])))
        ids = meta["at"] // lmliqa.set_size if lmliqa.set_size else None
        return over_sets(self._local_manifold, emb, meta, ids)

    def _local_manifold(self, emb: dict, meta: dict):
        lmliqa = self.lmliqa
        with float32(emb["crops"]):
            q = self._queue_args(meta["idx_con"])
            a, c = emb["anchor"].float(), emb["crops"].float()
            if lmliqa.loss_form == "single":
                con = local_manifold_loss(a, c, meta["pos"], lmliqa.tau, lmliqa.w_intra,
                                          intra=lmliqa.intra_negatives, inter=lmliqa.inter_negatives, **q)
            else:
                con = local_manifold_two_term(c, meta["pos"], a, lmliqa.tau, lmliqa.w_intra,
                                              intra=lmliqa.intra_negatives, inter=lmliqa.inter_negatives, **q)
        return lmliqa.lambda_con * con, {"loss_con": con.detach()}

    def no_weight_decay(self) -> set[str]:
        return {"student." + n for n in self.student.no_weight_decay()}


def _bounds(lo: int, hi: int, n: int) -> list[tuple[int, int]]:
    """[lo, hi) cut in n consecutive near-equal parts."""
    cuts = [lo + (hi - lo) * k // n for k in range(n + 1)]
    return list(zip(cuts[:-1], cuts[1:]))


REG_KEYS = ("x", "y")
CON_KEYS = ("crops", "boxes", "y_con", "idx_con", "glob", "anchor_x", "sal_map", "rand_pos", "pick")


def _rows(batch: dict, reg: slice, con: slice) -> dict:
    """The regression rows `reg` and the contrastive images `con` of a batch of train_batch."""
    out = {k: v for k, v in batch.items() if k not in REG_KEYS + CON_KEYS}
    out.update({k: batch[k][reg] for k in REG_KEYS})
    out.update({k: batch[k][con] for k in CON_KEYS if k in batch})
    return out


@register_model("lmliqa", display="LML-IQA")
def lmliqa(cfg) -> LMLIQA:
    student = DEIQT(cfg.model.size, cfg.data.crop_size, cfg.train.regression_loss)
    if cfg.model.pretrained:
        load_vit_weights(student.encoder, cfg)
    model = LMLIQA(student, cfg.lmliqa, cfg.train.regression_loss)
    if cfg.lmliqa.teacher_init == "checkpoint":            # the config made sure a path is given
        model.load_teacher(cfg.lmliqa.teacher_checkpoint)
    return model
