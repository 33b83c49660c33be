"""Checking a config where it is made: field types, ranges and choices, cross-field rules;
building one from a profile, overrides or a saved dict; the decisions table."""
from __future__ import annotations

import dataclasses
import functools
import math
import re
import typing
from dataclasses import fields, is_dataclass
from typing import Any

import pandas as pd

from .fields import ConfigError, ModelConfig, RunConfig, UnknownFieldError
from .profiles import PROFILES, check_profile


# ---- walking, checking and overriding the tree ---------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _walk(obj, prefix=""):
    hints = _hints(type(obj))
    for f in fields(obj):
        v = getattr(obj, f.name)
        name = f"{prefix}{f.name}"
        if is_dataclass(v):
            yield from _walk(v, name + ".")
        else:
            yield name, f, hints[f.name], v


def _interval(spec: str) -> tuple[str, float, float, str]:
    lo_b, lo, hi, hi_b = re.fullmatch(r"([\[(])\s*(\S+),\s*(\S+)\s*([\])])", spec).groups()
    return lo_b, float(lo), float(hi), hi_b


def _in_interval(x: float, spec: str) -> bool:
    lo_b, lo, hi, hi_b = _interval(spec)
    return (x > lo or (lo_b == "[" and x == lo)) and (x < hi or (hi_b == "]" and x == hi))


def _number(name: str, value, integer: bool):
    """value as int/float, or a ConfigError: bools, text, NaN, inf and non-integral ints are refused."""
    kind = "a whole number" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name}: {value!r} is not {kind}")
    if not math.isfinite(value):
        raise ConfigError(f"{name}: {value!r} is not a finite number")
    if integer:
        if float(value) != int(value):
            raise ConfigError(f"{name}: {value!r} is not a whole number")
        return int(value)
    return float(value)


def _base_type(hint) -> tuple[type, bool]:
    """(type, None allowed) of an annotation like `int | None`."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    optional = type(None) in typing.get_args(hint)
    return (args[0] if args else hint), optional


def _accepts(base, meta) -> str:
    choices, spec = meta.get("choices") or [], meta.get("range")
    if meta.get("pattern"):
        return meta["pattern"][1]
    if choices and base is not bool:
        return "one of " + ", ".join(map(str, choices))
    kind = {bool: "True or False", int: "a whole number", float: "a number", str: "text",
            tuple: "a pair of numbers in [0, 1)"}.get(base, str(base))
    return f"{kind} in {spec}" if spec else kind


def check_field(name: str, hint, meta, value):
    """The checked (and normalised: int->float, list->tuple) value of one field, or a ConfigError."""
    base, optional = _base_type(hint)
    try:
        if value is None:
            if optional:
                return None
            raise ConfigError(f"{name}: a value is required")
        if base is bool and not isinstance(value, bool):
            raise ConfigError(f"{name}: {value!r} is not True or False")
        if base in (int, float):
            value = _number(name, value, base is int)
        elif base is str and not isinstance(value, str):
            raise ConfigError(f"{name}: {value!r} is not text")
        elif base is tuple:
            if not isinstance(value, (tuple, list)) or len(value) != 2:
                raise ConfigError(f"{name}: {value!r} is not a pair")
            value = tuple(_number(name, v, False) for v in value)
            if not all(0 <= v < 1 for v in value):
                raise ConfigError(f"{name}: {value!r} is out of range")
        return _check_allowed(name, meta, value)
    except ConfigError as e:
        raise ConfigError(f"{e}; it accepts {_accepts(base, meta)}" + (" or None" if optional else "")) from None


def _check_allowed(name: str, meta, value):
    choices = meta.get("choices") or []
    if choices and value not in choices:
        raise ConfigError(f"{name}: {value!r} is not allowed")
    spec = meta.get("range")
    if spec and not isinstance(value, (str, tuple)) and not _in_interval(value, spec):
        raise ConfigError(f"{name}: {value!r} is out of range")
    pattern = meta.get("pattern")
    if pattern and not re.fullmatch(pattern[0], value):
        raise ConfigError(f"{name}: {value!r} is not allowed")
    return value


def in_batch_contrastive(cfg: RunConfig) -> bool:
    """Whether the model's loss builds positives and negatives within a step's batch (so the batch
    cannot be split into micro-batches or across processes without changing the loss)."""
    m = cfg.model.name
    return (m == "csfiqa" and cfg.csfiqa.scl and cfg.csfiqa.lam > 0) or \
        (m == "lmliqa" and cfg.lmliqa.lambda_con > 0)


def check_consistency(cfg: RunConfig) -> RunConfig:
    """Rules that tie fields together; each error names the fields involved."""
    d, t, c, m = cfg.data, cfg.train, cfg.csfiqa, cfg.model
    if d.split_ratio == 1.0 and not cfg.test_dataset:
        raise ConfigError("data.split_ratio: 1.0 leaves no test images; use it only with test_dataset "
                          "(cross-dataset runs)")
    if t.selection == "val" and d.val_fraction == 0:
        raise ConfigError("train.selection: 'val' needs a validation split; set data.val_fraction > 0")
    if c.nsm in ("regional", "regional_weight") and c.scale_mode not in ("branch", "single"):
        raise ConfigError(f"csfiqa.nsm: {c.nsm!r} aligns the two token grids of one crop, which needs "
                          f"csfiqa.scale_mode='branch'; with the crop modes choose 'pooled' or 'qfm'")
    if cfg.lmliqa.teacher_init == "checkpoint" and not cfg.lmliqa.teacher_checkpoint:
        raise ConfigError("lmliqa.teacher_checkpoint: teacher_init='checkpoint' needs the path of a DEIQT "
                          "checkpoint trained first (two-stage)")
    if in_batch_contrastive(cfg) and t.micro_batch and t.micro_batch < (t.global_batch or t.micro_batch + 1):
        raise ConfigError(f"train.micro_batch: {m.name}'s contrastive loss builds its positives and negatives "
                          f"within a step's batch, so accumulating micro-batches would shrink them; train with "
                          f"the whole global batch at once (no train.micro_batch)")
    if cfg.profile not in PROFILES:
        raise ConfigError(f"profile: unknown profile {cfg.profile!r}; choose one of {', '.join(PROFILES)}")
    if not m.name:
        raise ConfigError("model.name: a model name is required (deiqt, csfiqa or lmliqa)")
    return cfg


def _replace(obj, values: dict[str, Any], prefix: str = ""):
    """A copy of the dataclass `obj` with dotted fields replaced (dataclasses.replace, level by level)."""
    here, nested = {}, {}
    for dotted, value in values.items():
        head, _, rest = dotted.partition(".")
        (nested.setdefault(head, {}).__setitem__(rest, value) if rest else here.__setitem__(head, value))
    for head, sub in nested.items():
        here[head] = _replace(getattr(obj, head), sub, f"{prefix}{head}.")
    return dataclasses.replace(obj, **here)


def check(cfg: RunConfig) -> RunConfig:
    """Check every field of cfg (type, range, choices) and the cross-field rules; return it normalised."""
    fixed = {}
    for name, f, hint, value in _walk(cfg):
        checked = check_field(name, hint, f.metadata, value)
        if type(checked) is not type(value) or checked != value:
            fixed[name] = checked
    return check_consistency(_replace(cfg, fixed) if fixed else cfg)


def field_names(cfg: RunConfig | None = None) -> list[str]:
    return [name for name, _, _, _ in _walk(cfg or RunConfig())]


def override(cfg: RunConfig, values: dict[str, Any]) -> RunConfig:
    """A checked copy of cfg with dotted fields replaced; an unknown name is an error, not a no-op."""
    known = set(field_names(cfg))
    unknown = [k for k in values if k not in known]
    if unknown:
        raise UnknownFieldError(f"{unknown[0]}: unknown config field; see `iqa-kit decisions` or "
                                f"iqa_utils/config/fields.py for the {len(known)} fields")
    return check(_replace(cfg, dict(values)))


def make_config(profile: str = "smoke", model: str = "deiqt", overrides: dict | None = None) -> RunConfig:
    """RunConfig for a profile and model, then overrides (dotted names, e.g. {"split_seed": 3})."""
    base = RunConfig(profile=check_profile(profile), model=ModelConfig(name=model))
    return override(override(base, PROFILES[profile]), overrides or {})


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


# Fields that older run records carry and the config no longer has.
RETIRED_FIELDS = ("results_dir",)


# Fields whose values changed form: an older record's value -> today's (the same behaviour).
RENAMED_VALUES = {"csfiqa.afs": {True: "topk", False: "dense"}}


def config_from_dict(d: dict) -> RunConfig:
    """RunConfig from cfg.to_dict() output (a record or config.json); unknown fields raise."""
    flat = {k: v for k, v in _flat(d).items() if k not in RETIRED_FIELDS}
    for k, table in RENAMED_VALUES.items():
        if k in flat and isinstance(flat[k], bool):
            flat[k] = table[flat[k]]
    return override(RunConfig(), flat)


def decisions_table(cfg: RunConfig | None = None) -> pd.DataFrame:
    """Every undecided paper detail: field, decision id, value used, default, alternatives, source."""
    cfg = cfg or RunConfig()
    rows = []
    for name, f, _, value in _walk(cfg):
        if "decision" not in f.metadata:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        rows.append({
            "field": name, "decision": f.metadata["decision"], "value": value, "default": default,
            "alternatives": ", ".join(map(str, f.metadata["alternatives"])),
            "source of default": f.metadata["source"], "note": f.metadata["doc"],
        })
    return pd.DataFrame(rows)
