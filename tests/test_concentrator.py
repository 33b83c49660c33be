"""Information Concentrator: bidirectional, RoPE-free, frozen LLaMA layer; partial safetensors loader."""
import json
import shutil

import pytest
import skimage.data
import torch
from torch import nn

from iqa_utils.config.check import make_config
from iqa_utils.models import create_model, pretrained
from iqa_utils.models.concentrator import (
    TINY_LLAMA,
    InformationConcentrator,
    WeightsError,
    build_concentrator,
    build_llama_layer,
    load_llama_layer,
)


def _ic(mode="llama", dim=24):
    layer, norm = build_llama_layer(TINY_LLAMA, seed=0)
    return InformationConcentrator(dim, mode, layer, norm)


def test_attention_is_bidirectional():
    ic = _ic()
    assert ic.llama.self_attn.is_causal is False
    x = torch.randn(2, 6, 24)
    x2 = x.clone()
    x2[:, -1] += 1.0                     # change only the last token
    with torch.no_grad():
        d = (ic(x)[:, 0] - ic(x2)[:, 0]).abs().max()
    assert d > 1e-4                      # a causal layer would leave token 0 unchanged


def test_rope_removed_permutation_equivariant():
    ic = _ic()
    x = torch.randn(1, 7, 24)
    perm = torch.randperm(7)
    with torch.no_grad():
        torch.testing.assert_close(ic(x)[:, perm], ic(x[:, perm]), rtol=1e-4, atol=1e-5)


def test_seeded_tiny_layer_and_modes():
    a, _ = build_llama_layer(TINY_LLAMA, seed=3)
    b, _ = build_llama_layer(TINY_LLAMA, seed=3)
    assert torch.equal(a.mlp.up_proj.weight, b.mlp.up_proj.weight)
    x = torch.randn(2, 5, 24)
    assert torch.equal(build_concentrator(24, "off")(x), x)
    tb = build_concentrator(24, "trainable_block", num_heads=4)
    assert tb(x).shape == x.shape and all(p.requires_grad for p in tb.parameters())
    ic = _ic("llama")
    res = InformationConcentrator(24, "llama_residual", ic.llama, ic.llama_norm)
    res.w1.load_state_dict(ic.w1.state_dict())
    res.w2.load_state_dict(ic.w2.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(res(x), x + ic(x))
    with pytest.raises(WeightsError, match="ic_weights"):
        build_concentrator(24, "llama", tiny=False)


def test_frozen_layer_stays_in_eval_and_bf16():
    ic = _ic()
    ic.train()
    assert ic.training and not ic.llama.training
    layer, norm = build_llama_layer(TINY_LLAMA, seed=0, dtype=torch.bfloat16)
    ic16 = InformationConcentrator(24, "llama", layer, norm)
    y = ic16(torch.randn(2, 5, 24))
    assert y.dtype == torch.float32 and ic16.frozen_dtype == torch.bfloat16
    y.sum().backward()
    assert ic16.w1.weight.grad is not None and layer.mlp.up_proj.weight.grad is None


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=172, num_attention_heads=4,
                      num_key_value_heads=4, num_hidden_layers=4, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        model.model.norm.weight.uniform_(0.5, 1.5)        # a final-norm gain that is not all ones
    d = tmp_path_factory.mktemp("llama")
    model.save_pretrained(d, max_shard_size="150KB")
    return d, model


def test_partial_loader_matches_whole_model(tiny_ckpt):
    d, model = tiny_ckpt
    index = json.loads((d / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) >= 3          # really sharded
    layer, norm = load_llama_layer(d, 3, dtype=torch.float32)
    ref = model.model.layers[3]
    sd, rsd = layer.state_dict(), ref.state_dict()
    assert sd.keys() == rsd.keys()
    for k in sd:
        assert torch.equal(sd[k], rsd[k]), k
    assert torch.equal(norm.weight, model.model.norm.weight)
    ref.self_attn.is_causal = False
    x = torch.randn(2, 5, 64)
    pe = (torch.ones(2, 5, 16), torch.zeros(2, 5, 16))
    with torch.no_grad():
        torch.testing.assert_close(layer(x, position_embeddings=pe), ref(x, position_embeddings=pe))


def test_partial_loader_errors(tiny_ckpt, tmp_path):
    d, _ = tiny_ckpt
    with pytest.raises(WeightsError, match="does not exist"):
        load_llama_layer(tmp_path / "nowhere", 3)
    with pytest.raises(WeightsError, match="layers"):
        load_llama_layer(d, 9)
    # a checkpoint whose index lacks one tensor of the layer
    import shutil
    bad = tmp_path / "bad"
    shutil.copytree(d, bad)
    index = json.loads((bad / "model.safetensors.index.json").read_text())
    del index["weight_map"]["model.layers.3.mlp.up_proj.weight"]
    (bad / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(WeightsError, match="up_proj"):
        load_llama_layer(bad, 3)
    # a shard file that is gone
    shutil.copy(d / "model.safetensors.index.json", bad / "model.safetensors.index.json")
    shard = index["weight_map"]["model.layers.3.self_attn.q_proj.weight"]
    (bad / shard).unlink()
    with pytest.raises(WeightsError, match=shard):
        load_llama_layer(bad, 3)


def test_hub_loader_fetches_only_needed_shards(tiny_ckpt, monkeypatch):
    d, model = tiny_ckpt
    fetched = []

    def fake_download(repo, filename, **kw):
        assert repo == "someone/llama-tiny"
        fetched.append(filename)
        return str(d / filename)
    import huggingface_hub
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.setattr(pretrained, "hub_offline", lambda: None)          # the fake hub is always there
    layer, _ = load_llama_layer("someone/llama-tiny", 1, dtype=torch.float32)
    wmap = json.loads((d / "model.safetensors.index.json").read_text())["weight_map"]
    needed = {v for k, v in wmap.items() if k.startswith("model.layers.1.") or k == "model.norm.weight"}
    shards = [f for f in fetched if f not in ("config.json", "model.safetensors.index.json")]
    assert set(shards) == needed and len(needed) < len(set(wmap.values()))
    assert torch.equal(layer.mlp.down_proj.weight, model.model.layers[1].mlp.down_proj.weight)


def test_llama_frozen_while_maps_train():
    from iqa_utils.config.check import make_config
    from iqa_utils.models import create_model
    torch.manual_seed(0)
    m = create_model(make_config("smoke", "csfiqa"))
    llama0 = {k: v.clone() for k, v in m.ic.llama.state_dict().items()}
    w1, w2 = m.ic.w1.weight.clone(), m.ic.w2.weight.clone()
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-3)
    x, y = torch.randn(4, 3, 96, 96), torch.tensor([10.0, 40.0, 60.0, 95.0])
    loss, _ = m.loss({"x": x, "y": y})
    loss.backward()
    assert all(p.grad is None for p in m.ic.llama.parameters())
    assert m.encoder.patch_embed[0].proj.weight.grad.abs().sum() > 0
    assert m.encoder.patch_embed[1].proj.weight.grad.abs().sum() > 0
    opt.step()
    for k, v in m.ic.llama.state_dict().items():
        assert torch.equal(v, llama0[k]), k
    assert not torch.equal(m.ic.w1.weight, w1) and not torch.equal(m.ic.w2.weight, w2)


def test_norm_arrangements(tiny_ckpt, tmp_path):
    d, model = tiny_ckpt
    x = torch.randn(2, 5, 24)
    # reference (LM4VisualEncoding): final RMSNorm at unit gain, frozen; trainable LayerNorm after W2
    ref = build_concentrator(24, "llama", weights=str(d), layer_idx=3, dtype="float32")
    assert torch.equal(ref.llama_norm.weight, torch.ones(64)) and not ref.llama_norm.weight.requires_grad
    assert isinstance(ref.out_norm, nn.LayerNorm) and ref.out_norm.weight.shape == (24,)
    assert {n for n, p in ref.named_parameters() if p.requires_grad} == {
        "w1.weight", "w2.weight", "out_norm.weight", "out_norm.bias"}
    y = ref(x)
    torch.testing.assert_close(y.mean(-1), torch.zeros(2, 5), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var(-1, correction=0), torch.ones(2, 5), atol=1e-3, rtol=0)
    # the kit's earlier arrangement: the checkpoint's final-norm gain, nothing after W2
    old = build_concentrator(24, "llama", weights=str(d), layer_idx=3, dtype="float32", ic_norm="llama_final_norm")
    assert torch.equal(old.llama_norm.weight, model.model.norm.weight) and not old.llama_norm.weight.requires_grad
    assert isinstance(old.out_norm, nn.Identity)
    assert {n for n, p in old.named_parameters() if p.requires_grad} == {"w1.weight", "w2.weight"}
    assert (old(x).var(-1, correction=0) - 1).abs().max() > 0.1
    # the reference arrangement never reads model.norm.weight
    bad = tmp_path / "nonorm"
    shutil.copytree(d, bad)
    index = json.loads((bad / "model.safetensors.index.json").read_text())
    del index["weight_map"]["model.norm.weight"]
    (bad / "model.safetensors.index.json").write_text(json.dumps(index))
    assert torch.equal(load_llama_layer(bad, 3, dtype=torch.float32, final_norm=False)[1].weight, torch.ones(64))
    with pytest.raises(WeightsError, match="final norm"):
        load_llama_layer(bad, 3, dtype=torch.float32)


def test_csfiqa_ic_norm_switch():
    ref = create_model(make_config("smoke", "csfiqa"))
    assert ref.csfiqa.ic_norm == "reference" and isinstance(ref.ic.out_norm, nn.LayerNorm)
    assert ref.ic.out_norm.weight.requires_grad and ref.ic.out_norm.weight.shape == (ref.dim,)
    old = create_model(make_config("smoke", "csfiqa", {"csfiqa.ic_norm": "llama_final_norm"}))
    assert isinstance(old.ic.out_norm, nn.Identity)
    n_ref = sum(p.numel() for p in ref.parameters() if p.requires_grad)
    assert n_ref - sum(p.numel() for p in old.parameters() if p.requires_grad) == 2 * ref.dim


def test_fp16_cards_run_the_frozen_layer_in_float32():
    """Cards without bf16 train under fp16 autocast: CSFIQA keeps its frozen LLaMA layer in float32 and
    outside autocast, so hidden states beyond fp16's range (65504; LLaMA's massive activations) stay
    finite; the same layer in fp16 overflows."""
    torch.manual_seed(0)
    x = torch.randn(2, 5, 24) * 30
    x[:, 0, :4] = 3e4                                      # w1 maps these to hidden states near 1e5
    model = create_model(make_config("smoke", "csfiqa", {"model.pretrained": False}))
    outs = {}
    for dtype in (torch.float16, torch.float32):
        ic = _ic()
        with torch.no_grad():
            ic.w1.weight.fill_(1.0)
        ic.llama.to(dtype)
        ic.llama_norm.to(dtype)
        if dtype == torch.float16:
            model.ic = ic
            model.fit_precision(torch.float16)            # what the engine does when amp is fp16
            assert ic.frozen_dtype == torch.float32
            ref = ic(x)
            half = _ic()
            half.load_state_dict(ic.state_dict())
            half.llama.half()
            half.llama_norm.half()
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
                outs["fp16 layer"] = half(x)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
            outs[dtype] = ic(x)
    assert torch.isfinite(outs[torch.float16]).all()
    torch.testing.assert_close(outs[torch.float16].float(), ref.detach().float(), rtol=2e-2, atol=2e-2)
    assert not torch.isfinite(outs["fp16 layer"]).all()


def test_tiny_stand_in_is_near_identity_on_realistic_activations():
    """The smoke stand-in acts as a pretrained layer does: on what the smoke CSFIQA feeds it (W1 . the
    tokens of a photo) it adds a small update to its residual stream instead of replacing it."""
    torch.manual_seed(0)
    m = create_model(make_config("smoke", "csfiqa", {"model.pretrained": False})).eval()
    photo = torch.from_numpy(skimage.data.astronaut()[100:292:2, 150:342:2].copy()).permute(2, 0, 1).float() / 255
    x = torch.stack([photo, photo.flip(-1)])
    x = (x - torch.tensor([0.485, 0.456, 0.406])[:, None, None]) / torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    seen = {}

    def hook(mod, args, out):
        seen["in"], seen["out"] = args[0], out[0] if isinstance(out, tuple) else out
    m.ic.llama.register_forward_hook(hook)
    with torch.no_grad():
        m(x)
    h, y = seen["in"], seen["out"]
    assert h.shape[-1] == TINY_LLAMA["hidden_size"] and h.std() > 0
    assert (y - h).norm() / h.norm() < 0.25          # PyTorch's default init: ~1.4
    assert torch.nn.functional.cosine_similarity(y, h, dim=-1).min() > 0.9
