"""Subspace affinity between data and task vectors (paper Eq. 5, Fig. 2, App. C.2).

`A(V_d, V̂) = ‖V̂ᵀ V_d‖²_F / r_d`: `V_d` = top `r_d` eigenvectors of a layer's input second moment on
a *data* task, `V̂` = top `r_v` right singular vectors of that layer's *vector* task's τ. Tables
are tidy (one row per data task, vector task and layer); matrices are data task x vector task.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from ..backbones.base import Backbone
from ..statedict import StateDict
from ..subspace import affinity, float64_basis, random_affinity_baseline, top_right_singular_vectors
from .activations import LayerStatistics, selected_layers, task_statistics
from .layers import layer_info, stacked, vector

AFFINITY_COLUMNS = (
    "data_task", "vector_task", "layer", "block", "kind", "d_in", "r_d", "r_v", "affinity", "baseline",
)
KINDS = ("all", "attention", "mlp")


def vector_bases(
    pretrained: StateDict, finetuned: Mapping[str, StateDict], keys: Sequence[str], r_v: int,
    solver: str = "exact", dtype: torch.dtype = torch.float64,
) -> dict[str, dict[str, torch.Tensor]]:
    """V̂ per task and layer: top-`r_v` right singular vectors of τ = θt − θ0, `(d_in, r_v)` float64.
    `dtype` is the precision they are computed in (τ is formed in float64 and cast; a float32
    basis is re-orthonormalised in float64): float64 for Fig. 2, float32 for the app's live geometry.

    `r_v` is clamped to min(d_out, d_in) per layer; `solver` as in `subspace.top_right_singular_vectors`
    (Fig. 2 uses "exact"; the app's live geometry "auto").
    """
    if isinstance(r_v, bool) or not isinstance(r_v, int) or r_v < 1:
        raise ValueError(f"r_v must be a positive integer, got {r_v!r}")
    shapes = {key: pretrained[key].shape for key in keys}
    bases: dict[str, dict[str, torch.Tensor]] = {}
    for task, state in finetuned.items():
        bases[task] = {}
        for group, matrices in stacked(keys, shapes, lambda key, state=state: vector(state, pretrained, key)):
            rank = min(r_v, *matrices.shape[-2:])
            basis, _ = top_right_singular_vectors(matrices.to(dtype), rank, solver)  # (L, d_in, r_v)
            bases[task].update(zip(group, float64_basis(basis), strict=True))
    return bases


def affinity_table(
    data_stats: Mapping[str, Mapping[str, LayerStatistics]],
    bases: Mapping[str, Mapping[str, torch.Tensor]],
    r_d: int,
) -> pd.DataFrame:
    """Eq. 5 for every (data task, vector task, layer): a tidy table with `AFFINITY_COLUMNS`.

    `data_stats`: {data task: {layer: statistics}}; `bases`: {vector task: {layer: V̂}}. Requires
    `1 <= r_d <= r_v` on every layer (the paper's condition). `baseline` is r_v / d_in, the
    expected affinity of a uniformly random r_v-dimensional subspace.
    """
    if not data_stats or not bases:
        raise ValueError("affinity needs at least one data task and one vector task")
    data_tasks, vector_tasks = list(data_stats), list(bases)
    keys = list(next(iter(bases.values())))
    rows = []
    for key in keys:
        vec = torch.stack([bases[task][key] for task in vector_tasks]).double()  # (V, d_in, r_v)
        r_v, d_in = vec.shape[-1], vec.shape[-2]
        if not 1 <= r_d <= r_v:
            raise ValueError(f"need 1 <= r_d <= r_v; got r_d={r_d}, r_v={r_v} at layer {key!r}")
        data = torch.stack([data_stats[task][key].basis(r_d) for task in data_tasks]).double()  # (D, d_in, r_d)
        values = affinity(data[:, None], vec[None, :]).numpy()  # (D, V)
        info = layer_info(key)
        baseline = random_affinity_baseline(r_v, d_in)
        for i, data_task in enumerate(data_tasks):
            for j, vector_task in enumerate(vector_tasks):
                rows.append((data_task, vector_task, key, info["block"], info["kind"], d_in, r_d, r_v,
                             float(values[i, j]), baseline))
    return pd.DataFrame(rows, columns=list(AFFINITY_COLUMNS))


def _kind_rows(table: pd.DataFrame, kind: str) -> pd.DataFrame:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    rows = table if kind == "all" else table[table["kind"] == kind]
    if rows.empty:
        raise ValueError(f"the affinity table has no {kind} layers")
    return rows


def _statistic(stat: str | float):
    if stat == "mean":
        return "mean"
    if stat == "p90":
        return lambda values: float(np.quantile(values, 0.9))
    if isinstance(stat, float) and 0.0 <= stat <= 1.0:
        return lambda values: float(np.quantile(values, stat))
    raise ValueError(f"stat must be 'mean', 'p90' or a quantile in [0, 1], got {stat!r}")


def affinity_matrix(table: pd.DataFrame, stat: str | float = "mean", kind: str = "all") -> pd.DataFrame:
    """Data task (rows) x vector task (columns): the mean or a quantile of affinity over layers.

    `stat`: "mean", "p90" or a quantile in [0, 1]; `kind`: "all", "attention" or "mlp". Task
    order is the table's order of first appearance. `.to_numpy()` gives the plain array.
    """
    rows = _kind_rows(table, kind)
    matrix = rows.groupby(["data_task", "vector_task"], sort=False)["affinity"].agg(_statistic(stat)).unstack()
    data_order = list(dict.fromkeys(table["data_task"]))
    vector_order = list(dict.fromkeys(table["vector_task"]))
    return matrix.reindex(index=data_order, columns=vector_order)


def affinity_ecdf(
    table: pd.DataFrame, pairs: Sequence[tuple[str, str]], kind: str = "all"
) -> pd.DataFrame:
    """Layer-wise ECDF of affinity per (data task, vector task) pair (paper Fig. 2c).

    Columns: data_task, vector_task, pair ("data -> vector"), affinity (sorted ascending per
    pair), ecdf (fraction of layers with affinity <= the value, in (0, 1]).
    """
    rows = _kind_rows(table, kind)
    parts = []
    for data_task, vector_task in pairs:
        values = np.sort(
            rows.loc[(rows["data_task"] == data_task) & (rows["vector_task"] == vector_task), "affinity"].to_numpy()
        )
        if values.size == 0:
            raise ValueError(f"no affinity rows for the pair ({data_task!r}, {vector_task!r})")
        parts.append(
            pd.DataFrame(
                {
                    "data_task": data_task,
                    "vector_task": vector_task,
                    "pair": f"{data_task} -> {vector_task}",
                    "affinity": values,
                    "ecdf": np.arange(1, values.size + 1) / values.size,
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


def diagonal_dominance(table: pd.DataFrame) -> pd.DataFrame:
    """How strongly matched pairs beat mismatched ones, per layer kind and statistic.

    One row per (kind, stat ∈ {mean, p90}) of the data x vector matrix: `diagonal` (mean of the
    matched entries), `off_diagonal` (mean of the others), `baseline` (mean r_v / d_in),
    `ratio` = diagonal / off_diagonal, and `dominant_rows` / `dominant_columns`: the fraction of
    data (vector) tasks whose matched entry is the largest of its row (column). Only tasks that
    appear as both data and vector task count as matched.
    """
    records = []
    for kind in KINDS:
        if kind != "all" and not (table["kind"] == kind).any():
            continue
        for stat in ("mean", "p90"):
            matrix = affinity_matrix(table, stat, kind)
            common = [task for task in matrix.index if task in matrix.columns]
            values = matrix.loc[common, common].to_numpy()
            mask = np.eye(len(common), dtype=bool)
            diagonal = values[mask]
            off = values[~mask]
            records.append(
                {
                    "kind": kind,
                    "stat": stat,
                    "diagonal": float(diagonal.mean()),
                    "off_diagonal": float(off.mean()) if off.size else float("nan"),
                    "baseline": float(_kind_rows(table, kind)["baseline"].mean()),
                    "ratio": float(diagonal.mean() / off.mean()) if off.size and off.mean() > 0 else float("nan"),
                    "dominant_rows": float(np.mean(values.argmax(axis=1) == np.arange(len(common)))),
                    "dominant_columns": float(np.mean(values.argmax(axis=0) == np.arange(len(common)))),
                }
            )
    return pd.DataFrame(records)


def backbone_affinity(
    backbone: Backbone,
    tasks: Sequence[str] | None = None,
    r_d: int = 8,
    r_v: int = 8,
    keys: Sequence[str] | None = None,
    **statistics: object,
) -> pd.DataFrame:
    """`affinity_table` of a backbone's tasks (default: all) on NUFILT's layers (default).

    `statistics` go to `activations.activation_statistics` (n_samples, split, source, cache_dir).
    Pass a `runs.CachedBackbone` to keep the task models in memory between calls.
    """
    names = [t.name for t in backbone.tasks] if tasks is None else list(tasks)
    pretrained = backbone.pretrained_state()
    keys = selected_layers(pretrained) if keys is None else list(keys)
    stats = task_statistics(backbone, names, keys=keys, **statistics)
    bases = vector_bases(pretrained, {task: backbone.finetuned_state(task) for task in names}, keys, r_v)
    return affinity_table(stats, bases, r_d)
