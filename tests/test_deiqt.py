"""DEIQT: size, decoder structure, strict loading of DeiT-III / timm encoder weights."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from iqa_utils.config.check import make_config
from iqa_utils.models.deiqt import DEIQT, build_vit, float32_linear
from iqa_utils.models.pretrained import WeightsError, load_encoder_weights
from iqa_utils.models.registry import create_model


def test_full_size_parameter_count():
    with torch.device("meta"):                       # shapes only: no memory, no init cost
        model = DEIQT("small", 224)
    assert sum(p.numel() for p in model.parameters()) == 24_043_776
    assert sum(p.numel() for p in model.encoder.parameters()) == 21_674_496
    layer = model.decoder.layer
    assert model.decoder.queries.shape == (1, 6, 384)
    assert layer.self_attn.num_heads == 6 and layer.multihead_attn.num_heads == 6
    assert layer.linear1.out_features == 1536 and layer.norm_first and layer.norm1.eps == 1e-5
    assert model.decoder.score.bias is None
    assert model.encoder.pos_embed.shape == (1, 196, 384)      # patches only: no position on CLS


def test_decoder_adds_cls_to_queries_and_reads_patches_only():
    torch.manual_seed(0)
    model = DEIQT("tiny", 32).eval()
    x = torch.randn(3, 3, 32, 32)
    score, feats = model(x, return_features=True)
    cls, patches = model.features(x)
    assert patches.shape == (3, 16, 48) and feats["cls"].shape == (3, 48)   # 8-px patches; CLS not in the memory
    d = model.decoder
    panel = d.layer(d.queries + cls[:, None], patches)
    torch.testing.assert_close(score, d.score(panel).mean(1).squeeze(-1))
    assert feats["panel"].shape == (3, 6, 48) and score.shape == (3,)
    # without the CLS term the scores change: it is really added
    assert not torch.allclose(score, d.score(d.layer(d.queries.expand(3, -1, -1), patches)).mean(1).squeeze(-1))


def _source_state(with_head=True):
    torch.manual_seed(1)
    sd = {k: torch.randn_like(v) for k, v in build_vit("tiny", 32).state_dict().items()}
    if with_head:
        sd["head.weight"], sd["head.bias"] = torch.randn(1000, 48), torch.randn(1000)
    return sd


def _check_loaded(encoder, sd):
    own = encoder.state_dict()
    assert all(torch.equal(own[k], sd[k]) for k in own)


def test_load_deit_pth_with_gamma_names(tmp_path):
    sd = _source_state()
    deit = {k.replace(".ls1.gamma", ".gamma_1").replace(".ls2.gamma", ".gamma_2"): v for k, v in sd.items()}
    assert any(".gamma_1" in k for k in deit)
    torch.save({"model": deit, "epoch": 800}, tmp_path / "deit_3_small_224_1k.pth")
    model = DEIQT("tiny", 32)
    load_encoder_weights(model.encoder, str(tmp_path / "deit_3_small_224_1k.pth"))
    _check_loaded(model.encoder, sd)


def test_load_timm_safetensors_and_through_config(tmp_path):
    sd = _source_state()
    save_file(sd, str(tmp_path / "model.safetensors"))
    cfg = make_config("smoke", "deiqt", {"data.crop_size": 32, "model.pretrained": True,
                                         "model.weights": str(tmp_path)})      # a folder holding the file
    model = create_model(cfg)
    _check_loaded(model.encoder, sd)


def test_strict_loading(tmp_path):
    extra = _source_state()
    extra["blocks.0.attn.extra"] = torch.zeros(1)
    save_file(extra, str(tmp_path / "extra.safetensors"))
    with pytest.raises(WeightsError, match="unexpected"):
        load_encoder_weights(DEIQT("tiny", 32).encoder, str(tmp_path / "extra.safetensors"))
    missing = _source_state()
    del missing["norm.weight"]
    save_file(missing, str(tmp_path / "missing.safetensors"))
    with pytest.raises(WeightsError, match="missing \\['norm.weight'\\]"):
        load_encoder_weights(DEIQT("tiny", 32).encoder, str(tmp_path / "missing.safetensors"))
    wrong = _source_state()
    wrong["pos_embed"] = torch.zeros(1, 9, 48)
    save_file(wrong, str(tmp_path / "wrong.safetensors"))
    with pytest.raises(WeightsError, match="wrong shape"):
        load_encoder_weights(DEIQT("tiny", 32).encoder, str(tmp_path / "wrong.safetensors"))


def test_missing_file_is_one_clear_sentence(tmp_path):
    with pytest.raises(WeightsError) as e:
        load_encoder_weights(DEIQT("tiny", 32).encoder, str(tmp_path / "deit_3_small_224_1k.pth"))
    msg = str(e.value)
    assert "deit_3_small_224_1k.pth" in msg and "does not exist" in msg and "\n" not in msg


def test_float32_linear_stays_float32_under_autocast():
    torch.manual_seed(0)
    layer, x = nn.Linear(8, 1), torch.randn(4, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(x).dtype == torch.bfloat16
        out = float32_linear(layer, x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, layer(x))
