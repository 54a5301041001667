"""Merge runs for the analyses: a step generator (on the run engine) and a backbone wrapper that keeps
models in memory."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch

from ..backbones.base import Backbone, DelegatingBackbone
from ..engine import RunEngine, StepRecord, score_none
from ..evaluation import MethodSpec, method_spec


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
    """Merge the task models of `order` one by one with `spec`, yielding a `StepRecord` per step
    (no evaluation: `engine.RunEngine` with `score_none`).

    Holds θ0, θ̄_{t−1}, θ̄t and θt at a time (plus whatever the backbone caches).
    """
    yield from RunEngine(backbone, spec, order, score=score_none)


__all__ = ["CachedBackbone", "StepRecord", "merge_steps", "resolve_spec"]
