"""Per-step geometry of a merge run: where each step's update lands (ALGORITHMS.md, "Per-step geometry").

For method m, step t, every seen task i <= t and selected layer, with V(M) the top-r_v right
singular vectors of M and V_d(i) task i's top-r_d data basis (the Fig. 2 statistics):
- `update_affinity`   A(V_d(i), V(Δt)), Δt = τ̄t − τ̄_{t−1} (τ̄0 = 0): low for i < t is transparency,
  high for i = t fidelity;
- `merged_affinity`   A(V_d(i), V(τ̄t)): how much of task i the merged vector still covers;
- `update_vector_affinity`  ‖V(Δt)ᵀ V(τi)‖²_F / r_v: the data-free counterpart (checkpoints only);
- `baseline`          r_v / d_in, a random subspace's expected affinity.
Per step also the principal angles between V(τt) and the top-r_p basis of τ̄_{t−1}, and the top
singular values of τ̄t. The bases are computed with the same code and batching as Fig. 2
(`affinity.vector_bases`), so at step 1 with θ̄1 = θ1 `merged_affinity` of task 1 is the Fig. 2
diagonal entry exactly. One basis per layer and step: the work grows with t only through the
cheap (d_in x r)-sized products per seen task.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import pandas as pd
import torch

from ..statedict import StateDict
from ..subspace import affinity, float64_basis, principal_angles, random_affinity_baseline, top_right_singular_vectors
from .activations import LayerStatistics
from .layers import layer_info, stacked, vector

STEP_GEOMETRY_COLUMNS = (
    "method", "step", "task", "new_task", "layer", "block", "kind",
    "update_affinity", "merged_affinity", "update_vector_affinity", "baseline",
)
ANGLE_COLUMNS = ("method", "step", "new_task", "layer", "block", "kind", "index", "angle_degrees")
SPECTRUM_COLUMNS = ("method", "step", "new_task", "layer", "block", "kind", "index", "value")


def _bases(keys: Sequence[str], shapes: Mapping[str, torch.Size], make, rank: int,
           solver: str = "exact", dtype: torch.dtype = torch.float64) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for group, matrices in stacked(keys, shapes, make):
        basis, _ = top_right_singular_vectors(matrices.to(dtype), min(rank, *matrices.shape[-2:]), solver)
        out.update(zip(group, float64_basis(basis), strict=True))
    return out


def step_geometry(
    method: str,
    step: int,
    seen: Sequence[str],
    pretrained: StateDict,
    previous: StateDict,
    merged: StateDict,
    task_bases: Mapping[str, Mapping[str, torch.Tensor]],
    keys: Sequence[str],
    data_stats: Mapping[str, Mapping[str, LayerStatistics]] | None = None,
    r_v: int = 8,
    r_d: int = 8,
    r_p: int = 128,
    top_k: int = 16,
    solver: str = "exact",
    spectra: bool = True,
    dtype: torch.dtype = torch.float64,
) -> dict[str, list[dict]]:
    """Rows of the three tables for one step (`seen`: task names in merge order, the new one
    last). `task_bases`: V(τi) per seen task and layer (`affinity.vector_bases(..., r_v)`);
    `data_stats`: per seen task and layer, or None without data (then the two data affinities
    are NaN). `previous` is θ̄_{t−1} (θ0 at step 1). `solver` computes the step's own bases
    (`subspace.top_right_singular_vectors`): "exact" keeps the step-1 identity with Fig. 2 exact;
    the app passes "auto" (randomized for small ranks of wide layers) to keep a step interactive.
    `spectra=False` skips the angle and spectrum tables (and their r_p basis and full spectrum).
    `dtype`: the precision of the step's bases (the task vectors are formed in float64 and cast;
    the overlaps are computed in float64 either way). float32 halves the basis cost; the app
    uses it: its affinities move by ~1e-6 (tests/analysis/test_step_geometry.py checks them
    against a float64 NumPy re-implementation)."""
    if not seen:
        raise ValueError("step geometry needs at least the new task in `seen`")
    for name, value in (("r_v", r_v), ("r_d", r_d), ("r_p", r_p), ("step", step)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if r_d > r_v:
        raise ValueError(f"need r_d <= r_v; got r_d={r_d}, r_v={r_v}")
    new_task = seen[-1]
    missing = [task for task in seen if task not in task_bases]
    if missing:
        raise ValueError(f"no task-vector basis for {', '.join(missing)}")
    shapes = {key: pretrained[key].shape for key in keys}
    update = _bases(keys, shapes, lambda k: vector(merged, previous, k), r_v, solver, dtype)   # V(Δt)
    # at step 1 (θ̄0 = θ0) Δ1 = τ̄1: the same matrices, so the same basis (computed once)
    merged_basis = update if previous is pretrained else _bases(
        keys, shapes, lambda k: vector(merged, pretrained, k), r_v, solver, dtype)            # V(τ̄t)
    old_basis = (_bases(keys, shapes, lambda k: vector(previous, pretrained, k), r_p, solver, dtype)
                 if step > 1 and spectra else {})
    base = {"method": method, "step": step, "new_task": new_task}
    rows, angles, spectrum = [], [], []
    for key in keys:
        info = layer_info(key)
        d_in = shapes[key][-1]
        rank = update[key].shape[-1]
        for task in seen:
            vector_basis = task_bases[task][key].double()
            overlap = float((update[key].mT.double() @ vector_basis).pow(2).sum() / vector_basis.shape[-1])
            data_update = data_merged = math.nan
            if data_stats is not None:
                data_basis = data_stats[task][key].basis(min(r_d, rank)).double()
                data_update = float(affinity(data_basis, update[key].double()))
                data_merged = float(affinity(data_basis, merged_basis[key].double()))
            rows.append({**base, "task": task, "layer": key, **info, "update_affinity": data_update,
                         "merged_affinity": data_merged, "update_vector_affinity": overlap,
                         "baseline": random_affinity_baseline(rank, d_in)})
        if key in old_basis:
            kept = old_basis[key][:, old_basis[key].abs().sum(0) > 0]  # numerically zero directions dropped
            if kept.shape[-1]:
                values = torch.rad2deg(principal_angles(task_bases[new_task][key].double(), kept.double()))
                angles.extend({**base, "layer": key, **info, "index": j + 1, "angle_degrees": float(v)}
                              for j, v in enumerate(values.tolist()))
        if spectra:
            singular = torch.linalg.svdvals(vector(merged, pretrained, key).to(dtype))[:top_k]
            spectrum.extend({**base, "layer": key, **info, "index": j + 1, "value": float(v)}
                            for j, v in enumerate(singular.tolist()))
    return {"step_geometry": rows, "step_angles": angles, "step_spectra": spectrum}


def geometry_tables(parts: Sequence[Mapping[str, list[dict]]]) -> dict[str, pd.DataFrame]:
    """The rows of several steps (and methods) as the three tidy tables."""
    columns = {"step_geometry": STEP_GEOMETRY_COLUMNS, "step_angles": ANGLE_COLUMNS, "step_spectra": SPECTRUM_COLUMNS}
    return {name: pd.DataFrame([row for part in parts for row in part.get(name, [])], columns=list(cols))
            for name, cols in columns.items()}


def summarize_geometry(table: pd.DataFrame) -> pd.DataFrame:
    """Per method and step, means over layers (and over earlier tasks): `old_update_affinity`
    (i < t; NaN at step 1), `new_update_affinity` (i = t), `new_update_vector_affinity`, `baseline`."""
    rows = []
    for (method, step), part in table.groupby(["method", "step"], sort=False):
        new = part[part["task"] == part["new_task"]]
        old = part[part["task"] != part["new_task"]]
        rows.append({"method": method, "step": int(step), "new_task": new["new_task"].iloc[0],
                     "old_update_affinity": float(old["update_affinity"].mean()) if len(old) else math.nan,
                     "new_update_affinity": float(new["update_affinity"].mean()),
                     "new_update_vector_affinity": float(new["update_vector_affinity"].mean()),
                     "baseline": float(part["baseline"].mean())})
    return pd.DataFrame(rows, columns=["method", "step", "new_task", "old_update_affinity", "new_update_affinity",
                                       "new_update_vector_affinity", "baseline"])
