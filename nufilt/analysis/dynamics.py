"""One pass over a merge run per method: stability/plasticity losses, Corollary 1 rows and the trace."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from ..backbones.base import Backbone
from .activations import LayerStatistics, selected_layers, task_statistics
from .affinity import vector_bases
from .corollary import BOUND_COLUMNS, step_bounds, summarize_bounds
from .runs import merge_steps, resolve_spec
from .stability import LOSS_COLUMNS, step_losses, summarize_losses
from .step_geometry import geometry_tables, step_geometry, summarize_geometry
from .trace import Trace, trace_run


@dataclass
class Dynamics:
    """losses: `LOSS_COLUMNS` rows; bounds: `BOUND_COLUMNS` rows; trace: a `Trace` (all methods);
    geometry: the per-step geometry tables (`step_geometry.geometry_tables`)."""

    losses: pd.DataFrame
    bounds: pd.DataFrame
    trace: Trace
    geometry: dict[str, pd.DataFrame] = field(default_factory=lambda: geometry_tables([]))

    def geometry_summary(self) -> pd.DataFrame:
        """Per method and step: mean update affinity with the earlier tasks' data (i < t), with the
        new task's (i = t), the data-free overlap with the new task's vector, and the baseline."""
        return summarize_geometry(self.geometry["step_geometry"])

    def loss_summary(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(per step, per method): see `stability.summarize_losses`."""
        return summarize_losses(self.losses)

    def bound_summary(self) -> pd.DataFrame:
        return summarize_bounds(self.bounds)


def analyze_dynamics(
    backbone: Backbone,
    methods: Sequence[str],
    order: Sequence[str],
    stats: Mapping[str, Mapping[str, LayerStatistics]] | None = None,
    keys: Sequence[str] | None = None,
    r_d: int = 8,
    r_v: int = 8,
    top_k: int = 64,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    **common: Any,
) -> Dynamics:
    """Run every method (or NUFILT ablation) on `order` once and analyse each step.

    `stats` maps every task of `order` to its layer statistics (default: computed with
    `activations.task_statistics` and its defaults); `keys` defaults to NUFILT's layers;
    `r_d <= r_v` are the Corollary 1 ranks; the trace's removed energy uses NUFILT's r_p for this
    backbone (so every method is measured against the same filter). `overrides` and `common`
    (device, seed, layers) go to `evaluation.method_spec`.
    """
    keys = selected_layers(backbone.pretrained_state()) if keys is None else list(keys)
    if stats is None:
        stats = task_statistics(backbone, order, keys=keys)
    missing = [task for task in order if task not in stats]
    if missing:
        raise ValueError(f"no activation statistics for task(s) {missing}")
    n_tasks = len(order)
    r_p = resolve_spec(backbone, "nufilt", n_tasks, overrides).options["r_p"]
    pretrained = backbone.pretrained_state()
    task_bases = vector_bases(pretrained, {task: backbone.finetuned_state(task) for task in order}, keys, r_v)
    losses, bounds, traces, geometry = [], [], [], []
    for label in methods:
        spec = resolve_spec(backbone, label, n_tasks, overrides, **common)
        for record in merge_steps(backbone, spec, order):
            old = [stats[task] for task in order[: record.step - 1]]
            new = stats[record.task]
            tag = {"method": label, "step": record.step, "task": record.task}
            losses.extend({**tag, **row} for row in step_losses(
                record.previous, record.merged, record.task_state, old, new, keys))
            bounds.extend({**tag, **row} for row in step_bounds(
                record.pretrained, record.previous, record.merged, record.task_state, old, new, keys, r_d, r_v))
            traces.append(trace_run([record], keys, r_p, top_k))
            geometry.append(step_geometry(label, record.step, list(order[: record.step]), record.pretrained,
                                          record.previous, record.merged, task_bases, keys, stats, r_v, r_d, r_p))
    return Dynamics(
        pd.DataFrame(losses, columns=list(LOSS_COLUMNS)),
        pd.DataFrame(bounds, columns=list(BOUND_COLUMNS)),
        Trace.concat(traces),
        geometry_tables(geometry),
    )
