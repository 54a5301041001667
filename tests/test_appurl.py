"""The app's Setup choices as URL query parameters (`nufilt.appstate.appurl`)."""

from __future__ import annotations

import pytest

from nufilt.appstate.appurl import params_to_settings, parse_value, settings_to_params

DEFAULTS = {"backbone": "tiny-vit", "n_tasks": 8, "methods": ["nufilt", "opcm"], "quick": False, "seed": 0}


def test_only_changed_choices_are_written_and_they_read_back():
    settings = {**DEFAULTS, "n_tasks": 14, "methods": ["nufilt", "ties"], "quick": True}
    params = settings_to_params(settings, DEFAULTS, {"nufilt": {"r_p": 64, "lora": False}})
    assert params == {"quick": "1", "tasks": "14", "methods": "nufilt,ties", "opt": ["nufilt.r_p:64", "nufilt.lora:0"]}
    read, options, problems = params_to_settings(params)
    assert read == {"quick": True, "n_tasks": 14, "methods": ["nufilt", "ties"]} and not problems
    assert options == {"nufilt": {"r_p": "64", "lora": "0"}}
    assert settings_to_params(DEFAULTS, DEFAULTS) == {}


def test_bad_values_and_unknown_names_are_named_and_left_out():
    read, options, problems = params_to_settings({"tasks": "eight", "seed": ["1", "2"], "colour": "red",
                                                  "opt": ["nufilt-r_p-3"]})
    assert read == {"seed": 2}  # a repeated parameter: the last value
    assert not options
    assert any("tasks" in p and "not a whole number" in p for p in problems)
    assert any(p.startswith("colour=") for p in problems) and any("METHOD.OPTION:VALUE" in p for p in problems)


@pytest.mark.parametrize(("text", "kind", "value"), [("3", "int", 3), ("0.5", "float", 0.5), ("true", "bool", True),
                                                     ("off", "bool", False), (" a, b ,", "list", ["a", "b"])])
def test_values_are_parsed_by_kind(text, kind, value):
    assert parse_value(text, kind) == value


def test_a_value_of_the_wrong_kind_is_a_value_error():
    with pytest.raises(ValueError, match="not 0/1"):
        parse_value("maybe", "bool")
