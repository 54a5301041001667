"""Geometry tables shaped for the Geometry page's figures."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from ..analysis.affinity import affinity_ecdf


def ecdf_with_layers(table: pd.DataFrame, pairs: Sequence[tuple[str, str]], kind: str = "all") -> pd.DataFrame:
    """`analysis.affinity_ecdf` plus the layer and random baseline of each point (for hover text).

    Columns: data_task, vector_task, pair, layer, kind, affinity, ecdf, baseline.
    """
    columns = ["data_task", "vector_task", "pair", "layer", "kind", "affinity", "ecdf", "baseline"]
    if not pairs:
        return pd.DataFrame(columns=columns)
    ecdf = affinity_ecdf(table, pairs, kind)  # validates kind and pairs
    rows = table if kind == "all" else table[table["kind"] == kind]
    parts = []
    for data_task, vector_task in pairs:
        mine = rows[(rows["data_task"] == data_task) & (rows["vector_task"] == vector_task)]
        mine = mine.sort_values("affinity", kind="stable").reset_index(drop=True)
        part = ecdf[(ecdf["data_task"] == data_task) & (ecdf["vector_task"] == vector_task)].reset_index(drop=True)
        part = part.assign(layer=mine["layer"], kind=mine["kind"], baseline=mine["baseline"])
        parts.append(part)
    return pd.concat(parts, ignore_index=True)[columns]


def default_pairs(tasks: Sequence[str]) -> list[tuple[str, str]]:
    """Two matched pairs and one mismatched pair (Fig. 2c)."""
    tasks = list(tasks)
    if len(tasks) < 2:
        return [(tasks[0], tasks[0])] if tasks else []
    return [(tasks[0], tasks[0]), (tasks[1], tasks[1]), (tasks[0], tasks[1])]
