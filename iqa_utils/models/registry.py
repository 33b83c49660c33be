"""Model registry: `create_model(name, size, cfg)` as in timm, one builder per model file."""
from __future__ import annotations

from typing import Callable

_MODELS: dict[str, Callable] = {}


def register_model(name: str):
    def wrap(fn):
        _MODELS[name] = fn
        return fn
    return wrap


def list_models() -> list[str]:
    _import_all()
    return sorted(_MODELS)


def create_model(cfg) -> "IQAModel":
    """Build the model a RunConfig names (cfg.model.name) at cfg.model.size, with its method config."""
    _import_all()
    name = cfg.model.name
    if name not in _MODELS:
        raise KeyError(f"unknown model {name!r}; registered: {sorted(_MODELS)}")
    return _MODELS[name](cfg)


def _import_all():
    from . import deiqt  # noqa: F401
    for mod in ("csfiqa", "lmliqa"):
        try:
            __import__(f"{__package__}.{mod}")
        except ModuleNotFoundError as e:  # a model file not written yet
            if e.name != f"{__package__}.{mod}":
                raise
