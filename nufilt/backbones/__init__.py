"""Backbone registry: a spec string -> a `Backbone` (see `base.py`).

Specs: `tiny-vit` (embedded, offline default), `clip-vit-b32`, `clip-vit-b16`, `clip-vit-l14`,
`flan-t5-base`, `openclip:<path>`, `local:<dir>`. Modules are imported lazily so that the
embedded path never imports hub-only code.
"""

from __future__ import annotations

import importlib

from .base import Backbone, TaskInfo

# spec (or spec prefix ending in ":") -> "module:factory"; each factory takes (argument, **kwargs)
_FACTORIES: dict[str, str] = {
    "tiny-vit": "nufilt.backbones.tiny_vit:make_backbone",
    "clip-vit-b32": "nufilt.backbones.clip:make_backbone",
    "clip-vit-b16": "nufilt.backbones.clip:make_backbone",
    "clip-vit-l14": "nufilt.backbones.clip:make_backbone",
    "flan-t5-base": "nufilt.backbones.t5:make_backbone",
    "openclip:": "nufilt.backbones.openclip:make_backbone",
    "local:": "nufilt.backbones.local:make_backbone",
}

EMBEDDED = "tiny-vit"


def known_specs() -> list[str]:
    return [name + ("<path>" if name.endswith(":") else "") for name in _FACTORIES]


def get_backbone(spec: str, **kwargs) -> Backbone:
    """Instantiate the backbone named by `spec`; raises ValueError for unknown specs."""
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"backbone spec must be a non-empty string, got {spec!r}")
    if spec in _FACTORIES:
        target, argument = _FACTORIES[spec], spec
    else:
        prefix, sep, rest = spec.partition(":")
        if not sep or prefix + ":" not in _FACTORIES:
            raise ValueError(f"unknown backbone {spec!r}; known: {', '.join(known_specs())}")
        if not rest:
            raise ValueError(f"backbone {spec!r} needs a path after '{prefix}:'")
        target, argument = _FACTORIES[prefix + ":"], rest
    module_name, factory_name = target.split(":")
    module = importlib.import_module(module_name)
    return getattr(module, factory_name)(argument, **kwargs)


__all__ = ["Backbone", "TaskInfo", "EMBEDDED", "get_backbone", "known_specs"]
