"""Layer naming helpers shared by the analyses: attention vs MLP, block index, stacking by shape."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

import torch

from ..statedict import StateDict

_ATTENTION = ("attn", "attention")
_MLP = ("mlp", "densereludense", "c_fc", "fc1", "fc2", "feed_forward", "ffn")


def layer_kind(key: str) -> str:
    """"attention", "mlp" or "other", from the key's name."""
    lowered = key.lower()
    if any(part in lowered for part in _ATTENTION):
        return "attention"
    if any(part in lowered for part in _MLP):
        return "mlp"
    return "other"


def block_index(key: str) -> int:
    """The first integer path component (the transformer block), -1 when there is none."""
    match = re.search(r"(?:^|\.)(\d+)(?:\.|$)", key)
    return int(match.group(1)) if match else -1


def layer_info(key: str) -> dict[str, object]:
    return {"layer": key, "block": block_index(key), "kind": layer_kind(key)}


def stacked(
    keys: Sequence[str], shapes: Mapping[str, torch.Size], make: Callable[[str], torch.Tensor]
) -> list[tuple[list[str], torch.Tensor]]:
    """Group `keys` by shape (order kept) and stack `make(key)` per group: [(keys, (L, ...))]."""
    groups: dict[tuple[int, ...], list[str]] = {}
    for key in keys:
        groups.setdefault(tuple(shapes[key]), []).append(key)
    return [(group, torch.stack([make(key) for key in group])) for group in groups.values()]


def vector(state: StateDict, pretrained: StateDict, key: str) -> torch.Tensor:
    """`state[key] − pretrained[key]` as a new float64 tensor."""
    return state[key].double() - pretrained[key].double()
