"""The run engine: merge a task order one step at a time, score the seen tasks, analyse the step.

Every consumer of a continual run (`evaluation.run_order`, the analyses' `merge_steps` and
sweeps, the app's `MultiRun`) steps a `RunEngine`. A step is atomic: the merge, the evaluation
and the caller's statistics run inside one `Merger.transaction()`, so if any of them raises, the
engine is exactly as before the step and a retry merges the same task again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .backbones.base import Backbone
from .merge import StepReport, make_merger
from .statedict import StateDict

if TYPE_CHECKING:
    from .evaluation import MethodSpec

# (step, seen tasks) -> the tasks to score after that step; [] skips the evaluation
ScoreFn = Callable[[int, list[str]], Sequence[str]]


def check_order(order: Sequence[str], tasks: Sequence[str], length: int | None = None) -> list[str]:
    """Validate a custom order over the task names `tasks`; returns it as a list."""
    order = list(order)
    if not order:
        raise ValueError("a task order must name at least one task")
    unknown = [name for name in order if name not in tasks]
    if unknown:
        raise ValueError(f"unknown task(s) in order: {', '.join(map(repr, unknown))}; known tasks: {', '.join(tasks)}")
    repeated = sorted({name for name in order if order.count(name) > 1})
    if repeated:
        raise ValueError(f"task(s) appear more than once in the order: {', '.join(repeated)}")
    if length is not None and len(order) != length:
        raise ValueError(f"the order has {len(order)} tasks; expected {length}")
    return order


def score_seen(step: int, seen: list[str]) -> list[str]:
    """The default: every task merged so far (a full row of the accuracy matrix)."""
    return list(seen)


def score_none(step: int, seen: list[str]) -> list[str]:
    return []


@dataclass
class StepRecord:
    """One merge step (all states are read-only views)."""

    step: int  # 1-based
    task: str
    pretrained: StateDict  # θ0
    previous: StateDict  # θ̄_{t−1} (θ0 at step 1)
    merged: StateDict  # θ̄t
    task_state: StateDict  # θt
    report: StepReport
    spec: MethodSpec
    scores: dict[str, float] = field(default_factory=dict)  # the scored tasks' accuracies
    eval_seconds: float = 0.0
    analysis: Any = None  # what the engine's `analyze` returned for this step
    analysis_seconds: float = 0.0


class RunEngine:
    """One method on one task order, stepped by `step()`.

    `score(step, seen)` names the tasks to evaluate after each step (default: all seen ones);
    `analyze(record)` computes per-step statistics (trace, losses, geometry) from the record,
    its result lands in `record.analysis`. Both run inside the step's transaction.
    """

    def __init__(self, backbone: Backbone, spec: MethodSpec, order: Sequence[str],
                 score: ScoreFn = score_seen, analyze: Callable[[StepRecord], Any] | None = None,
                 pretrained: StateDict | None = None) -> None:
        self.backbone = backbone
        self.spec = spec
        self.order = check_order(order, [t.name for t in backbone.tasks])
        self.score = score
        self.analyze = analyze
        self.pretrained = backbone.pretrained_state() if pretrained is None else pretrained
        self.merger = make_merger(spec.method, self.pretrained, **spec.options)
        self.merged: StateDict | None = None  # θ̄ after the last committed step

    @property
    def steps_done(self) -> int:
        return self.merger.step

    @property
    def finished(self) -> bool:
        return self.steps_done >= len(self.order)

    def step(self) -> StepRecord:
        """Merge the next task, score and analyse; on any error nothing changes and it propagates."""
        if self.finished:
            raise ValueError(f"the run is finished: all {len(self.order)} tasks are merged")
        step = self.steps_done + 1
        task = self.order[step - 1]
        previous = self.pretrained if self.merged is None else self.merged
        with self.merger.transaction():
            task_state = self.backbone.finetuned_state(task)
            merged = self.merger.add(task_state)
            assert self.merger.report is not None
            record = StepRecord(step, task, self.pretrained, previous, merged, task_state, self.merger.report,
                                self.spec)
            scored = list(self.score(step, list(self.order[:step])))
            if scored:
                start = time.perf_counter()
                record.scores = dict(self.backbone.evaluate(merged, scored))
                record.eval_seconds = time.perf_counter() - start
                missing = [name for name in scored if name not in record.scores]
                if missing:
                    raise RuntimeError(f"the evaluation returned no score for task(s) {missing}")
            if self.analyze is not None:
                start = time.perf_counter()
                record.analysis = self.analyze(record)
                record.analysis_seconds = time.perf_counter() - start
        self.merged = merged
        return record

    def __iter__(self) -> Iterator[StepRecord]:
        """The remaining steps, one record each."""
        while not self.finished:
            yield self.step()
