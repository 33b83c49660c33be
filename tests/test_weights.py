"""Weights for machines without internet: stand-ins in the real formats, offline checks, the hub download
(a fake hub here), and the one setting that points the full-size profiles at the folder."""
import json
import shutil
import socket

import pytest
import torch

from iqa_utils.cli import main
from iqa_utils.config.check import make_config
from iqa_utils.models import create_model, pretrained, weights
from iqa_utils.models.pretrained import WEIGHTS_ENV, WeightsError


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory):
    return weights.write_stand_ins(tmp_path_factory.mktemp("w"), llama_layers=(15, 31))   # the paper profile's


def test_stand_ins_pass_the_check_and_load_through_the_profiles(stand_ins, monkeypatch):
    assert weights.check(stand_ins, (15, 31)) == []
    assert (stand_ins / "deit3_small_patch16_224.fb_in1k" / "deit_3_small_224_1k.pth").is_file()   # DeiT's own
    index = json.loads((stand_ins / "llama-7b" / weights.INDEX).read_text())["weight_map"]
    assert len(index) > 280                                   # every layer listed, one shard written
    monkeypatch.setenv(WEIGHTS_ENV, str(stand_ins))
    deiqt = create_model(make_config("paper", "deiqt"))
    pth = torch.load(stand_ins / "deit3_small_patch16_224.fb_in1k" / "deit_3_small_224_1k.pth", weights_only=True)
    assert torch.equal(deiqt.encoder.blocks[3].ls1.gamma, pth["model"]["blocks.3.gamma_1"])
    ic = create_model(make_config("paper", "csfiqa", {"csfiqa.ic": "llama", "csfiqa.afs": "dense"})).ic
    assert ic.llama.mlp.gate_proj.weight.shape == (11008, 4096) and not ic.llama.mlp.gate_proj.weight.requires_grad


def test_check_names_what_is_wrong(stand_ins, tmp_path):
    bad = tmp_path / "w"
    shutil.copytree(stand_ins, bad)
    shard = bad / "llama-7b" / "model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:1000])                       # truncated
    (bad / "crossvit_small_240.in1k" / "model.safetensors").unlink()
    problems = weights.check(bad, (15, 31))
    assert any(str(shard) in p for p in problems)
    assert any("crossvit_small_240.in1k" in p and "does not exist" in p for p in problems)
    assert any("layers.7" in p for p in weights.check(stand_ins, (7, 31)))     # a layer the shard lacks


def test_download_from_the_hub_records_checksums(stand_ins, tmp_path, monkeypatch, capsys):
    """A fake hub serves the stand-ins; the download keeps only what the kit reads, and --check verifies it."""
    import huggingface_hub
    hub = {"timm/deit3_small_patch16_224.fb_in1k": None, "timm/crossvit_small_240.in1k": "crossvit_small_240.in1k",
           "huggyllama/llama-7b": "llama-7b"}
    fetched = []

    def fake(repo, filename, local_dir=None, **kw):
        src = stand_ins / (hub[repo] or "") / filename
        if hub[repo] is None:                                     # DeiT: serve the .pth as model.safetensors
            from safetensors.torch import save_file

            from iqa_utils.models.pretrained import read_state_dict
            sd = read_state_dict(stand_ins / "deit3_small_patch16_224.fb_in1k" / "deit_3_small_224_1k.pth")
            src = tmp_path / "deit.safetensors"
            save_file({k.replace("gamma_1", "ls1.gamma").replace("gamma_2", "ls2.gamma"): v.contiguous()
                       for k, v in sd.items() if not k.startswith("head")}, str(src))
        fetched.append((repo, filename))
        dest = tmp_path / "W" / local_dir.split("/")[-1] / filename
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dest)
        return str(dest)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake)
    monkeypatch.setattr(pretrained, "hub_offline", lambda: None)          # the fake hub is always there
    assert main(["weights", "--dir", str(tmp_path / "W")]) == 0
    assert ("huggyllama/llama-7b", "model-00001-of-00002.safetensors") not in fetched   # only the needed shard
    assert f"{WEIGHTS_ENV}=" in capsys.readouterr().out
    sums = json.loads((tmp_path / "W" / weights.CHECKSUMS).read_text())["files"]
    assert len(sums) == 5
    assert main(["weights", "--dir", str(tmp_path / "W"), "--check"]) == 0
    cfg = tmp_path / "W" / "llama-7b" / "config.json"
    cfg.write_text(cfg.read_text().replace('"vocab_size": 32000', '"vocab_size": 32001'))
    assert main(["weights", "--dir", str(tmp_path / "W"), "--check"]) == 2
    assert "checksum" in capsys.readouterr().err


def test_a_missing_weights_folder_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path))
    with pytest.raises(WeightsError, match="iqa-kit weights --dir"):
        create_model(make_config("paper", "deiqt"))
    assert main(["train", "--profile", "paper", "--dataset", "LIVEC", "--data-root", str(tmp_path),
                 "--results-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("iqa-kit: ")


# ---- offline: a missing file fails at once, not after the hub client's retries ----------------------------
@pytest.fixture
def hub(monkeypatch, tmp_path):
    """The hub's endpoint set to a local port (`listening`: something answers; else nothing does), an empty
    hub cache, no proxy, no HF_HUB_OFFLINE; every hf_hub_download call recorded (then passed on)."""
    import huggingface_hub
    calls, real = [], huggingface_hub.hf_hub_download
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    for var in ("HF_HUB_OFFLINE", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    server = socket.create_server(("127.0.0.1", 0))

    def endpoint(listening: bool) -> str:
        port = server.getsockname()[1]
        if not listening:
            server.close()                                      # a closed port: the connection is refused
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{port}")
        pretrained._unreachable.cache_clear()
        return port
    yield pretrained, calls, endpoint
    server.close()
    pretrained._unreachable.cache_clear()


def test_unreachable_hub_is_probed_once_and_only_the_cache_is_read(hub, monkeypatch, tmp_path):
    pretrained, calls, endpoint = hub
    endpoint(listening=False)
    probes, connect = [], socket.create_connection
    monkeypatch.setattr(socket, "create_connection", lambda *a, **kw: probes.append(a) or connect(*a, **kw))
    for _ in range(2):
        with pytest.raises(WeightsError, match="could not get model.safetensors of 'someone/missing'.*"
                                               "127.0.0.1 cannot be reached"):
            pretrained.resolve_weights("someone/missing")
    snapshot = tmp_path / "hf" / "models--someone--cached" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").write_bytes(b"weights")
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("abc")
    assert pretrained.resolve_weights("someone/cached") == snapshot / "model.safetensors"   # the cache answers
    assert len(probes) == 1 and calls == []                    # one probe; the client never asked the network


def test_hf_hub_offline_is_honoured_and_a_reachable_hub_is_asked(hub, monkeypatch):
    pretrained, calls, endpoint = hub
    endpoint(listening=True)
    assert pretrained.hub_offline() is None
    monkeypatch.setattr(pretrained.huggingface_hub, "hf_hub_download", lambda *a, **kw: calls.append(a) or "x")
    assert pretrained.hub_download("someone/model", "config.json") == "x" and calls == [("someone/model", "config.json")]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert pretrained.hub_offline() == "HF_HUB_OFFLINE is set"
    with pytest.raises(WeightsError, match="HubOffline; HF_HUB_OFFLINE is set"):
        pretrained.resolve_weights("someone/missing")
    assert len(calls) == 1
