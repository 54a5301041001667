"""Merge runs for the analyses: a step generator and a backbone wrapper that keeps models in memory."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..backbones.base import Backbone, DelegatingBackbone
from ..evaluation import MethodSpec, check_order, method_spec
from ..merge import StepReport, make_merger
from ..statedict import StateDict


class CachedBackbone(DelegatingBackbone):
    """A backbone whose pre-trained and fine-tuned states are loaded once and kept in memory.

    Everything else is delegated. Returned dicts are shallow copies over shared tensors: treat
    them as read-only (every nufilt function does). Wrapping twice returns the same cache.
    """

    def __init__(self, inner: Backbone) -> None:
        super().__init__(inner.inner if isinstance(inner, CachedBackbone) else inner)
        shared = isinstance(inner, CachedBackbone)
        self._states: dict[str | None, dict[str, torch.Tensor]] = inner._states if shared else {}
        # sessions share one cache: a model is loaded once even when two ask for it at once
        self._load_lock: threading.Lock = inner._load_lock if shared else threading.Lock()

    def _state(self, task: str | None) -> dict[str, torch.Tensor]:
        with self._load_lock:
            if task not in self._states:
                loaded = self.inner.pretrained_state() if task is None else self.inner.finetuned_state(task)
                self._states[task] = dict(loaded)
            return dict(self._states[task])

    def pretrained_state(self) -> dict[str, torch.Tensor]:
        return self._state(None)

    def finetuned_state(self, task: str) -> dict[str, torch.Tensor]:
        return self._state(task)


@dataclass
class StepRecord:
    """One merge step as the analyses see it (all states are read-only views)."""

    step: int  # 1-based
    task: str
    pretrained: StateDict  # θ0
    previous: StateDict  # θ̄_{t−1} (θ0 at step 1)
    merged: StateDict  # θ̄t
    task_state: StateDict  # θt
    report: StepReport
    spec: MethodSpec


def resolve_spec(
    backbone: Backbone,
    label: str,
    n_tasks: int,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    **common: Any,
) -> MethodSpec:
    """`evaluation.method_spec` with the backbone's recommended options (zoo-scaled ranks)."""
    recommended = getattr(backbone, "recommended_options", {}) or {}
    return method_spec(label, n_tasks, recommended, overrides, **common)


def merge_steps(backbone: Backbone, spec: MethodSpec, order: Sequence[str]) -> Iterator[StepRecord]:
    """Merge the task models of `order` one by one with `spec`, yielding a `StepRecord` per step.

    Holds θ0, θ̄_{t−1}, θ̄t and θt at a time (plus whatever the backbone caches).
    """
    order = check_order(order, [t.name for t in backbone.tasks])
    pretrained = backbone.pretrained_state()
    merger = make_merger(spec.method, pretrained, **spec.options)
    previous: StateDict = pretrained
    for step, task in enumerate(order, start=1):
        task_state = backbone.finetuned_state(task)
        merged = merger.add(task_state)
        yield StepRecord(step, task, pretrained, previous, merged, task_state, merger.report, spec)
        previous = merged
