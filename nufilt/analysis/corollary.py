"""Numerical check of Corollary 1 (paper Eq. 11, 13-14) per layer and merge step.

`‖(ρ−τ)Xᵀ‖²_F <= 2 σ1(X)² (‖(ρ−τ)V̂‖²_F + r_d ζ² ‖ρ−τ‖²_2)`, with `V̂` the top-`r_v` right singular
vectors of τ, `V_d` the top-`r_d` right singular vectors of X and `ζ² = 1 − A(V_d, V̂)`. X enters
through `C = XᵀX / N` (both sides scale with N). The corollary assumes rank(X) = r_d; real
activations have full rank, so two left sides are reported: `lhs` with the real data and
`lhs_rank_rd` with X truncated to its top-`r_d` directions (where the bound is a theorem).
Per step (Eq. 13-14): "stability" uses (ρ, τ) = (τ̄t, τ̄_{t−1}) on old-task data, "plasticity"
(τ̄t, τt) on the new task's data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from ..statedict import StateDict
from ..subspace import affinity, top_right_singular_vectors
from .activations import LayerStatistics
from .layers import layer_info, stacked, vector
from .stability import mean_covariance, quadratic_loss

BOUND_COLUMNS = (
    "method", "step", "task", "check", "layer", "block", "kind", "lhs", "lhs_rank_rd", "rhs",
    "projection_term", "residual_term", "sigma1_squared", "affinity", "zeta_squared", "holds",
    "holds_rank_rd", "ratio",
)


def corollary_bound(
    delta: torch.Tensor, covariance: torch.Tensor, tau: torch.Tensor, r_d: int, r_v: int
) -> dict[str, torch.Tensor]:
    """Both sides of Eq. 11 for a stack of layers (every output `(...,)`).

    delta = ρ − τ `(..., d_out, d_in)`; covariance = XᵀX/N `(..., d_in, d_in)`; tau `(..., d_out,
    d_in)` gives V̂. Requires 1 <= r_d <= r_v <= min(d_out, d_in).
    """
    if not 1 <= r_d <= r_v <= min(tau.shape[-2:]):
        raise ValueError(f"need 1 <= r_d <= r_v <= min(d_out, d_in); got r_d={r_d}, r_v={r_v}, {tuple(tau.shape)}")
    delta, covariance, tau = delta.double(), covariance.double(), tau.double()
    values, vectors = torch.linalg.eigh((covariance + covariance.mT) / 2)
    values, vectors = values.flip(-1).clamp_min(0.0), vectors.flip(-1)
    data_basis = vectors[..., :r_d]  # V_d (..., d_in, r_d)
    sigma1_squared = values[..., 0]
    tau_basis, _ = top_right_singular_vectors(tau, r_v)  # V̂ (..., d_in, r_v)
    fit = affinity(data_basis, tau_basis)
    zeta_squared = (1.0 - fit).clamp_min(0.0)
    projection = (delta @ tau_basis).pow(2).sum(dim=(-2, -1))
    spectral = torch.linalg.matrix_norm(delta, ord=2).pow(2)
    rhs = 2.0 * sigma1_squared * (projection + r_d * zeta_squared * spectral)
    truncated = (data_basis * values[..., None, :r_d]) @ data_basis.mT  # C restricted to span(V_d)
    lhs = quadratic_loss(delta, covariance)
    lhs_rank_rd = quadratic_loss(delta, truncated)
    slack = 1e-9 * rhs + torch.finfo(torch.float64).tiny
    return {
        "lhs": lhs,
        "lhs_rank_rd": lhs_rank_rd,
        "rhs": rhs,
        "projection_term": 2.0 * sigma1_squared * projection,
        "residual_term": 2.0 * sigma1_squared * r_d * zeta_squared * spectral,
        "sigma1_squared": sigma1_squared,
        "affinity": fit,
        "zeta_squared": zeta_squared,
        "holds": lhs <= rhs + slack,
        "holds_rank_rd": lhs_rank_rd <= rhs + slack,
    }


def step_bounds(
    pretrained: StateDict,
    previous: StateDict,
    merged: StateDict,
    task_state: StateDict,
    old_stats: Sequence[Mapping[str, LayerStatistics]],
    new_stats: Mapping[str, LayerStatistics],
    keys: Sequence[str],
    r_d: int,
    r_v: int,
) -> list[dict[str, object]]:
    """Eq. 13 ("stability", from step 2) and Eq. 14 ("plasticity") rows for one merge step.

    r_v is clamped to min(d_out, d_in) and r_d to r_v per layer.
    """
    shapes = {key: pretrained[key].shape for key in keys}
    checks = {"plasticity": (lambda k: vector(merged, task_state, k), lambda k: vector(task_state, pretrained, k),
                             lambda k: new_stats[k].covariance.double())}
    if old_stats:
        checks["stability"] = (lambda k: vector(merged, previous, k), lambda k: vector(previous, pretrained, k),
                               lambda k: mean_covariance(old_stats, k))
    rows = []
    for check in ("stability", "plasticity"):
        if check not in checks:
            continue
        make_delta, make_tau, make_cov = checks[check]
        for group, delta in stacked(keys, shapes, make_delta):
            rank_v = min(r_v, *delta.shape[-2:])
            tau = torch.stack([make_tau(k) for k in group])
            covariance = torch.stack([make_cov(k) for k in group])
            result = corollary_bound(delta, covariance, tau, min(r_d, rank_v), rank_v)
            for i, key in enumerate(group):
                values = {name: tensor[i].item() for name, tensor in result.items()}
                rhs = values["rhs"]
                ratio = values["lhs"] / rhs if rhs > 0 else (0.0 if values["lhs"] == 0 else float("inf"))
                rows.append({"check": check, **layer_info(key), **values, "ratio": ratio})
    return rows


def summarize_bounds(table: pd.DataFrame) -> pd.DataFrame:
    """Per method and check: how often the bound holds and by how much.

    Columns: method, check, rows, hold_rate (real data), hold_rate_rank_rd, median_ratio and
    max_ratio (lhs / rhs; <= 1 where it holds), median_log10_slack (log10 rhs/lhs over rows with
    lhs > 0), mean_affinity, mean_zeta_squared.
    """
    records = []
    for (method, check), rows in table.groupby(["method", "check"], sort=False):
        positive = rows[(rows["lhs"] > 0) & (rows["rhs"] > 0)]
        records.append(
            {
                "method": method,
                "check": check,
                "rows": int(len(rows)),
                "hold_rate": float(rows["holds"].mean()),
                "hold_rate_rank_rd": float(rows["holds_rank_rd"].mean()),
                "median_ratio": float(rows["ratio"].median()),
                "max_ratio": float(rows["ratio"].max()),
                "median_log10_slack": float(np.median(np.log10(positive["rhs"] / positive["lhs"])))
                if len(positive) else float("nan"),
                "mean_affinity": float(rows["affinity"].mean()),
                "mean_zeta_squared": float(rows["zeta_squared"].mean()),
            }
        )
    return pd.DataFrame(records)
