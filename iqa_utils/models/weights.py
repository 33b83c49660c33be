"""Pretrained weights for machines without internet: fetch them once, check them offline, or write
stand-ins in the same formats for a rehearsal.

    download(folder, llama_layers)   every file the quick and paper profiles read, one subfolder per hub
                                     repo (DeiT-III S/16, CrossViT-S/240, and of LLaMA-7B only config.json,
                                     the index and the shards holding the needed layers and the final norm)
    check(folder, llama_layers)      names, shapes (from the files' headers, against the models built on
                                     the meta device) and the checksums recorded at download time
    write_stand_ins(folder, layers)  random weights of the real shapes in the real formats (DeiT's own .pth,
                                     timm safetensors, a sharded LLaMA folder with its index)

Point the profiles at the folder with IQA_KIT_WEIGHTS=<folder> (models.pretrained.weights_source).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from tqdm.auto import tqdm
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

from ..devices import atomic_save, save_safetensors
from ..system import atomic_write_json, atomic_write_text, file_sha256, read_json
from .concentrator import LLAMA_7B
from .csfiqa import build_crossvit, crossvit_key_map
from .deiqt import build_vit
from .pretrained import (
    DEIT_HUB_ID,
    LLAMA_HUB_ID,
    WeightsError,
    crossvit_hub_id,
    hub_download,
    map_deit_keys,
    read_state_dict,
    resolve_weights,
)

CHECKSUMS = "iqa-kit-weights.json"
INDEX = "model.safetensors.index.json"
DEFAULT_ENCODER = "crossvit_small_240"


def folder_of(root, hub_id: str) -> Path:
    return Path(root).expanduser() / hub_id.split("/")[-1]


def _llama_tensors(layers, n_layers: int = 32) -> dict[str, str]:
    """The checkpoint names a LLaMA decoder layer and the final norm are stored under."""
    with torch.device("meta"):
        names = LlamaDecoderLayer(LlamaConfig(**LLAMA_7B), 0).state_dict().keys()
    out = {f"model.layers.{i}.{k}": i for i in layers for k in names}
    out["model.norm.weight"] = n_layers
    return out


# ---- download ------------------------------------------------------------------------------------------
def _fetch(repo: str, filename: str, folder: Path) -> Path:
    try:
        return Path(hub_download(repo, filename, local_dir=str(folder)))
    except Exception as e:                   # offline, gated, wrong repo id
        raise WeightsError(f"{repo}/{filename}: download failed ({type(e).__name__}: "
                           f"{str(e).splitlines()[0][:120] if str(e) else ''}); run this command where the "
                           f"Hugging Face hub can be reached (and log in for gated repos)") from None


def _needed_shards(index: Path, layers) -> list[str]:
    wmap = read_json(index, "safetensors index").get("weight_map", {})
    wanted = _llama_tensors(layers)
    absent = [k for k in wanted if k not in wmap]
    if absent:
        raise WeightsError(f"{index} does not list {absent[0]} (and {len(absent) - 1} more)")
    return sorted({wmap[k] for k in wanted})


def download(root, llama_layers=(31,), encoder: str = DEFAULT_ENCODER, llama_repo: str = LLAMA_HUB_ID) -> Path:
    """Fetch every file into root/<repo name>/ and record their SHA-256 in root/iqa-kit-weights.json."""
    root = Path(root).expanduser()
    downloads = [(DEIT_HUB_ID, ["model.safetensors"]), (crossvit_hub_id(encoder), ["model.safetensors"]),
            (llama_repo, ["config.json", INDEX])]
    sums = {}
    for repo, files in downloads:
        folder = folder_of(root, repo)
        paths = [_fetch(repo, f, folder) for f in files]
        if repo == llama_repo:
            paths += [_fetch(repo, f, folder) for f in _needed_shards(folder / INDEX, llama_layers)]
        for p in tqdm(paths, desc=f"checksums {repo}", leave=False):
            sums[str(p.relative_to(root))] = {"sha256": file_sha256(p), "bytes": p.stat().st_size}
    atomic_write_json({"files": sums, "llama_layers": sorted(llama_layers)}, root / CHECKSUMS)
    return root


# ---- check ---------------------------------------------------------------------------------------------
def _header_shapes(path: Path) -> dict[str, tuple]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:
        raise WeightsError(f"{path}: not a readable safetensors file ({str(e).splitlines()[0][:100]})") from None


def _shapes(path: Path) -> dict[str, tuple]:
    if path.suffix == ".safetensors":
        return _header_shapes(path)
    return {k: tuple(v.shape) for k, v in read_state_dict(path).items()}


def _compare(path: Path, found: dict, want: dict) -> list[str]:
    missing = [k for k in want if k not in found]
    extra = [k for k in found if k not in want]
    wrong = [k for k in want if k in found and tuple(found[k]) != tuple(want[k])]
    out = [f"{path}: missing tensor {k}" for k in missing[:3]] + [f"{path}: unexpected tensor {k}" for k in extra[:3]]
    return out + [f"{path}: {k} has shape {found[k]}, the model wants {tuple(want[k])}" for k in wrong[:3]]


def _check_encoder(root: Path, hub_id: str, encoder) -> list[str]:
    try:
        path = resolve_weights(str(folder_of(root, hub_id)))
        shapes = _shapes(path)
    except WeightsError as e:
        return [str(e)]
    with torch.device("meta"):
        enc = build_vit("small") if encoder is None else build_crossvit("small", encoder, 240)
    key_map = map_deit_keys if encoder is None else crossvit_key_map(enc)
    found = {k: v.shape for k, v in key_map({k: torch.empty(s, device="meta")
                                             for k, s in shapes.items()}).items()}
    return _compare(path, found, {k: v.shape for k, v in enc.state_dict().items()})


def _check_llama(root: Path, layers, repo: str) -> list[str]:
    folder = folder_of(root, repo)
    for f in ("config.json", INDEX):
        if not (folder / f).is_file():
            return [f"{folder / f}: missing"]
    cfg = read_json(folder / "config.json", "LLaMA config")
    dims = {k: cfg.get(k) for k in ("hidden_size", "intermediate_size", "num_attention_heads")}
    if any(dims[k] != LLAMA_7B[k] for k in dims):
        return [f"{folder / 'config.json'}: {dims} are not LLaMA-7B's dimensions"]
    wmap = read_json(folder / INDEX, "safetensors index").get("weight_map", {})
    with torch.device("meta"):
        layer = LlamaDecoderLayer(LlamaConfig(**LLAMA_7B), 0).state_dict()
    want = {k: (layer[k.split(".", 3)[3]].shape if ".layers." in k else (LLAMA_7B["hidden_size"],))
            for k in _llama_tensors(layers)}
    problems = [f"{folder / INDEX}: does not list {k}" for k in want if k not in wmap][:3]
    for shard in sorted({wmap[k] for k in want if k in wmap}):
        if not (folder / shard).is_file():
            held = [k for k in want if wmap.get(k) == shard]
            problems.append(f"{folder / shard}: shard missing (the index puts {held[0]} and {len(held) - 1} more "
                            f"tensors the kit reads there)")
            continue
        try:
            found = _header_shapes(folder / shard)
        except WeightsError as e:
            problems.append(str(e))
            continue
        mine = {k: v for k, v in want.items() if wmap.get(k) == shard}
        problems += [p for p in _compare(folder / shard, {k: found[k] for k in mine if k in found}, mine)]
    return problems


def _check_sums(root: Path) -> list[str]:
    if not (root / CHECKSUMS).is_file():
        return []                                  # stand-ins and hand-made folders have no recorded sums
    problems = []
    for rel, want in read_json(root / CHECKSUMS, "weights checksum file").get("files", {}).items():
        p = root / rel
        if not p.is_file():
            problems.append(f"{p}: missing (recorded at download)")
        elif p.stat().st_size != want["bytes"] or file_sha256(p) != want["sha256"]:
            problems.append(f"{p}: checksum differs from the one recorded at download (damaged copy?)")
    return problems


def check(root, llama_layers=(31,), encoder: str = DEFAULT_ENCODER, llama_repo: str = LLAMA_HUB_ID) -> list[str]:
    """Every problem of a weights folder, one line each (an empty list: all present and of the right shape)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        return [f"{root}: folder not found"]
    return (_check_encoder(root, DEIT_HUB_ID, None) + _check_encoder(root, crossvit_hub_id(encoder), encoder)
            + _check_llama(root, llama_layers, llama_repo) + _check_sums(root))


# ---- stand-ins -----------------------------------------------------------------------------------------
def _deit_pth(folder: Path) -> None:
    """DeiT's own format: {"model": state dict with gamma_1/gamma_2 names and the ImageNet head}."""
    torch.manual_seed(0)
    sd = {k.replace(".ls1.gamma", ".gamma_1").replace(".ls2.gamma", ".gamma_2"): v
          for k, v in build_vit("small").state_dict().items()}
    sd["head.weight"], sd["head.bias"] = torch.randn(1000, 384) * 0.02, torch.zeros(1000)
    atomic_save({"model": sd, "epoch": 799}, folder / "deit_3_small_224_1k.pth")


def _crossvit_safetensors(folder: Path, encoder: str) -> None:
    """timm's hub format: pos_embed.0 / cls_token.0 names and the classifier heads."""
    torch.manual_seed(0)
    enc = build_crossvit("small", encoder, 240)
    sd = {(".".join(k.rsplit("_", 1)) if k.startswith(("pos_embed_", "cls_token_")) else k): v.contiguous()
          for k, v in enc.state_dict().items()}
    for i, d in enumerate(enc.embed_dim):
        sd[f"head.{i}.weight"], sd[f"head.{i}.bias"] = torch.zeros(1000, d), torch.zeros(1000)
    atomic_save(sd, folder / "model.safetensors", save_safetensors)


def _llama_folder(folder: Path, layers) -> None:
    """config.json, an index naming every tensor of the 32 layers, and the one shard the kit reads
    (random N(0, 0.02) weights in bf16, RMSNorm weights 1)."""
    gen = torch.Generator().manual_seed(0)
    wanted = _llama_tensors(layers)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in LlamaDecoderLayer(LlamaConfig(**LLAMA_7B), 0).state_dict().items()}
    tensors = {"model.norm.weight": torch.ones(LLAMA_7B["hidden_size"], dtype=torch.bfloat16)}
    for name in wanted:
        if ".layers." in name:
            short = name.split(".", 3)[3]
            t = torch.ones(shapes[short]) if short.endswith("layernorm.weight") else \
                torch.empty(shapes[short]).normal_(0, 0.02, generator=gen)
            tensors[name] = t.to(torch.bfloat16)
    shard = "model-00002-of-00002.safetensors"
    every = {f"model.layers.{i}.{k}": (shard if i in layers else "model-00001-of-00002.safetensors")
             for i in range(LLAMA_7B["num_hidden_layers"]) for k in shapes}
    every.update({"model.norm.weight": shard, "model.embed_tokens.weight": "model-00001-of-00002.safetensors"})
    atomic_save(tensors, folder / shard, save_safetensors)
    atomic_write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": every}, indent=1), folder / INDEX)
    atomic_write_text(json.dumps({**LLAMA_7B, "model_type": "llama", "vocab_size": 32000,
                                  "max_position_embeddings": 2048}, indent=1), folder / "config.json")


def write_stand_ins(root, llama_layers=(31,), encoder: str = DEFAULT_ENCODER) -> Path:
    """Random weights of the real shapes in the real formats, under the layout `download` makes.
    Written once: a folder that already passes `check` is left as it is."""
    root = Path(root).expanduser()
    if root.is_dir() and not check(root, llama_layers, encoder):
        return root
    for hub_id, write in ((DEIT_HUB_ID, _deit_pth), (crossvit_hub_id(encoder), lambda f: _crossvit_safetensors(f, encoder)),
                          (LLAMA_HUB_ID, lambda f: _llama_folder(f, llama_layers))):
        folder = folder_of(root, hub_id)
        folder.mkdir(parents=True, exist_ok=True)
        write(folder)
    return root
