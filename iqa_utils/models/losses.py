"""Loss terms of the three models, as pure functions on tensors (each checked on hand-computed cases).

Regression lives in models/base.py (`regression_loss`); this module holds the contrastive terms.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------------------
# CSFIQA: scale contrastive learning (SCL) and noise sample matching (NSM)
# ---------------------------------------------------------------------------------------------------
# Only Eq. 1-3's ingredients are known (reviews: MOS-based pairwise distances, gamma1 = 0.2,
# gamma2 = 0.7, "identical to InfoNCE", temperature tau, weights lambda and [alpha, beta]). The forms
# below are the reconstruction of docs/csfiqa.md, "Losses and equations" (decisions D7-D13).

def label_distance(q: torch.Tensor, mode: str = "batch_minmax", label_range=None,
                   eps: float = 1e-8) -> torch.Tensor:
    """Eq. 1 (D7): (B, B) relative label distance in [0, 1]. batch_minmax: |qi-qj| / (max-min) of the
    batch; dataset_range: / (hi - lo) of `label_range`; rank: |rank_i - rank_j| / (B - 1)."""
    q = q.float().view(-1)
    if mode == "batch_minmax":
        return (q[:, None] - q[None, :]).abs() / (q.max() - q.min() + eps)
    if mode == "dataset_range":
        if label_range is None:
            raise ValueError("label_distance='dataset_range' needs the dataset's label range")
        lo, hi = label_range
        return ((q[:, None] - q[None, :]).abs() / (abs(hi - lo) + eps)).clamp(max=1.0)
    if mode == "rank":
        r = q.argsort().argsort().float()
        return (r[:, None] - r[None, :]).abs() / max(len(q) - 1, 1)
    raise ValueError(f"unknown label distance {mode!r}; choose batch_minmax, dataset_range or rank")


def scl_masks(d: torch.Tensor, gamma1: float = 0.2, gamma2: float = 0.7,
              exclude_self: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 2 (D8): positives d < gamma1, negatives d > gamma2; pairs in between are ignored.
    exclude_self drops the diagonal (intra-scale: an embedding is not its own positive)."""
    pos, neg = d < gamma1, d > gamma2
    if exclude_self:
        eye = torch.eye(len(d), dtype=torch.bool, device=d.device)
        pos = pos & ~eye
        neg = neg & ~eye
    return pos, neg


def info_nce(anchors: torch.Tensor, cands: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor,
             tau: float = 0.1, mode: str = "multi_positive") -> tuple[torch.Tensor, int]:
    """Eq. 3 (D9): InfoNCE with several positives. anchors (..., B, D), cands (..., M, D), both
    L2-normalised; pos/neg (..., B, M) bool or float weights (a weight w scales that pair's exp term; NSM
    uses soft ones). Leading dims are independent problems (regional NSM: one per region).
    multi_positive: L_i = -sum_p w_p log[e^{s_ip} / (e^{s_ip} + sum_n w_n e^{s_in})] / sum_p w_p;
    supcon: the denominator holds every positive and negative.
    Mean over anchors with at least one positive and one negative; returns (loss, number of anchors as a
    0-d tensor: nothing here reads a value back to the host, so a GPU step never waits on it)."""
    pos, neg = pos.float(), neg.float()
    s = anchors @ cands.transpose(-2, -1) / tau                              # (..., B, M)
    m = s.detach().masked_fill((pos + neg) == 0, float("-inf")).amax(-1, keepdim=True)
    m = torch.nan_to_num(m, neginf=0.0)                                      # stabiliser, cancels out
    e = torch.exp(s - m)
    neg_sum = (neg * e).sum(-1, keepdim=True)
    if mode == "multi_positive":
        denom = e + neg_sum
    elif mode == "supcon":
        denom = (pos * e).sum(-1, keepdim=True) + neg_sum
    else:
        raise ValueError(f"unknown infonce {mode!r}; choose multi_positive or supcon")
    log_p = (s - m) - torch.log(denom.clamp_min(1e-30))
    wsum = pos.sum(-1)
    valid = (wsum > 0) & (neg.sum(-1) > 0)
    per_anchor = torch.where(valid, -(pos * log_p).sum(-1) / wsum.clamp_min(1e-12), 0.0)
    n = valid.sum()
    return per_anchor.sum() / n.clamp_min(1), n         # 0 (with a graph) when no anchor is valid


def nsm_pooled(z_small: torch.Tensor, z_large: torch.Tensor) -> torch.Tensor:
    """NSM, pooled (D13): per image, cosine similarity of its two scales' embeddings; images below
    batch mean - 1 std (population std) are noise samples. Returns (B,) weights in {0, 1}."""
    sim = F.cosine_similarity(z_small.detach(), z_large.detach(), dim=-1)
    if len(sim) < 2:
        return torch.zeros_like(sim)
    thr = sim.mean() - sim.std(correction=0)
    return (sim < thr).float()


def align_grids(tok_small: torch.Tensor, tok_large: torch.Tensor, grid_small, grid_large):
    """Token grids (B, h*w, C) of both scales average-pooled to the coarser common grid -> (B, R, C) each."""
    h, w = min(grid_small[0], grid_large[0]), min(grid_small[1], grid_large[1])

    def pool(t, g):
        t = t.transpose(1, 2).reshape(t.shape[0], t.shape[2], g[0], g[1])
        return F.adaptive_avg_pool2d(t, (h, w)).flatten(2).transpose(1, 2)
    return pool(tok_small, grid_small), pool(tok_large, grid_large)


def nsm_regional(r_small: torch.Tensor, r_large: torch.Tensor, q: float = 0.25):
    """NSM's noise regions (D13) by the cosine of aligned region embeddings r_* (B, R, D) (nsm_input
    "projected"): `noise_regions` of their similarity."""
    return noise_regions(F.cosine_similarity(r_small.detach(), r_large.detach(), dim=-1), q)


def noise_regions(sim: torch.Tensor, q: float = 0.25):
    """The batch-wide least-similar q-share of regions (ceil(q * B * R), at least one) of a (B, R)
    cross-scale similarity are noise; an image's weight is the share of its regions among them
    ("regional_weight" uses it on the pooled pair). Returns ((B,) weights in [0, 1], (B, R) bool mask)."""
    k = max(1, int(torch.ceil(torch.tensor(q * sim.numel())).item()))
    idx = sim.flatten().topk(k, largest=False).indices
    hard = torch.zeros(sim.numel(), dtype=torch.bool, device=sim.device)
    hard[idx] = True
    hard = hard.view_as(sim)
    return hard.float().mean(1), hard


def region_agreement(t_small: torch.Tensor, t_large: torch.Tensor) -> torch.Tensor:
    """(B, R) cross-scale agreement of aligned region tokens t_* (B, R, C_*) whose widths may differ
    (nsm_input "tokens", D13): the correlation, over the image's other regions, of how similar region r
    is to each of them at the small scale and at the large scale. A region whose relations to the rest of
    its image change across scales scores low. Detached: the selection takes no gradient."""
    def profile(t):
        t = F.normalize(t.detach().float(), dim=-1)
        g = t @ t.transpose(1, 2)                                            # (B, R, R) cosines
        off = ~torch.eye(g.shape[-1], dtype=torch.bool, device=g.device)
        g = torch.where(off, g, torch.zeros_like(g))
        mean = g.sum(-1, keepdim=True) / off.sum(-1).clamp_min(1)
        return torch.where(off, g - mean, torch.zeros_like(g))               # centred, self left out
    return F.cosine_similarity(profile(t_small), profile(t_large), dim=-1, eps=1e-8)


def nsm_regional_loss(r_small: torch.Tensor, r_large: torch.Tensor, d: torch.Tensor, noise: torch.Tensor, *,
                      gamma1: float = 0.2, gamma2: float = 0.7, tau: float = 0.1,
                      infonce: str = "multi_positive") -> tuple[torch.Tensor, int]:
    """NSM, regional (D13): InfoNCE per region r with small-scale region (i, r) as the anchor and
    large-scale regions r of the batch as candidates: positives are the same region of image i (unless it
    is a noise region, `noise` (B, R) bool, then it is a negative) and region r of images with d < gamma1;
    negatives are region r of images with d > gamma2 (Eq. 2's thresholds on the (B, B) label distance d).
    Only the same region position is compared, which keeps the cost at R * B^2."""
    eye = torch.eye(len(d), dtype=torch.bool, device=d.device)
    pos, neg = scl_masks(d, gamma1, gamma2, exclude_self=True)               # (B, B), self excluded
    own = eye.unsqueeze(0) & noise.t().unsqueeze(-1)                        # (R, B, B): own region is noise
    pos_r = pos.unsqueeze(0) | (eye.unsqueeze(0) & ~own)
    neg_r = neg.unsqueeze(0) | own
    return info_nce(r_small.transpose(0, 1), r_large.transpose(0, 1), pos_r, neg_r, tau, infonce)


def nsm_qfm(z_small: torch.Tensor, z_large: torch.Tensor, d: torch.Tensor, gamma2: float = 0.7,
            weight: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """NSM, QFM reading (D13; after the same group's QFM-IQM, ICML 2024): a cross-scale pair (small i,
    large j), i != j, is a noise sample when its features are similar (cosine above the batch mean + 1
    population std of the off-diagonal cosines) although its labels differ by more than gamma2 - the
    case where "similar features mean similar quality" fails. Noise pairs count `weight` times among
    the negatives. Returns ((B, B) negative weights, (B, B) bool noise mask)."""
    sim = z_small.detach().float() @ z_large.detach().float().t()
    off = ~torch.eye(len(sim), dtype=torch.bool, device=sim.device)
    if off.sum() < 2:
        return torch.ones_like(sim), torch.zeros_like(off)
    vals = sim[off]
    noise = off & (d > gamma2) & (sim > vals.mean() + vals.std(correction=0))
    return 1.0 + (weight - 1.0) * noise.float(), noise


def _inter_masks(d: torch.Tensor, gamma1: float, gamma2: float, noise: torch.Tensor | None):
    """Eq. 2 for cross-scale pairs, self included: the same image's other-scale view (d = 0) is a
    positive, unless NSM's `noise` (B,) in [0, 1] moves it to the negatives with that weight."""
    pos_x, neg_x = scl_masks(d, gamma1, gamma2, exclude_self=False)
    pos_x, neg_x = pos_x.float(), neg_x.float()
    if noise is not None:
        eye = torch.eye(len(d), device=d.device)
        noise = noise.float().view(-1)
        pos_x = pos_x * (1 - eye) + eye * (1 - noise)[:, None]
        neg_x = neg_x * (1 - eye) + eye * noise[:, None]
    return pos_x, neg_x


def scl_loss(z_small: torch.Tensor, z_large: torch.Tensor, q: torch.Tensor, *, gamma1: float = 0.2,
             gamma2: float = 0.7, tau: float = 0.1, alpha: float = 1.0, beta: float = 1.0,
             noise: torch.Tensor | None = None, qfm_weight: float | None = None, regions=None,
             distance: str = "batch_minmax", label_range=None,
             infonce: str = "multi_positive") -> tuple[torch.Tensor, dict]:
    """L_SCL = alpha * L_intra + beta * L_inter (D11) on L2-normalised (B, D) embeddings of two scales.

    Intra: S-S and L-L (self excluded), averaged. Inter: S->L and L->S anchors, averaged. NSM (D13,
    reconstruction), one of: `noise` (B,) (pooled, regional_weight) moves the same image's other-scale
    pair from the positives to the negatives with that weight; `qfm_weight` counts the noise pairs of
    `nsm_qfm` that many times among the inter negatives; `regions` = (r_small (B, R, D), r_large,
    noise mask (B, R)) adds `nsm_regional_loss` to L_inter.
    z_small=None (single-scale ablation): intra L-L of the one scale only, no inter term."""
    d = label_distance(q, distance, label_range)
    pos, neg = scl_masks(d, gamma1, gamma2, exclude_self=True)
    if z_small is None:
        intra, n = info_nce(z_large, z_large, pos, neg, tau, infonce)
        return alpha * intra, {"loss_intra": intra.detach(), "scl_anchors": n}
    l_ss, n_ss = info_nce(z_small, z_small, pos, neg, tau, infonce)
    l_ll, n_ll = info_nce(z_large, z_large, pos, neg, tau, infonce)
    intra = (l_ss + l_ll) / 2
    pos_x, neg_x = _inter_masks(d, gamma1, gamma2, noise)
    logs = {} if noise is None else {"nsm_noise": noise.float().mean().detach()}
    if qfm_weight is not None:
        w, qfm_noise = nsm_qfm(z_small, z_large, d, gamma2, qfm_weight)
        neg_x = neg_x * w
        logs["nsm_noise"] = qfm_noise.float().mean().detach()
    l_sl, n_sl = info_nce(z_small, z_large, pos_x, neg_x, tau, infonce)
    l_ls, n_ls = info_nce(z_large, z_small, pos_x.t(), neg_x.t(), tau, infonce)
    inter, n_x = (l_sl + l_ls) / 2, n_sl + n_ls
    if regions is not None:
        l_r, n_r = nsm_regional_loss(regions[0], regions[1], d, regions[2], gamma1=gamma1, gamma2=gamma2,
                                     tau=tau, infonce=infonce)
        inter, n_x = inter + l_r, n_x + n_r
        logs.update({"loss_nsm": l_r.detach(), "nsm_noise": regions[2].float().mean().detach()})
    logs.update({"loss_intra": intra.detach(), "loss_inter": inter.detach(), "scl_anchors": n_ss + n_ll + n_x})
    return alpha * intra + beta * inter, logs


# ---------------------------------------------------------------------------------------------------
# LML-IQA: local-manifold contrastive loss
# ---------------------------------------------------------------------------------------------------
# (section owned by the LML-IQA model file's author)
# Reconstruction: the paper's equations are unknown (docs/lmliqa.md, "Losses"). What the text
# fixes is the role of each sample: the salient crop is the positive, the other crops of the same image
# are intra-class negatives, crops of other images are inter-class negatives.

def _weighted_info_nce(logits: torch.Tensor, log_w: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """-log(e^{l_pos} / sum_j w_j e^{l_j}) per row. log_w is -inf where a column is not in the
    denominator; the positive column must have weight 1 (log_w 0)."""
    l_pos = logits.gather(1, pos.view(-1, 1)).squeeze(1)
    return torch.logsumexp(logits + log_w, dim=1) - l_pos


def _with_queue(logits: torch.Tensor, log_w: torch.Tensor, rows: torch.Tensor, queue: torch.Tensor | None,
                valid: torch.Tensor | None, tau: float):
    """Append a memory queue's entries (Q, D) as extra inter-image negatives of the anchor `rows` (R, D),
    weight 1 where `valid` (R, Q) (filled, and not a crop of the anchor's own image), else left out."""
    if queue is None:
        return logits, log_w
    q_logits = rows @ queue.to(rows.dtype).t() / tau
    q_log_w = torch.zeros_like(q_logits).masked_fill(~valid, float("-inf"))
    return torch.cat([logits, q_logits], 1), torch.cat([log_w, q_log_w], 1)


def local_manifold_loss(anchor: torch.Tensor, crops: torch.Tensor, pos_index: torch.Tensor, tau: float,
                        w_intra: float = 1.0, intra: bool = True, inter: bool = True,
                        queue: torch.Tensor | None = None, queue_valid: torch.Tensor | None = None) -> torch.Tensor:
    """LML-IQA local-manifold InfoNCE (default reading, D5 "single"; reconstruction).

    anchor (B, D): one embedding per image (the global view by default, D3).
    crops (B, K, D): the K candidate crops of each image. pos_index (B,): the salient crop of each.
    For image i:
        L_i = -log[ e^{a_i.p_i/tau} / (e^{a_i.p_i/tau} + w_intra * sum_{k != s_i} e^{a_i.c_ik/tau}
                                                      + sum_{j != i, all k} e^{a_i.c_jk/tau}) ]
    `intra` / `inter` drop the respective negatives from the denominator (ablations). Mean over i.
    queue (Q, D), queue_valid (B, Q) bool: past crop embeddings added to the inter negatives (D16).
    Embeddings are expected L2-normalised (the caller does it).
    """
    B, K, D = crops.shape
    logits = anchor @ crops.reshape(B * K, D).t() / tau                    # (B, B*K)
    col_img = torch.arange(B, device=crops.device).repeat_interleave(K)    # image of each column
    row_img = torch.arange(B, device=crops.device).view(B, 1)
    pos_col = row_img.view(-1) * K + pos_index.to(crops.device).long()
    same = col_img.view(1, -1) == row_img
    w = torch.zeros(B, B * K, device=crops.device, dtype=logits.dtype)
    if intra:
        w = torch.where(same, torch.full_like(w, float(w_intra)), w)
    if inter:
        w = torch.where(~same, torch.ones_like(w), w)
    w.scatter_(1, pos_col.view(-1, 1), 1.0)
    log_w = w.log()
    if inter:
        logits, log_w = _with_queue(logits, log_w, anchor, queue, queue_valid, tau)
    return _weighted_info_nce(logits, log_w, pos_col).mean()


def local_manifold_two_term(crops: torch.Tensor, pos_index: torch.Tensor, pos_aug: torch.Tensor, tau: float,
                            w_intra: float = 1.0, intra: bool = True, inter: bool = True,
                            queue: torch.Tensor | None = None, queue_valid: torch.Tensor | None = None
                            ) -> torch.Tensor:
    """The v1 reading (D5 "two_term"; reconstruction): L_pull + L_intra.

    L_pull: every non-salient crop c_ik is an anchor; its positive is the salient crop c_{i,s_i}, its
        negatives are all crops of the other images (dropped with inter=False, which leaves only the
        positive in the denominator, i.e. a zero term).
    L_intra: the salient crop is the anchor, pos_aug (B, D) (an augmented copy of it, e.g. flipped) the
        positive, the other crops of the same image the negatives (weighted w_intra). This keeps the
        crops of an image from collapsing onto one point. Dropped with intra=False.
    crops (B, K, D), pos_index (B,), all L2-normalised; queue / queue_valid (B, Q) as in
    `local_manifold_loss`, extra negatives of L_pull. Returns the sum of the two means.
    """
    B, K, D = crops.shape
    dev = crops.device
    pos_index = pos_index.to(dev).long()
    flat = crops.reshape(B * K, D)
    img = torch.arange(B, device=dev).repeat_interleave(K)
    k_of = torch.arange(K, device=dev).repeat(B)
    is_sal = k_of == pos_index[img]
    total = crops.new_zeros(())
    # pull: rows = non-salient crops; columns = the B salient crops then every crop
    # the B*(K-1) non-salient crops in order; a stable sort instead of nonzero(), which waits for the GPU
    rows = torch.argsort(is_sal.to(torch.uint8), stable=True)[:B * (K - 1)]
    if K > 1 and inter:
        sal = crops[torch.arange(B, device=dev), pos_index]                   # (B, D)
        cols = torch.cat([sal, flat])                                          # (B + B*K, D)
        logits = flat[rows] @ cols.t() / tau
        col_img = torch.cat([torch.arange(B, device=dev), img])
        w = torch.zeros_like(logits)
        w[:, B:] = (col_img[B:].view(1, -1) != img[rows].view(-1, 1)).to(w.dtype)   # other images' crops
        pos = img[rows]
        w.scatter_(1, pos.view(-1, 1), 1.0)
        valid = queue_valid[img[rows]] if queue is not None else None
        logits, log_w = _with_queue(logits, w.log(), flat[rows], queue, valid, tau)
        total = total + _weighted_info_nce(logits, log_w, pos).mean()
    if intra and K > 1:
        sal = crops[torch.arange(B, device=dev), pos_index]
        # columns: [pos_aug_i, c_i1..c_iK]; the salient crop itself is masked out
        cols = torch.cat([pos_aug.unsqueeze(1), crops], 1)                    # (B, 1+K, D)
        logits = torch.einsum("bd,bkd->bk", sal, cols) / tau
        w = torch.full_like(logits, float(w_intra))
        w[:, 0] = 1.0
        w.scatter_(1, (pos_index + 1).view(-1, 1), 0.0)
        total = total + _weighted_info_nce(logits, w.log(), torch.zeros(B, dtype=torch.long, device=dev)).mean()
    return total
