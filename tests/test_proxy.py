"""Proxy pretraining of the tiny encoders: deterministic, disjoint from the synthetic references, cached,
loaded strictly, and what the smoke profile's models start from."""
import json

import pytest
import torch
from safetensors.torch import load_file

from iqa_utils.config.check import make_config
from iqa_utils.config.fields import RunConfig
from iqa_utils.data import synthetic as syn
from iqa_utils.models import create_model, proxy
from iqa_utils.models.csfiqa import build_crossvit, crossvit_key_map
from iqa_utils.models.deiqt import build_vit
from iqa_utils.models.pretrained import load_encoder_weights, vit_key_map
from iqa_utils.system import KitError

FAST = {"steps": 3, "batch": 6, "warmup_steps": 1}       # the recipes' code path at a test's budget


@pytest.fixture(autouse=True)
def fast_recipes(monkeypatch):
    for name, recipe in proxy.RECIPES.items():
        monkeypatch.setitem(proxy.RECIPES, name, {**recipe, **FAST})


def vit():
    return build_vit("tiny", proxy.SIZE)


def crossvit():
    return build_crossvit("tiny", "crossvit_small_240", proxy.SIZE)


def test_photos_supply_no_synthetic_reference():
    refs = {name for name, *_ in syn.SOURCES[:syn.DEFAULT_N_REFS]}
    assert refs and not set(proxy.PHOTOS) & refs
    with pytest.raises(KitError, match="astronaut"):
        proxy.check_disjoint(proxy.PHOTOS + ("astronaut",))


def test_a_build_reads_only_the_proxy_photos(monkeypatch, tmp_path):
    seen = []
    real = proxy.photo
    monkeypatch.setattr(proxy, "photo", lambda name: seen.append(name) or real(name))
    proxy.proxy_weights("vit_tiny", vit, tmp_path)
    assert seen == list(proxy.PHOTOS)


def test_a_build_says_what_where_and_how_long(tmp_path, capsys):
    path = proxy.proxy_weights("vit_tiny", vit, tmp_path)
    out = capsys.readouterr()
    first, *_, last = out.out.strip().splitlines()
    assert first.startswith("proxy pretraining: building vit_tiny (exemplar-v1: 3 steps") and str(path) in first
    assert "about" in first and "`iqa-kit proxy`" in first and last.startswith("proxy pretraining: vit_tiny built in")
    assert "proxy vit_tiny" in out.err                                  # the progress bar
    proxy.proxy_weights("vit_tiny", vit, tmp_path)
    assert capsys.readouterr().out == ""                                # a current file: nothing to say


def test_a_file_made_for_another_architecture_of_the_name_is_rebuilt(tmp_path, capsys):
    path = proxy.proxy_weights("vit_tiny", vit, tmp_path)
    capsys.readouterr()
    other = lambda: build_vit("small", proxy.SIZE)          # what another kit version might call vit_tiny
    assert proxy.architecture(other) != proxy.architecture(vit)
    assert proxy.is_current(path, "vit_tiny", proxy.DEFAULT_RECIPE, vit)
    assert not proxy.is_current(path, "vit_tiny", proxy.DEFAULT_RECIPE, other)


def test_create_model_builds_on_first_use_and_says_so(tmp_path, capsys):
    create_model(make_config("smoke", "deiqt", {"data.data_root": str(tmp_path), "model.pretrained": True}))
    assert "proxy pretraining: building vit_tiny" in capsys.readouterr().out
    assert (proxy.folder(tmp_path) / "vit_tiny.safetensors").is_file()


def test_which_configs_use_the_proxy_weights():
    assert make_config("smoke", overrides={"model.pretrained": True}).uses_proxy_weights()
    assert not make_config("smoke").uses_proxy_weights()                # from scratch
    assert not make_config("smoke", overrides={"model.pretrained": True,
                                               "model.weights": "/w/model.safetensors"}).uses_proxy_weights()
    assert not make_config("paper", overrides={"model.pretrained": True}).uses_proxy_weights()   # ImageNet's


@pytest.mark.parametrize("recipe", list(proxy.RECIPES))
def test_batches_are_seeded_and_labelled(recipe):
    photos, r = proxy.load_photos(), proxy.RECIPES[recipe]
    x, y = proxy.sample_batch(photos, r, torch.Generator().manual_seed(1))
    x2, y2 = proxy.sample_batch(photos, r, torch.Generator().manual_seed(1))
    assert x.shape == (r["batch"], 3, proxy.SIZE, proxy.SIZE) and torch.isfinite(x).all()
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert 0 <= int(y.min()) and int(y.max()) < proxy.n_classes(r)


@pytest.mark.parametrize("build", [vit, crossvit])
def test_pretraining_is_deterministic_and_leaves_the_caller_alone(build):
    torch.manual_seed(5)
    before = torch.get_num_threads()
    torch.set_num_threads(proxy.THREADS + 1)                # a count the build must not leave behind
    rng, threads = torch.get_rng_state(), torch.get_num_threads()
    try:
        a, log = proxy.pretrain(build, proxy.RECIPES[proxy.DEFAULT_RECIPE])
        b, _ = proxy.pretrain(build, proxy.RECIPES[proxy.DEFAULT_RECIPE])
    finally:
        after = torch.get_num_threads()
        torch.set_num_threads(before)
    assert len(log) == FAST["steps"] and all(torch.isfinite(torch.tensor(step)).all() for step in log)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(torch.get_rng_state(), rng) and after == threads
    init = build().state_dict()                  # the training moved the encoder
    assert any(not torch.equal(init[k], a[k]) for k in a)


def test_cache_is_reused_and_loads_strictly(tmp_path):
    for name, build, key_map in (("vit_tiny", vit, vit_key_map), ("crossvit_tiny", crossvit, crossvit_key_map)):
        path = proxy.proxy_weights(name, build, tmp_path)
        assert path == syn.default_root(tmp_path) / "pretrained" / proxy.DEFAULT_RECIPE / f"{name}.safetensors"
        again = tmp_path / "again"
        assert path.read_bytes() == proxy.proxy_weights(name, build, again).read_bytes()   # same bytes
        stamp = path.stat().st_mtime_ns
        assert proxy.proxy_weights(name, build, tmp_path) == path and path.stat().st_mtime_ns == stamp
        enc = build()
        load_encoder_weights(enc, str(path), key_map(enc))
        saved = load_file(str(path))
        assert all(torch.equal(v, saved[k]) for k, v in enc.state_dict().items())


def test_a_changed_recipe_or_a_damaged_file_rebuilds(tmp_path, monkeypatch):
    path = proxy.proxy_weights("vit_tiny", vit, tmp_path)
    meta = path.with_suffix(".json")
    assert json.loads(meta.read_text())["identity"]["version"] == 1
    monkeypatch.setitem(proxy.RECIPES, proxy.DEFAULT_RECIPE,
                        {**proxy.RECIPES[proxy.DEFAULT_RECIPE], "version": 2})
    assert not proxy.is_current(path, "vit_tiny", proxy.DEFAULT_RECIPE, vit)
    proxy.proxy_weights("vit_tiny", vit, tmp_path)
    assert json.loads(meta.read_text())["identity"]["version"] == 2
    path.write_bytes(path.read_bytes()[:-8])                       # truncated
    assert not proxy.is_current(path, "vit_tiny", proxy.DEFAULT_RECIPE, vit)
    proxy.proxy_weights("vit_tiny", vit, tmp_path)
    assert proxy.is_current(path, "vit_tiny", proxy.DEFAULT_RECIPE, vit)


def test_the_config_names_the_recipes():
    f = {f.name: f for f in RunConfig.__dataclass_fields__["model"].default_factory.__dataclass_fields__.values()}
    assert set(f["proxy_pretraining"].metadata["choices"]) == set(proxy.RECIPES)
    assert f["proxy_pretraining"].default == proxy.DEFAULT_RECIPE
    smoke = make_config("smoke", overrides={"model.pretrained": True})
    assert smoke.model.proxy_pretraining == proxy.DEFAULT_RECIPE and smoke.model.size == "tiny"


def _encoders(model):
    return [model.encoder] if hasattr(model, "encoder") else [model.student.encoder, model.teacher.encoder]


@pytest.mark.parametrize("name,weights", [("deiqt", "vit_tiny"), ("lmliqa", "vit_tiny"), ("csfiqa", "crossvit_tiny")])
def test_smoke_models_start_from_the_proxy_weights(tmp_path, name, weights):
    model = create_model(make_config("smoke", name, {"data.data_root": str(tmp_path), "model.pretrained": True}))
    saved = load_file(str(proxy.folder(tmp_path) / f"{weights}.safetensors"))
    for enc in _encoders(model):
        own = enc.state_dict()
        assert own.keys() == saved.keys() and all(torch.equal(own[k], saved[k]) for k in own)
    scratch = create_model(make_config("smoke", name, {"data.data_root": str(tmp_path / "none"),
                                                       "model.pretrained": False}))
    assert not (tmp_path / "none").exists()               # from scratch builds nothing
    own = _encoders(scratch)[0].state_dict()
    assert any(not torch.equal(own[k], saved[k]) for k in own)

def test_other_crop_sizes_resample_the_positions(tmp_path):
    model = create_model(make_config("smoke", "deiqt", {"data.data_root": str(tmp_path), "data.crop_size": 32,
                                                        "model.pretrained": True}))
    saved = load_file(str(proxy.folder(tmp_path) / "vit_tiny.safetensors"))
    own = model.encoder.state_dict()
    assert own["pos_embed"].shape == (1, 16, 48) and saved["pos_embed"].shape == (1, 144, 48)
    assert all(torch.equal(own[k], saved[k]) for k in own if k != "pos_embed")


def test_build_ahead_builds_what_the_models_load_once(tmp_path, capsys):
    """`iqa-kit proxy`: the encoders of the configs that load proxy weights, each file once; a config
    from scratch builds nothing."""
    cfg = lambda model, pretrained: make_config("smoke", model, {"data.data_root": str(tmp_path),
                                                                   "model.pretrained": pretrained})
    assert proxy.build_ahead([cfg("deiqt", False)]) == []
    folders = proxy.build_ahead([cfg("deiqt", True), cfg("lmliqa", True), cfg("deiqt", False)])
    assert folders == [proxy.folder(str(tmp_path), proxy.DEFAULT_RECIPE)]
    assert (folders[0] / "vit_tiny.safetensors").is_file()
    assert capsys.readouterr().out.count("proxy pretraining: building vit_tiny") == 1   # LML-IQA reuses it
