"""Rank sensitivity of NUFILT (paper Fig. 4): ACC and BWT while one of r_p, r_l, r_v varies.

The paper's sweeps (d_in = 768): r_p with r_l = r_v = 0; r_l with r_p = 128, r_v = 8; r_v with
r_p = 128, r_l = 16. For a backbone of smaller width, `sweep_settings` scales r_p and r_l (values
and fixed ranks) by d_in / 768, keeping nonzero ranks >= 1; r_v (the rank of one task's subspace)
is not scaled, only clamped to d_in. Models are loaded once (`CachedBackbone`) and a point runs
one merge plus only the scores ACC and BWT use: a_t(θ̄t) after each step and the final row
(2T − 1 task evaluations instead of the full matrix's T(T+1)/2).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from ..backbones.base import Backbone
from ..engine import RunEngine
from ..evaluation import MethodSpec, acc_bwt, paper_orders
from ..grid import Cell, Workers, run_grid
from .activations import selected_layers
from .runs import CachedBackbone, resolve_spec

PAPER_WIDTH = 768
PAPER_SWEEPS: dict[str, dict[str, Any]] = {
    "r_p": {"values": (0, 32, 64, 128, 256, 384, 512), "fixed": {"r_l": 0, "r_v": 0}},
    "r_l": {"values": (0, 4, 8, 16, 32, 64, 128), "fixed": {"r_p": 128, "r_v": 8}},
    "r_v": {"values": (0, 2, 4, 8, 16, 32, 64), "fixed": {"r_p": 128, "r_l": 16}},
}
SWEEP_COLUMNS = (
    "parameter", "value", "order", "r_p", "r_l", "r_v", "acc", "bwt", "seconds", "merge_seconds", "eval_seconds",
)


def _scaled(name: str, value: int, d_in: int) -> int:
    if name == "r_v":
        return min(value, d_in)
    if value == 0:
        return 0
    return min(max(1, round(value * d_in / PAPER_WIDTH)), d_in)


def sweep_settings(parameter: str, d_in: int) -> tuple[list[int], dict[str, int]]:
    """(values, fixed ranks) of the paper's sweep of `parameter`, scaled to input width `d_in`."""
    if parameter not in PAPER_SWEEPS:
        raise ValueError(f"parameter must be one of {tuple(PAPER_SWEEPS)}, got {parameter!r}")
    if isinstance(d_in, bool) or not isinstance(d_in, int) or d_in < 1:
        raise ValueError(f"d_in must be a positive integer, got {d_in!r}")
    paper = PAPER_SWEEPS[parameter]
    values = sorted({_scaled(parameter, v, d_in) for v in paper["values"]})
    fixed = {name: _scaled(name, v, d_in) for name, v in paper["fixed"].items()}
    return values, fixed


def layer_width(backbone: Backbone) -> int:
    """The smallest input width among NUFILT's selected layers (768 for CLIP ViT-B)."""
    state = backbone.pretrained_state()
    return min(state[key].shape[1] for key in selected_layers(state))


def acc_bwt_run(backbone: Backbone, spec: MethodSpec, order: Sequence[str]) -> dict[str, float]:
    """ACC, BWT, merge and evaluation seconds of one run, scoring only what the two metrics use."""
    final = len(order)

    def scored(step: int, seen: list[str]) -> list[str]:
        return seen if step == final else seen[-1:]

    merge_seconds = eval_seconds = 0.0
    matrix: list[list[float]] = []
    for record in RunEngine(backbone, spec, order, score=scored):
        merge_seconds += record.report.seconds
        eval_seconds += record.eval_seconds
        seen = list(order[: record.step])
        matrix.append([record.scores.get(task, float("nan")) for task in seen])  # NaN: entries ACC/BWT never read
    acc, bwt = acc_bwt(matrix)
    return {"acc": acc, "bwt": bwt, "merge_seconds": merge_seconds, "eval_seconds": eval_seconds}


def sweep_point(backbone: Backbone, spec: MethodSpec, order: Sequence[str]) -> dict[str, float]:
    """`acc_bwt_run` plus its wall-clock `seconds`: one cell of a sweep grid (`nufilt.grid`)."""
    start = time.perf_counter()
    run = acc_bwt_run(backbone, spec, order)
    return {**run, "seconds": time.perf_counter() - start}


@dataclass(frozen=True)
class SweepPoint:
    """A cell of a sweep grid and where its row goes."""

    cell: Cell
    parameter: str
    value: int
    order: int  # 1-based index into the sweep's orders


def sweep_grid(
    backbone: Backbone,
    parameter: str,
    values: Sequence[int] | None = None,
    fixed: Mapping[str, int] | None = None,
    orders: Sequence[Sequence[str]] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    **common: Any,
) -> list[SweepPoint]:
    """The points of `rank_sweep` (same arguments), not run yet; `sweep_table` makes their rows."""
    default_values, default_fixed = sweep_settings(parameter, layer_width(backbone))
    values = default_values if values is None else [int(v) for v in values]
    fixed = {**default_fixed, **(fixed or {})}
    fixed.pop(parameter, None)
    names = [t.name for t in backbone.tasks]
    if orders is None:
        orders = paper_orders(names, [1])
    if not values or not orders:
        raise ValueError("a sweep needs at least one value and one task order")
    points = []
    for value in values:
        options = {**dict((overrides or {}).get("nufilt", {})), **fixed, parameter: value}
        spec = resolve_spec(backbone, "nufilt", len(orders[0]), {**(overrides or {}), "nufilt": options}, **common)
        for j, order in enumerate(orders):
            cell = Cell(sweep_point, spec, tuple(order), f"{parameter}={value}, order {j + 1}")
            points.append(SweepPoint(cell, parameter, value, j + 1))
    return points


def sweep_table(points: Sequence[SweepPoint], runs: Sequence[Mapping[str, float]]) -> pd.DataFrame:
    """One row per point with `SWEEP_COLUMNS`, from the points' `sweep_point` results."""
    rows = []
    for point, run in zip(points, runs, strict=True):
        ranks = {name: point.cell.spec.options[name] for name in ("r_p", "r_l", "r_v")}
        rows.append({"parameter": point.parameter, "value": point.value, "order": point.order, **ranks, **run})
    return pd.DataFrame(rows, columns=list(SWEEP_COLUMNS))


def rank_sweep(
    backbone: Backbone,
    parameter: str,
    values: Sequence[int] | None = None,
    fixed: Mapping[str, int] | None = None,
    orders: Sequence[Sequence[str]] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    progress: Callable[[str, float], None] | None = None,
    workers: Workers | None = None,
    **common: Any,
) -> pd.DataFrame:
    """ACC and BWT of NUFILT for each value of `parameter` ("r_p", "r_l" or "r_v").

    `values` / `fixed` default to `sweep_settings` for the backbone's width; `orders` to the
    paper's first order (or the task list when the task count has no paper orders). Other
    NUFILT options come from the paper, the backbone's recommendations and `overrides`.
    Points run here one after another, or with `workers` as a Ray grid (`nufilt.grid`).
    Returns one row per (value, order) with `SWEEP_COLUMNS`; `summarize_sweep` averages orders.
    """
    cached = CachedBackbone(backbone)
    points = sweep_grid(cached, parameter, values, fixed, orders, overrides, **common)
    grid = run_grid([point.cell for point in points], workers, cached, progress)
    return sweep_table(points, grid.values)


def summarize_sweep(table: pd.DataFrame) -> pd.DataFrame:
    """Mean and std (population) of ACC and BWT over orders, per (parameter, value)."""
    grouped = table.groupby(["parameter", "value"], sort=False)
    summary = grouped[["acc", "bwt"]].agg(["mean", "std"])
    summary.columns = [f"{metric}_{stat}" for metric, stat in summary.columns]
    summary = summary.reset_index()
    for metric in ("acc", "bwt"):
        summary[f"{metric}_std"] = grouped[metric].std(ddof=0).to_numpy()
    return summary
