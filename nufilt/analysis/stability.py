"""Stability and plasticity losses (paper Eq. 3-4, Fig. 5) from real activation statistics.

With the squared ℓ2 loss, `E_x ‖Δ x‖² = tr(Δ C Δᵀ)` for `C = E[x xᵀ]`, so the per-layer losses need
only the layers' input second moments:
- stability (Eq. 3): `Δ = θ̄t − θ̄_{t−1}` on old-task inputs, `C_old` = mean of `C_i`, i < t;
- plasticity (Eq. 4): `Δ = θ̄t − θt` on the new task's inputs, `C_t`.
Losses are per token, averaged over layers by `summarize_losses`; the harmonic mean
`2 s p / (s + p)` combines them (lower is better for all three).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import pandas as pd
import torch

from ..statedict import StateDict
from .activations import LayerStatistics
from .layers import layer_info, vector

LOSS_COLUMNS = ("method", "step", "task", "layer", "block", "kind", "stability", "plasticity")


def quadratic_loss(delta: torch.Tensor, covariance: torch.Tensor) -> torch.Tensor:
    """`tr(Δ C Δᵀ) = E‖Δ x‖²` for `Δ` `(..., d_out, d_in)` and `C` `(..., d_in, d_in)`."""
    return ((delta @ covariance) * delta).sum(dim=(-2, -1))


def harmonic_mean(stability: float, plasticity: float) -> float:
    """`2 s p / (s + p)`; 0 if either is 0, NaN if either is NaN."""
    if math.isnan(stability) or math.isnan(plasticity):
        return float("nan")
    total = stability + plasticity
    return 0.0 if total == 0 else 2.0 * stability * plasticity / total


def mean_covariance(stats: Sequence[Mapping[str, LayerStatistics]], key: str) -> torch.Tensor:
    """Second moment of a uniform mixture of tasks: the mean of their `C` at `key`."""
    return torch.stack([task_stats[key].covariance.double() for task_stats in stats]).mean(dim=0)


def step_losses(
    previous: StateDict,
    merged: StateDict,
    task_state: StateDict,
    old_stats: Sequence[Mapping[str, LayerStatistics]],
    new_stats: Mapping[str, LayerStatistics],
    keys: Sequence[str],
) -> list[dict[str, object]]:
    """Per-layer stability and plasticity of one merge step θ̄_{t−1} -> θ̄t (rows without method/step).

    `old_stats`: statistics of the tasks merged before this step (empty at step 1: stability is
    NaN); `new_stats`: those of the new task. Only the weight matrices `keys` are compared.
    """
    rows = []
    for key in keys:
        update = vector(merged, previous, key)
        stability = float(quadratic_loss(update, mean_covariance(old_stats, key))) if old_stats else float("nan")
        plasticity = float(quadratic_loss(vector(merged, task_state, key), new_stats[key].covariance.double()))
        rows.append({**layer_info(key), "stability": stability, "plasticity": plasticity})
    return rows


def summarize_losses(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per step, per method) summaries of a `LOSS_COLUMNS` table.

    Per step: method, step, task, stability, plasticity (means over layers) and harmonic (of the
    two). Per method, over steps t >= 2 (where both losses exist): the means of stability and
    plasticity, `harmonic` of those means, and `harmonic_mean_of_steps`.
    """
    per_step = table.groupby(["method", "step", "task"], sort=False)[["stability", "plasticity"]].mean().reset_index()
    pairs = zip(per_step["stability"], per_step["plasticity"], strict=True)
    per_step["harmonic"] = [harmonic_mean(s, p) for s, p in pairs]
    later = per_step[per_step["step"] >= 2]
    records = []
    for method, rows in later.groupby("method", sort=False):
        stability, plasticity = float(rows["stability"].mean()), float(rows["plasticity"].mean())
        records.append(
            {
                "method": method,
                "stability": stability,
                "plasticity": plasticity,
                "harmonic": harmonic_mean(stability, plasticity),
                "harmonic_mean_of_steps": float(rows["harmonic"].mean()),
                "steps": int(len(rows)),
            }
        )
    columns = ["method", "stability", "plasticity", "harmonic", "harmonic_mean_of_steps", "steps"]
    return per_step, pd.DataFrame(records, columns=columns)
