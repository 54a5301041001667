"""Every option of every registered method carries its help text (and choices) as field metadata."""

import dataclasses

import pytest

from nufilt.methods import METHODS
from nufilt.methods.base import option, option_help


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_option_has_help_metadata(name):
    options_cls = METHODS[name].Options
    for item in dataclasses.fields(options_cls):
        assert isinstance(item.metadata.get("help"), str) and item.metadata["help"].strip(), (name, item.name)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_declared_choices_are_exactly_what_validation_accepts(name):
    options_cls = METHODS[name].Options
    for field_name, (_, choices) in option_help(options_cls).items():
        default = getattr(options_cls(), field_name)
        if isinstance(default, str):
            assert choices, f"{name}.{field_name} is a string option without choices"
            assert default in choices
        for choice in choices:
            assert getattr(options_cls(**{field_name: choice}), field_name) == choice
        if choices:
            with pytest.raises(ValueError, match=field_name):
                options_cls(**{field_name: "not-a-choice"})


def test_an_option_without_help_is_refused():
    with pytest.raises(ValueError, match="help"):
        option(1, "")
