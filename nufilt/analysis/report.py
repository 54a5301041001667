"""The whole analysis of a backbone as one JSON-able document (`python -m nufilt analyze`)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ..backbones.base import Backbone
from ..evaluation import check_order, paper_orders
from ..grid import Workers, run_grid
from .activations import DEFAULT_SAMPLES, SOURCES, clamp_samples, selected_layers, task_statistics
from .affinity import KINDS, affinity_matrix, affinity_table, diagonal_dominance, vector_bases
from .dynamics import analyze_dynamics
from .runs import CachedBackbone
from .sweeps import summarize_sweep, sweep_grid, sweep_table

DEFAULT_METHODS = ("nufilt", "task_arithmetic", "opcm")
TRACE_TABLES = ("steps", "layers", "spectra", "loss_curves")


def records(table: pd.DataFrame) -> list[dict[str, Any]]:
    """A DataFrame as JSON-ready records (NaN -> None, NumPy scalars -> Python)."""
    return json.loads(table.to_json(orient="records", double_precision=10))


def matrix_json(matrix: pd.DataFrame) -> dict[str, Any]:
    return {"rows": list(matrix.index), "columns": list(matrix.columns), "values": matrix.to_numpy().tolist()}


def analyze(
    backbone: Backbone,
    order: Sequence[str] | None = None,
    methods: Sequence[str] = DEFAULT_METHODS,
    n_samples: int | None = None,
    split: str = "test",
    source: str = "finetuned",
    r_d: int = 8,
    r_v: int = 8,
    top_k: int = 32,
    sweeps: Sequence[str] = (),
    cache_dir: str | Path | None = None,
    progress: Callable[[str, float], None] | None = None,
    workers: Workers | None = None,
    **common: Any,
) -> dict[str, Any]:
    """Affinity (Fig. 2), stability/plasticity (Fig. 5), Corollary 1, the trace and optional sweeps (Fig. 4).

    `order` defaults to the paper's first order for 8/14/20 tasks, else the backbone's task list.
    `common` (device, seed) goes to every merge. `workers`: run the sweeps' points on Ray (`nufilt.grid`).
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    if not 1 <= r_d <= r_v:
        raise ValueError(f"need 1 <= r_d <= r_v, got r_d={r_d}, r_v={r_v}")
    report = progress or (lambda message, fraction: None)
    backbone = CachedBackbone(backbone)
    names = [t.name for t in backbone.tasks]
    if order is None:
        order = paper_orders(names, [1])[0]
    order = check_order(order, names)
    pretrained = backbone.pretrained_state()
    keys = selected_layers(pretrained)
    timings: dict[str, float] = {}

    start = time.perf_counter()
    report("activation statistics", 0.0)
    if n_samples is None:  # 256, or all of the embedded zoo's test images when it has fewer
        n_samples = clamp_samples(backbone, DEFAULT_SAMPLES)
    stats = task_statistics(backbone, names, keys=keys, n_samples=n_samples, split=split, source=source,
                            cache_dir=cache_dir)
    timings["activations"] = time.perf_counter() - start

    start = time.perf_counter()
    report("subspace affinity", 0.2)
    bases = vector_bases(pretrained, {task: backbone.finetuned_state(task) for task in names}, keys, r_v)
    table = affinity_table(stats, bases, r_d)
    matrices = {kind: {stat: matrix_json(affinity_matrix(table, stat, kind)) for stat in ("mean", "p90")}
                for kind in KINDS if kind == "all" or (table["kind"] == kind).any()}
    timings["affinity"] = time.perf_counter() - start

    start = time.perf_counter()
    report("stability / plasticity, Corollary 1, trace", 0.4)
    dynamics = analyze_dynamics(backbone, methods, order, stats, keys, r_d, r_v, top_k, **common)
    per_step, per_method = dynamics.loss_summary()
    timings["dynamics"] = time.perf_counter() - start

    document: dict[str, Any] = {
        "backbone": backbone.name,
        "tasks": names,
        "order": list(order),
        "layers": keys,
        "settings": {"n_samples": n_samples, "split": split, "source": source, "r_d": r_d, "r_v": r_v,
                     "methods": list(methods), "top_k": top_k},
        "affinity": {
            "dominance": records(diagonal_dominance(table)),
            "matrices": matrices,
            "layers": records(table),
        },
        "stability_plasticity": {
            "summary": records(per_method),
            "per_step": records(per_step),
            "layers": records(dynamics.losses),
        },
        "corollary": {"summary": records(dynamics.bound_summary()), "layers": records(dynamics.bounds)},
        "trace": {name: records(getattr(dynamics.trace, name)) for name in TRACE_TABLES},
        # per-step geometry (ALGORITHMS.md): record fields are fixed, scripts read them
        "step_geometry": records(dynamics.geometry["step_geometry"]),
        "step_angles": records(dynamics.geometry["step_angles"]),
        "step_spectra": records(dynamics.geometry["step_spectra"]),
        "step_geometry_summary": records(dynamics.geometry_summary()),
    }
    if sweeps:  # every point of every sweep in one grid (on Ray: each worker loads the models once)
        start = time.perf_counter()
        report("rank sweeps", 0.6)
        points = [point for parameter in sweeps for point in sweep_grid(backbone, parameter, orders=[order], **common)]

        def sweep_progress(message: str, fraction: float) -> None:
            report(f"rank sweeps: {message}", 0.6 + 0.4 * fraction)

        grid = run_grid([point.cell for point in points], workers, backbone, sweep_progress)
        sweep_rows = sweep_table(points, grid.values)
        document["sweeps"] = {"summary": records(summarize_sweep(sweep_rows)), "runs": records(sweep_rows)}
        if grid.workers:
            document["workers"] = grid.record()
        timings["sweeps"] = time.perf_counter() - start
    document["timings"] = timings
    report("analysis done", 1.0)
    return document


def format_summary(document: dict[str, Any]) -> str:
    """Plain-text tables of an `analyze` document: diagonal dominance, Fig. 5 losses, Corollary 1."""
    lines = [f"{document['backbone']}, {len(document['tasks'])} tasks, {len(document['layers'])} layers; "
             f"r_d={document['settings']['r_d']}, r_v={document['settings']['r_v']}", "",
             f"{'affinity':<18} {'diagonal':>9} {'off-diag':>9} {'random':>9} {'dominant':>9}"]
    for row in document["affinity"]["dominance"]:
        lines.append(f"{row['kind'] + ' ' + row['stat']:<18} {row['diagonal']:>9.3f} {row['off_diagonal']:>9.3f} "
                     f"{row['baseline']:>9.3f} {row['dominant_rows']:>9.2f}")
    lines += ["", f"{'method':<18} {'stability':>11} {'plasticity':>11} {'harmonic':>11}"]
    for row in document["stability_plasticity"]["summary"]:
        values = " ".join(f"{row[name]:>11.4g}" for name in ("stability", "plasticity", "harmonic"))
        lines.append(f"{row['method']:<18} {values}")
    lines += ["", f"{'Corollary 1':<18} {'check':<11} {'holds':>7} {'rank r_d':>9} {'median lhs/rhs':>15}"]
    for row in document["corollary"]["summary"]:
        lines.append(f"{row['method']:<18} {row['check']:<11} {row['hold_rate']:>7.1%} "
                     f"{row['hold_rate_rank_rd']:>9.1%} {row['median_ratio']:>15.3g}")
    if document.get("step_geometry_summary"):
        lines += ["", "update affinity per step (mean over layers): with the earlier tasks' data / the new task's",
                  f"{'method':<18} " + " ".join(f"{'t=' + str(t):>11}" for t in
                                               sorted({row['step'] for row in document['step_geometry_summary']}))]
        by_method: dict[str, list[str]] = {}
        for row in document["step_geometry_summary"]:
            value = row["old_update_affinity"]
            old = "   -" if value is None or value != value else f"{value:.2f}"
            by_method.setdefault(row["method"], []).append(f"{old}/{row['new_update_affinity']:.2f}".rjust(11))
        lines += [f"{method:<18} " + " ".join(cells) for method, cells in by_method.items()]
    if "sweeps" in document:
        lines += ["", f"{'sweep':<18} {'ACC':>9} {'BWT':>9}"]
        for row in document["sweeps"]["summary"]:
            label = f"{row['parameter']}={row['value']}"
            lines.append(f"{label:<18} {row['acc_mean']:>9.1f} {row['bwt_mean']:>9.1f}")
    return "\n".join(lines)
