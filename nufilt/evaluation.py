"""Continual-merging evaluation: accuracy matrices, ACC and BWT, task orders, summaries.

Metrics follow ALGORITHMS.md (paper Sec. 5.1): after each step t the merged model θ̄t is scored
on every task seen so far, giving the lower-triangular matrix `a_i(θ̄t)`;
`ACC = mean_i a_i(θ̄T)` and `BWT = 1/(T−1) Σ_{i<T} [a_i(θ̄T) − a_i(θ̄i)]`. Accuracies are percent.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .backbones.base import Backbone
from .engine import RunEngine, check_order
from .methods import ABLATIONS, COMMON_OPTIONS, METHODS, paper_options
from .methods.base import build_options, resolve_aliases

if TYPE_CHECKING:
    from .grid import Workers

ProgressFn = Callable[[str, float], None]

# ---------------------------------------------------------------- metrics


def acc_bwt(matrix: Sequence[Sequence[float]]) -> tuple[float, float]:
    """(ACC, BWT) of a lower-triangular accuracy matrix; row t holds a_1..a_{t+1} after step t+1.

    BWT divides by T−1 (it is 0 for a single task).
    """
    if not matrix:
        raise ValueError("the accuracy matrix is empty")
    for t, row in enumerate(matrix):
        if len(row) < t + 1:
            raise ValueError(f"row {t} of the accuracy matrix needs {t + 1} entries, has {len(row)}")
    final, steps = matrix[-1], len(matrix)
    acc = sum(final[:steps]) / steps
    if steps == 1:
        return acc, 0.0
    bwt = sum(final[i] - matrix[i][i] for i in range(steps - 1)) / (steps - 1)
    return acc, bwt


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and population standard deviation (0 for a single value)."""
    if not values:
        raise ValueError("no values to summarise")
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


# ---------------------------------------------------------------- task orders


@cache
def _orders_file() -> dict:
    return json.loads((Path(__file__).parent / "data" / "task_orders.json").read_text())


def paper_task_counts() -> list[int]:
    return sorted(int(n) for n in _orders_file()["orders"])


ORDER_COUNT = 10  # orders per task count: the paper's ten, or as many seeded ones


def task_orders(tasks: Sequence[str]) -> list[list[str]]:
    """All task orders for `tasks`: the paper's ten for 8, 14 or 20 tasks, else seeded ones.

    Paper dataset id i (1-based, `task_orders.json`) becomes `tasks[i - 1]`. For any other count
    n, order 1 is `tasks` as given and orders 2..10 are distinct permutations drawn from a
    generator seeded by (n, order index), so they are the same on every machine; with n! < 10
    there are only n! distinct orders.
    """
    tasks = list(tasks)
    if not tasks:
        raise ValueError("no tasks to order")
    orders = _orders_file()["orders"].get(str(len(tasks)))
    if orders is not None:
        return [[tasks[i - 1] for i in order] for order in orders]
    result = [tasks]
    seen = {tuple(range(len(tasks)))}
    possible = math.factorial(len(tasks)) if len(tasks) < 10 else ORDER_COUNT
    for index in range(2, min(ORDER_COUNT, possible) + 1):
        rng = np.random.default_rng([len(tasks), index])
        while (permutation := tuple(int(i) for i in rng.permutation(len(tasks)))) in seen:
            pass
        seen.add(permutation)
        result.append([tasks[i] for i in permutation])
    return result


def paper_orders(tasks: Sequence[str], which: Sequence[int] | None = None) -> list[list[str]]:
    """Orders of `task_orders(tasks)` by 1-based index (default: all of them)."""
    orders = task_orders(tasks)
    which = list(range(1, len(orders) + 1)) if which is None else list(which)
    if not which:
        raise ValueError("no task orders selected")
    source = "the paper's" if len(orders[0]) in paper_task_counts() else "seeded"
    for index in which:
        if isinstance(index, bool) or not isinstance(index, int) or not 1 <= index <= len(orders):
            raise ValueError(
                f"order index must be in 1..{len(orders)} ({len(orders)} {source} orders of "
                f"{len(orders[0])} tasks), got {index!r}"
            )
    if len(set(which)) != len(which):
        raise ValueError(f"order indices repeat: {which}")
    return [orders[index - 1] for index in which]


def parse_order_indices(text: str, available: int = 10) -> list[int]:
    """ "1,2,3", "1-3" or "all" -> 1-based indices into the paper's orders."""
    text = text.strip()
    if text == "all":
        return list(range(1, available + 1))
    indices: list[int] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        low, dash, high = part.partition("-")
        try:
            span = range(int(low), int(high) + 1) if dash else [int(low)]
        except ValueError:
            raise ValueError(f"order indices must be integers, ranges such as 1-3, or 'all'; got {part!r}") from None
        indices.extend(span)
    if not indices:
        raise ValueError("no task orders given")
    return indices


# ---------------------------------------------------------------- method specs


@dataclass(frozen=True)
class MethodSpec:
    """A row of the results table: a label, the merge method it runs and its options."""

    label: str  # e.g. "nufilt", "null_space_only"
    method: str  # a key of METHODS
    options: dict[str, Any] = field(default_factory=dict)


def method_spec(
    label: str,
    n_tasks: int,
    recommended: Mapping[str, Mapping[str, Any]] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    **common: Any,
) -> MethodSpec:
    """Resolve a method or Table 4 ablation label to its options, lowest precedence first:

    paper_options (Table 9) < backbone-recommended < overrides[method] < ablation settings <
    overrides[label]. E.g. `overrides={"nufilt": {"steps": 100}}` also reaches the ablations.
    `common` holds options every method takes (device, seed, layers). Options are validated
    here (ValueError/TypeError), before any model is loaded.
    """
    recommended, overrides = recommended or {}, overrides or {}
    if label in METHODS:
        method, ablation = label, {}
    elif label in ABLATIONS:
        method, ablation = "nufilt", ABLATIONS[label]
    else:
        known = ", ".join([*METHODS, *ABLATIONS])
        raise ValueError(f"unknown method {label!r}; known methods and ablations: {known}")
    options_cls = METHODS[method].Options
    # older option spellings (NUFILT's null_space) are resolved per layer, so an ablation still wins
    options = {**paper_options(method, n_tasks), **recommended.get(method, {})}
    options.update(resolve_aliases(options_cls, overrides.get(method, {})))
    options.update(ablation)
    if label != method:
        options.update(resolve_aliases(options_cls, overrides.get(label, {})))
    options.update(common)
    own = {key: value for key, value in options.items() if key not in COMMON_OPTIONS}
    build_options(options_cls, method, own)
    return MethodSpec(label, method, options)


# ---------------------------------------------------------------- runs


@dataclass
class Run:
    """One method on one task order."""

    method: str
    order: list[str]
    acc: float
    bwt: float
    accuracy_matrix: list[list[float]]  # row t: accuracies on order[:t+1] after step t+1
    seconds: float  # merging time (all steps)
    eval_seconds: float
    base_method: str
    options: dict[str, Any]

    def to_json(self) -> dict:
        return asdict(self)


def run_order(
    backbone: Backbone,
    spec: MethodSpec,
    order: Sequence[str],
    progress: ProgressFn | None = None,
) -> Run:
    """Merge the task models of `order` one by one and score every seen task after each step."""
    engine = RunEngine(backbone, spec, order)
    matrix: list[list[float]] = []
    merge_seconds = eval_seconds = 0.0
    for record in engine:
        merge_seconds += record.report.seconds
        eval_seconds += record.eval_seconds
        matrix.append([record.scores[name] for name in engine.order[: record.step]])
        if progress:
            progress(f"{spec.label}: step {record.step}/{len(engine.order)} ({record.task})",
                     record.step / len(engine.order))
    acc, bwt = acc_bwt(matrix)
    return Run(spec.label, engine.order, acc, bwt, matrix, merge_seconds, eval_seconds, spec.method, dict(spec.options))


def summarize(runs: Sequence[Run]) -> dict[str, dict[str, float]]:
    """Mean ± std of ACC and BWT over orders, per method label (in first-seen order)."""
    labels = list(dict.fromkeys(run.method for run in runs))
    summary = {}
    for label in labels:
        mine = [run for run in runs if run.method == label]
        acc_mean, acc_std = mean_std([run.acc for run in mine])
        bwt_mean, bwt_std = mean_std([run.bwt for run in mine])
        summary[label] = {
            "acc_mean": acc_mean,
            "acc_std": acc_std,
            "bwt_mean": bwt_mean,
            "bwt_std": bwt_std,
            "n_orders": len(mine),
            "seconds_mean": mean_std([run.seconds for run in mine])[0],
        }
    return summary


def run_benchmark(
    backbone: Backbone,
    specs: Sequence[MethodSpec],
    orders: Sequence[Sequence[str]],
    progress: ProgressFn | None = None,
    workers: Workers | None = None,
) -> dict:
    """Every method on every order; the JSON document written by `python -m nufilt run`.

    With `workers` the runs are the cells of a Ray grid (`nufilt.grid`): the same document, runs
    in the same order, plus a top-level `workers` record (cells and peak memory per worker).
    """
    if not specs:
        raise ValueError("no methods to run")
    if not orders:
        raise ValueError("no task orders to run")
    names = [t.name for t in backbone.tasks]
    orders = [check_order(order, names) for order in orders]
    reference = backbone.reference()
    if workers is not None:
        return _run_grid_benchmark(backbone, specs, orders, progress, workers, reference)
    runs: list[Run] = []
    total = len(specs) * len(orders)
    for i, spec in enumerate(specs):
        for j, order in enumerate(orders):
            done = i * len(orders) + j

            def report(message: str, fraction: float, done: int = done, j: int = j) -> None:
                if progress:
                    progress(f"order {j + 1}/{len(orders)}, {message}", (done + fraction) / total)

            runs.append(run_order(backbone, spec, order, report))
    return {
        "backbone": backbone.name,
        "tasks": names,
        "runs": [run.to_json() for run in runs],
        "summary": summarize(runs),
        "reference": reference,
    }


def _run_grid_benchmark(backbone: Backbone, specs: Sequence[MethodSpec], orders: list[list[str]],
                        progress: ProgressFn | None, workers: Workers, reference: dict) -> dict:
    from .grid import Cell, run_grid

    cells = [Cell(run_order, spec, tuple(order), f"{spec.label}, order {j + 1}")
             for spec in specs for j, order in enumerate(orders)]
    grid = run_grid(cells, workers, progress=progress)
    runs: list[Run] = grid.values
    return {
        "backbone": backbone.name,
        "tasks": [t.name for t in backbone.tasks],
        "runs": [run.to_json() for run in runs],
        "summary": summarize(runs),
        "reference": reference,
        "workers": grid.record(),
    }


def reference_summary(reference: Mapping[str, Mapping[str, float]], tasks: Sequence[str]) -> dict[str, float]:
    """Mean accuracy of each reference row (pre-trained, individual) over `tasks`."""
    return {row: sum(scores[t] for t in tasks) / len(tasks) for row, scores in reference.items()}


def format_table(result: Mapping[str, Any]) -> str:
    """A plain-text table in the style of the paper's Table 1 (ACC and BWT, mean ± std)."""
    tasks = result["tasks"]
    lines = [f"{'method':<18} {'ACC':>14} {'BWT':>14} {'orders':>6}"]
    for row, value in reference_summary(result["reference"], tasks).items():
        lines.append(f"{row:<18} {value:>14.1f} {'-':>14} {'-':>6}")
    for label, s in result["summary"].items():
        acc = f"{s['acc_mean']:.1f} ± {s['acc_std']:.1f}"
        bwt = f"{s['bwt_mean']:.1f} ± {s['bwt_std']:.1f}"
        lines.append(f"{label:<18} {acc:>14} {bwt:>14} {s['n_orders']:>6}")
    return "\n".join(lines)
