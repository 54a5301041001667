"""Rank sweep inputs: parsed values, the layer sizes they are clamped to."""

from __future__ import annotations

import re

from ..analysis.activations import selected_layers
from ..backbones.base import Backbone

MAX_SWEEP_POINTS = 24  # each point merges every task of the order once and scores it


def parse_values(text: str, limit: int = MAX_SWEEP_POINTS) -> list[int]:
    """ "0, 8, 16" or "0-32:8" -> sorted distinct non-negative integers, at most `limit` of them
    (ValueError otherwise, before any range is expanded)."""
    values: set[int] = set()
    for part in filter(None, (p.strip() for p in re.split(r"[,\s]+", text))):
        match = re.fullmatch(r"(\d+)-(\d+):(\d+)", part)
        if match:
            low, high, stride = map(int, match.groups())
            if stride < 1 or high < low:
                raise ValueError(f"bad range {part!r}: use LOW-HIGH:STEP with LOW <= HIGH and STEP >= 1")
            if (high - low) // stride + 1 > limit:
                raise ValueError(f"{part!r} is {(high - low) // stride + 1} points; a sweep takes at most {limit} "
                                 "(each point merges every task): use a larger STEP")
            values.update(range(low, high + 1, stride))
        elif part.isdigit():
            values.add(int(part))
        else:
            raise ValueError(f"ranks must be non-negative integers (or LOW-HIGH:STEP ranges), got {part!r}")
    if not values:
        raise ValueError("no rank values given")
    if len(values) > limit:
        raise ValueError(f"{len(values)} points; a sweep takes at most {limit} (each point merges every task)")
    return sorted(values)


def layer_widths(backbone: Backbone) -> tuple[int, int]:
    """(smallest, largest) input width among NUFILT's layers: ranks above the smallest get clamped."""
    state = backbone.pretrained_state()
    widths = [state[key].shape[1] for key in selected_layers(state)]
    return min(widths), max(widths)


def rank_limit(backbone: Backbone) -> int:
    """The largest subspace rank every one of NUFILT's layers has: min(d_out, d_in) over them."""
    state = backbone.pretrained_state()
    return min(min(state[key].shape[:2]) for key in selected_layers(state))
