"""Model registry, as in timm: each model file registers its builder; the registry imports none of them.

`iqa_utils.models` (the package `__init__`) imports every model module, so importing the package fills
the registry. A builder takes a RunConfig and returns an IQAModel.
"""
from __future__ import annotations

from typing import Callable

from ..system import KitError
from .pretrained import load_weights

_MODELS: dict[str, Callable] = {}
_DISPLAY: dict[str, str] = {}


def register_model(name: str, display: str | None = None):
    """Register a builder under `name`; `display` is the method's name in the papers' tables."""
    def wrap(fn):
        _MODELS[name] = fn
        _DISPLAY[name] = display or name
        return fn
    return wrap


def list_models() -> list[str]:
    """The registered models in registration order (names starting with "_" are private, e.g. tests')."""
    return [n for n in _MODELS if not n.startswith("_")]


def display_name(name: str) -> str:
    """'DEIQT', 'CSFIQA', 'LML-IQA': the name the papers' tables use."""
    return _DISPLAY.get(name, name)


def require_model(name: str) -> str:
    if name not in _MODELS:
        raise KitError(f"model.name: unknown model {name!r}; registered: {', '.join(list_models())}")
    return name


def create_model(cfg) -> "IQAModel":  # noqa: F821
    """Build the model a RunConfig names (cfg.model.name) at cfg.model.size, with its method config;
    start from a kit checkpoint when cfg.model.checkpoint names one (loaded strictly)."""
    model = _MODELS[require_model(cfg.model.name)](cfg)
    model.flip = cfg.data.flip
    if cfg.model.checkpoint:
        load_weights(model, cfg.model.checkpoint)
    return model
