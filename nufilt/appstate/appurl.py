"""The app's Setup choices as URL query parameters, and back: a link reproduces the view.

`settings_to_params` writes the choices that differ from the defaults (short links);
`params_to_settings` reads a link, type-checks every value, and names what it ignored.
Method options travel as repeated `opt=<method>.<option>:<value>` parameters.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

# URL name -> (setting name, kind); kinds: str, int, bool, list (comma-separated)
PARAMS: dict[str, tuple[str, str]] = {
    "backbone": ("backbone", "str"),
    "path": ("path", "str"),
    "quick": ("quick", "bool"),
    "tasks": ("n_tasks", "int"),
    "order": ("order_mode", "str"),
    "paper": ("paper_index", "int"),
    "seed": ("seed", "int"),
    "custom": ("custom", "str"),
    "methods": ("methods", "list"),
    "device": ("device", "str"),
    "eval": ("max_eval", "int"),
    "track": ("track_losses", "bool"),
    "samples": ("n_samples", "int"),
    "data": ("data_dir", "str"),
}
OPTION_PARAM = "opt"
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _text(value: Any, kind: str) -> str:
    if kind == "bool":
        return "1" if value else "0"
    if kind == "list":
        return ",".join(map(str, value))
    return str(value)


def parse_value(text: str, kind: str) -> Any:
    """One URL value as `kind` (str, int, float, bool, list); ValueError naming what is wrong."""
    text = text.strip()
    if kind == "int":
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a whole number") from None
    if kind == "float":
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a number") from None
    if kind == "bool":
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ValueError(f"{text!r} is not 0/1 or true/false")
    if kind == "list":
        return [part.strip() for part in text.split(",") if part.strip()]
    return text


def settings_to_params(settings: Mapping[str, Any], defaults: Mapping[str, Any],
                       options: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, str | list[str]]:
    """URL parameters for the settings that differ from `defaults` (both keyed by setting name),
    plus `opt` entries for changed method options ({method: {option: value}})."""
    params: dict[str, str | list[str]] = {}
    for name, (key, kind) in PARAMS.items():
        if key in settings and settings[key] != defaults.get(key):
            params[name] = _text(settings[key], kind)
    changed = [f"{label}.{option}:{_text(value, 'bool' if isinstance(value, bool) else 'str')}"
               for label, values in (options or {}).items() for option, value in values.items()]
    if changed:
        params[OPTION_PARAM] = changed
    return params


def params_to_settings(params: Mapping[str, str | Sequence[str]]) -> tuple[dict[str, Any], dict[str, dict[str, str]],
                                                                           list[str]]:
    """(settings, options as text {method: {option: text}}, problems) from URL parameters.

    Unknown parameters and values of the wrong type are left out and named in `problems`;
    option values stay text until the page knows each option's type (`parse_value`).
    """
    settings: dict[str, Any] = {}
    options: dict[str, dict[str, str]] = {}
    problems: list[str] = []
    for name, raw in params.items():
        values = [raw] if isinstance(raw, str) else list(raw)
        if name == OPTION_PARAM:
            for value in values:
                target, sep, text = value.partition(":")
                label, dot, option = target.partition(".")
                if not (sep and dot and label and option):
                    problems.append(f"opt={value!r} (expected METHOD.OPTION:VALUE)")
                    continue
                options.setdefault(label, {})[option] = text
            continue
        if name not in PARAMS:
            problems.append(f"{name}={values[-1]!r} (unknown parameter; known: {', '.join(PARAMS)}, {OPTION_PARAM})")
            continue
        key, kind = PARAMS[name]
        try:
            settings[key] = parse_value(values[-1], kind)
        except ValueError as error:
            problems.append(f"{name}: {error}")
    return settings, options, problems
