"""Method option widgets' metadata, from the Options dataclasses (never from source)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..evaluation import method_spec
from ..methods import ABLATIONS, METHODS, get_method
from ..methods.base import option_help


@dataclass(frozen=True)
class OptionField:
    """One option of a method, for building a widget: name, kind, value, choices, help."""

    name: str
    kind: str  # "int", "float", "bool", "choice", "text"
    value: Any
    choices: tuple[str, ...] = ()
    help: str = ""


def method_labels() -> list[str]:
    return [*METHODS, *ABLATIONS]


def base_method(label: str) -> str:
    return label if label in METHODS else "nufilt"


def option_fields(
    label: str, n_tasks: int, recommended: Mapping[str, Mapping[str, Any]] | None = None
) -> list[OptionField]:
    """The options of a method or ablation, with the values it would use by default.

    Values: the dataclass defaults < the paper's Table 9 for `n_tasks` < the backbone's
    recommendation (tiny-vit: zoo-scaled NUFILT ranks) < the ablation's settings.
    """
    options_cls = get_method(base_method(label)).Options
    values = method_spec(label, n_tasks, recommended).options
    described = option_help(options_cls)  # metadata on the dataclass fields, never parsed source
    fields = []
    for item in dataclasses.fields(options_cls):
        value = values.get(item.name, item.default)
        if isinstance(value, bool):
            kind, choices = "bool", ()
        elif isinstance(value, int):
            kind, choices = "int", ()
        elif isinstance(value, float):
            kind, choices = "float", ()
        else:
            choices = described[item.name][1]
            kind = "choice" if choices else "text"
        fields.append(OptionField(item.name, kind, value, choices, described[item.name][0]))
    return fields


def changed_options(fields: Sequence[OptionField], values: Mapping[str, Any]) -> dict[str, Any]:
    """The widget values that differ from the defaults shown (what the run overrides)."""
    return {f.name: values[f.name] for f in fields if f.name in values and values[f.name] != f.value}
