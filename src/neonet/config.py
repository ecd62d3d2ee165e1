"""Reading stage configs outside LightningCLI (for ``neonet cv`` and other verbs)."""

from __future__ import annotations

import copy
import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from neonet.errors import NeonetError


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge ``update`` into a copy of ``base`` (lists and scalars are replaced)."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _set_dotted(cfg: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = cfg
    for i, key in enumerate(keys[:-1]):
        if key in ("model", "data") and i == 0 and isinstance(node.get(key), dict) and "init_args" in node[key]:
            node = node[key]
            if keys[1] not in ("class_path", "init_args"):
                node = node.setdefault("init_args", {})
            continue
        node = node.setdefault(key, {})
    node[keys[-1]] = value


def load_config(paths: Sequence[str | Path], overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Merge YAML configs in order and apply ``key.sub=value`` overrides (values parsed as YAML).

    ``model.x`` and ``data.x`` are applied to ``init_args`` as LightningCLI does.
    """
    cfg: dict[str, Any] = {}
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise NeonetError(f"config {path} not found")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise NeonetError(f"config {path}: invalid YAML ({exc})") from exc
        cfg = deep_merge(cfg, loaded)
    for item in overrides:
        if "=" not in item:
            raise NeonetError(f"override {item!r} must look like key.sub=value")
        key, raw = item.split("=", 1)
        _set_dotted(cfg, key.lstrip("-"), yaml.safe_load(raw))
    return cfg


def import_class(class_path: str) -> type:
    """Import ``package.module.Class``."""
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise NeonetError(f"cannot import {class_path}: {exc}") from exc


def stage_of(cfg: dict[str, Any]) -> str:
    """The stage name of a config's LightningModule.

    ``model.init_args.stage`` when the module takes its stage folder as an argument (the
    classifier: ``pattennet``, ``resnet18``, ...), else the class's ``stage`` attribute.
    """
    explicit = ((cfg.get("model") or {}).get("init_args") or {}).get("stage")
    if isinstance(explicit, str) and explicit:
        return explicit
    class_path = (cfg.get("model") or {}).get("class_path")
    if not class_path:
        raise NeonetError("the config has no model.class_path")
    stage = getattr(import_class(class_path), "stage", None)
    if not stage:
        raise NeonetError(f"{class_path} is not a neonet stage module (no `stage` attribute)")
    return stage


def data_args(cfg: dict[str, Any]) -> dict[str, Any]:
    """``data.init_args`` of a config."""
    return dict(((cfg.get("data") or {}).get("init_args")) or {})
