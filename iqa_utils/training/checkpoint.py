"""Training checkpoints: everything a run needs to resume to the same numbers, written atomically.

A checkpoint holds the run's identity (config key, split digest, test set), the model and optimizer
state, the loss scaler, the loop's state (epoch, step, history, selection), the selected epoch's weights
(when selection is not "last") and every RNG, as tensors and plain types so that
`torch.load(weights_only=True)` reads it back. Training crops need no RNG state: they are a pure function
of (seed, step, position) (data.store.CropStream). Nothing in it depends on the number of processes, so a
run checkpointed by one process may resume under torchrun and the other way round.
"""
from __future__ import annotations

import pickle
import random
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..models.pretrained import kit_state
from ..devices import atomic_save
from ..system import KitError, os_error

CHECKPOINT = "checkpoint.pt"


class CheckpointError(KitError, RuntimeError):
    """A checkpoint that cannot be read, or that belongs to another run."""


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def state_dict_cpu(model) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in kit_state(model).items()}


def rng_state(shuffle_gen: torch.Generator) -> dict:
    """Every RNG as tensors and plain types."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "shuffle": shuffle_gen.get_state(), "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "python": {"version": py_state[0], "state": torch.tensor(py_state[1], dtype=torch.int64)},
    }


def set_rng_state(rng: dict, shuffle_gen: torch.Generator) -> None:
    """Every random stream back to a checkpoint's `rng` (as rng_state saved it)."""
    shuffle_gen.set_state(rng["shuffle"])
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    mt = rng["numpy"]
    np.random.set_state(("MT19937", mt["keys"].numpy().astype(np.uint32), mt["pos"], mt["has_gauss"], mt["gauss"]))
    random.setstate((rng["python"]["version"], tuple(rng["python"]["state"].tolist()), None))


def save_checkpoint(path, *, ident: dict, model, opt, scaler, state: dict, best_weights: dict | None,
                    shuffle_gen: torch.Generator) -> Path:
    return atomic_save({"ident": ident, "model": kit_state(model), "optimizer": opt.state_dict(),
                        "scaler": scaler.state_dict() if scaler.is_enabled() else {},
                        "state": state, "best_weights": best_weights or {},
                        "rng": rng_state(shuffle_gen)}, path)


def read_checkpoint(path) -> dict:
    """torch.load(weights_only=True) of a kit file; a truncated or foreign file is a KitError naming it."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint not found") from None
    except OSError as e:
        raise os_error(path, e, "read") from e
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable checkpoint (truncated or not a kit file: "
                       f"{str(e).splitlines()[0][:120]}); delete it to start the run again") from None


def load_checkpoint(path, ident: dict) -> dict | None:
    """The checkpoint at path when it exists, after checking it belongs to this run (ident)."""
    path = Path(path)
    if not path.exists():
        return None
    ck = read_checkpoint(path)
    if not isinstance(ck, dict) or "ident" not in ck:
        raise CheckpointError(f"{path}: not a kit training checkpoint; delete it to start the run again")
    if ck["ident"] != ident:
        raise CheckpointError(f"{path} belongs to another run ({ck['ident']}, this one is {ident}); "
                       f"delete it or use another out_dir")
    return ck
