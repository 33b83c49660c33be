"""What the CUDA training step relies on, checked on the CPU.

- CSFIQA's top-k attention through scaled_dot_product_attention equals the explicit formula.
- No training step waits for the device: every model's step (crops cut by the real CropSampler, loss,
  backward) runs on the meta device, where reading a value back (.item(), .tolist(), nonzero, bool())
  raises; and a dispatch mode flags the two things that would still make a CUDA step wait: a blocking
  host-to-device copy, and indexing a device tensor with a host index tensor.
"""
from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from iqa_utils.config.check import make_config
from iqa_utils.data.cache import open_store
from iqa_utils.data.store import CropSampler
from iqa_utils.models import create_model
from iqa_utils.models.csfiqa import topk_attention
from iqa_utils.training import engine

from helpers import tiny_manifest

aten = torch.ops.aten


def explicit_topk(q, k, v, keep):
    """The formula topk_attention computed before it used SDPA."""
    s = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5
    if keep is not None and keep < s.shape[-1]:
        s = s.masked_fill(s < s.topk(keep, dim=-1).values[..., -1:], float("-inf"))
    return s.softmax(-1) @ v


@pytest.mark.parametrize("keep", [1, 5, 13, 26, None])
def test_topk_attention_through_sdpa_matches_the_explicit_formula(keep):
    torch.manual_seed(keep or 0)
    qkv = [torch.randn(2, 3, 26, 16, requires_grad=True) for _ in range(3)]
    got, want = topk_attention(*qkv, keep), explicit_topk(*qkv, keep)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    g_got = torch.autograd.grad(got.square().sum(), qkv)
    g_want = torch.autograd.grad(want.square().sum(), qkv)
    for a, b in zip(g_got, g_want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=5e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):             # the training precision on CUDA
        got, want = topk_attention(*qkv, keep), explicit_topk(*qkv, keep)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want.float(), rtol=0.02, atol=0.02)


class DeviceWaits(TorchDispatchMode):
    """Records ops that make a CUDA step wait for the GPU: a blocking host-to-device copy (PyTorch
    synchronises the stream after it), and indexing a device tensor with host indices (copied blocking)."""

    def __init__(self):
        super().__init__()
        self.found = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        dev = [a.device.type if isinstance(a, torch.Tensor) else None for a in args[:2]]
        if func is aten._to_copy.default and dev[0] == "cpu" and str(kwargs.get("device")) == "meta" \
                and not kwargs.get("non_blocking"):
            self.found.append(f"blocking copy of {tuple(args[0].shape)}")
        if func is aten.copy_.default and dev == ["meta", "cpu"] and args[1].dim() and not args[2:3] == (True,):
            self.found.append(f"blocking copy_ of {tuple(args[1].shape)}")
        if func in (aten.index.Tensor, aten.index_put_.default, aten._index_put_impl_.default) and dev[0] == "meta" \
                and any(isinstance(i, torch.Tensor) and i.device.type == "cpu" for i in args[1]):
            self.found.append(f"{func} with host indices")
        return func(*args, **kwargs)


@pytest.fixture(scope="module")
def meta_sampler(tmp_path_factory):
    data = tiny_manifest(tmp_path_factory.mktemp("tiny"), n=10, size=(100, 120))
    return CropSampler(open_store(data, min_side=96, kind="ram", progress=False).to("meta"), device="meta")


STEPS = [("deiqt", {}), ("csfiqa", {}), ("csfiqa", {"csfiqa.nsm": "regional"}),
         ("csfiqa", {"csfiqa.scale_mode": "crop", "csfiqa.nsm": "pooled"}), ("lmliqa", {}), ("lmliqa", {"lmliqa.loss_form": "two_term"}),
         ("lmliqa", {"lmliqa.crop_mode": "multiscale", "lmliqa.saliency": "random"}),
         ("lmliqa", {"lmliqa.mutual": "pred_consistency", "lmliqa.anchor": "train_crop"})]


@pytest.mark.parametrize("name,over", STEPS, ids=[f"{n}-{'-'.join(map(str, o.values())) or 'default'}" for n, o in STEPS])
def test_training_step_never_waits_for_the_device(meta_sampler, name, over):
    model = create_model(make_config("smoke", name, over)).to("meta").train()
    idx, labels = torch.arange(16) % 10, torch.rand(10)
    with DeviceWaits() as waits:
        loss, logs = engine.forward_backward(model, meta_sampler, idx, labels=labels,
                                             streams=engine.crop_streams(0, 3), micro=8, device=torch.device("meta"))
        model.after_step()
    assert waits.found == []
    assert loss.device.type == "meta" and all(v.device.type == "meta" for v in logs.values())
