"""Per-step trace of a merge run, for animating it: spectra, filtered energy, LoRA losses, norms.

Data-free: only θ0, θ̄_{t−1}, θ̄t and θt are used. Works for every method; the NUFILT-only
columns (LoRA loss curve, clamped ranks) come from the merger's report.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pandas as pd
import torch

from ..subspace import removed_energy, top_right_singular_vectors
from .layers import layer_info, stacked, vector
from .runs import StepRecord

LAYER_COLUMNS = (
    "method", "step", "task", "layer", "block", "kind", "r_p", "removed_energy", "task_norm", "previous_norm",
    "merged_norm", "update_norm", "nufilt_r_p", "nufilt_r_l", "nufilt_r_v",
)


@dataclass
class Trace:
    """Tidy tables of a run (or several: every table has a `method` column).

    steps: method, step, task, seconds, task_norm, merged_norm (whole-model ‖τt‖, ‖τ̄t‖).
    layers: `LAYER_COLUMNS`: per step and layer, the energy of τt inside the top-r_p right singular
        subspace of τ̄_{t−1} (‖τt V Vᵀ‖²/‖τt‖², what NUFILT's filter removes), Frobenius norms of τt,
        τ̄_{t−1}, τ̄t and of the update θ̄t − θ̄_{t−1}, and NUFILT's ranks (NaN for other methods).
    spectra: method, step, task, layer, block, kind, matrix ("task": τt, "previous": τ̄_{t−1}),
        index (1-based), value: the top singular values.
    loss_curves: method, step, task, layer, iteration (0 = before the first Adam step), loss.
    """

    steps: pd.DataFrame
    layers: pd.DataFrame
    spectra: pd.DataFrame
    loss_curves: pd.DataFrame

    @staticmethod
    def concat(traces: Sequence[Trace]) -> Trace:
        return Trace(*(pd.concat([getattr(t, name) for t in traces], ignore_index=True)
                       for name in ("steps", "layers", "spectra", "loss_curves")))


def step_trace(record: StepRecord, keys: Sequence[str], r_p: int, top_k: int = 64) -> dict[str, list[dict]]:
    """Rows of the four `Trace` tables for one merge step (r_p clamped per layer)."""
    method, base = record.spec.label, {"step": record.step, "task": record.task}
    shapes = {key: record.pretrained[key].shape for key in keys}
    nufilt_layers = record.report.info.get("layers", {}) if record.spec.method == "nufilt" else {}
    layers, spectra, curves = [], [], []
    for group, task_vectors in stacked(keys, shapes, lambda k: vector(record.task_state, record.pretrained, k)):
        previous = torch.stack([vector(record.previous, record.pretrained, k) for k in group])
        merged = torch.stack([vector(record.merged, record.pretrained, k) for k in group])
        rank = min(r_p, *task_vectors.shape[-2:])
        basis, _ = top_right_singular_vectors(previous, rank)
        energy = removed_energy(task_vectors, basis)
        norms = {
            "task_norm": torch.linalg.matrix_norm(task_vectors),
            "previous_norm": torch.linalg.matrix_norm(previous),
            "merged_norm": torch.linalg.matrix_norm(merged),
            "update_norm": torch.linalg.matrix_norm(merged - previous),
        }
        task_values = torch.linalg.svdvals(task_vectors)[..., :top_k]
        previous_values = torch.linalg.svdvals(previous)[..., :top_k]
        for i, key in enumerate(group):
            info = layer_info(key)
            ranks = nufilt_layers.get(key, {}).get("ranks", {})
            layers.append({
                "method": method, **base, **info, "r_p": rank, "removed_energy": float(energy[i]),
                **{name: float(value[i]) for name, value in norms.items()},
                **{f"nufilt_{name}": ranks.get(name, float("nan")) for name in ("r_p", "r_l", "r_v")},
            })
            for matrix, values in (("task", task_values[i]), ("previous", previous_values[i])):
                spectra.extend(
                    {"method": method, **base, **info, "matrix": matrix, "index": j + 1, "value": float(v)}
                    for j, v in enumerate(values.tolist())
                )
            curve = nufilt_layers.get(key, {}).get("loss_curve", [])
            curves.extend(
                {"method": method, **base, "layer": key, "iteration": j, "loss": float(v)} for j, v in enumerate(curve)
            )
    steps = [{"method": method, **base, "seconds": record.report.seconds, "task_norm": record.report.task_norm,
              "merged_norm": record.report.merged_norm}]
    return {"steps": steps, "layers": layers, "spectra": spectra, "loss_curves": curves}


def trace_run(records: Iterable[StepRecord], keys: Sequence[str], r_p: int, top_k: int = 64) -> Trace:
    """A `Trace` of a whole run, from `runs.merge_steps(...)` records."""
    tables: dict[str, list[dict]] = {"steps": [], "layers": [], "spectra": [], "loss_curves": []}
    for record in records:
        for name, rows in step_trace(record, keys, r_p, top_k).items():
            tables[name].extend(rows)
    columns = {
        "steps": ["method", "step", "task", "seconds", "task_norm", "merged_norm"],
        "layers": list(LAYER_COLUMNS),
        "spectra": ["method", "step", "task", "layer", "block", "kind", "matrix", "index", "value"],
        "loss_curves": ["method", "step", "task", "layer", "iteration", "loss"],
    }
    return Trace(*(pd.DataFrame(tables[name], columns=columns[name]) for name in columns))
