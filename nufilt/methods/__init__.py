"""The merge-method registry: name -> MergeMethod class."""

from __future__ import annotations

from typing import Any

from .base import COMMON_OPTIONS, MergeMethod, StepContext
from .iso_c import IsoC
from .knots_ties import KnotsTies
from .magmax import MagMax
from .nufilt import Nufilt
from .opcm import Opcm
from .task_arithmetic import TaskArithmetic
from .ties import Ties
from .tsv_m import TsvM
from .weight_average import WeightAverage
from .wudi import Wudi

METHODS: dict[str, type[MergeMethod]] = {
    cls.name: cls
    for cls in (WeightAverage, TaskArithmetic, Ties, MagMax, Opcm, Wudi, IsoC, TsvM, KnotsTies, Nufilt)
}

# Table 4 ablations of NUFILT, as option settings of the same implementation. "w/o null-space
# filter" has two readings: the paper's formula τt B A (P = 0, lora_only) and the authors' code,
# which runs τt (I + B A) (P = I, no_filter).
ABLATIONS: dict[str, dict[str, Any]] = {
    "naive": {"filter": "identity", "r_l": 0},
    "null_space_only": {"r_l": 0},
    "no_filter": {"filter": "identity"},
    "lora_only": {"filter": "zero"},
}


def get_method(name: str) -> type[MergeMethod]:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(METHODS)}")
    return METHODS[name]


def paper_options(method: str, n_tasks: int) -> dict[str, Any]:
    """The paper's settings (Table 9) for `method` with `n_tasks` tasks: only non-default ones."""
    if isinstance(n_tasks, bool) or not isinstance(n_tasks, int) or n_tasks < 1:
        raise ValueError(f"n_tasks must be a positive integer, got {n_tasks!r}")
    return get_method(method).paper_options(n_tasks)


__all__ = [
    "ABLATIONS",
    "COMMON_OPTIONS",
    "METHODS",
    "MergeMethod",
    "StepContext",
    "get_method",
    "paper_options",
]
