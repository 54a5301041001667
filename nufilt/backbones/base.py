"""The backbone interface: where pre-trained/fine-tuned weights come from and how they are scored.

A backbone bundles a model family (embedded tiny ViT, CLIP, Flan-T5, open_clip, local folders)
with its task pool. The merge core never sees a backbone: it only receives state dicts. The
evaluation, analysis and app layers talk to every backbone through this interface.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

StateDict = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class TaskInfo:
    """One task of a backbone's pool."""

    name: str  # stable id used in orders, caches and JSON ("digits", "sun397", "cola")
    classes: tuple[str, ...] = ()
    metric: str = "accuracy"  # "accuracy" or "spearman"; always reported in percent
    paper_id: int | None = None  # position in the paper's task numbering (task_orders.json)
    extra: dict = field(default_factory=dict, compare=False)


class Backbone(ABC):
    """A pre-trained model, its fine-tuned task models, and how to evaluate a merged state.

    Only the *mergeable* part of the model (e.g. the vision encoder) appears in the state dicts;
    heads are fixed per task and owned by the backbone.
    """

    name: str
    family: str  # layer-naming family for the "paper" layer preset: "clip", "t5", "openclip"

    @property
    @abstractmethod
    def tasks(self) -> list[TaskInfo]:
        """All tasks this backbone can merge, in the paper's numbering order where there is one."""

    @abstractmethod
    def pretrained_state(self) -> StateDict:
        """The pre-trained weights of the mergeable encoder (CPU tensors; may be a lazy mapping)."""

    @abstractmethod
    def finetuned_state(self, task: str) -> StateDict:
        """The weights of the encoder fine-tuned on `task` (same keys and shapes as pre-trained)."""

    @abstractmethod
    def evaluate(self, state: StateDict, tasks: Sequence[str]) -> dict[str, float]:
        """Score `state` on the test split of each task; percent in [0, 100]."""

    @abstractmethod
    def build_encoder(self, state: StateDict) -> nn.Module:
        """An eval-mode encoder module with `state` loaded, for hooks and activation statistics."""

    @abstractmethod
    def activation_batches(
        self, task: str, n_samples: int, split: str = "test"
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Keyword-argument batches to call the encoder with, `n_samples` inputs of `task` in all."""

    def warm_evaluation(self, tasks: Sequence[str]) -> None:
        """Make what `evaluate` needs for `tasks` ready ahead of time (e.g. generate test inputs),
        so that a later evaluation spends its time scoring; the default does nothing."""
        return None

    def reference(self) -> dict[str, dict[str, float]]:
        """{"pretrained": {task: acc}, "individual": {task: acc}}; backbones may cache it."""
        pre = self.pretrained_state()
        names = [t.name for t in self.tasks]
        pretrained = self.evaluate(pre, names)
        individual = {name: self.evaluate(self.finetuned_state(name), [name])[name] for name in names}
        return {"pretrained": pretrained, "individual": individual}

    def task(self, name: str) -> TaskInfo:
        for info in self.tasks:
            if info.name == name:
                return info
        known = ", ".join(t.name for t in self.tasks)
        raise ValueError(f"unknown task {name!r} for backbone {self.name!r}; known tasks: {known}")


class DelegatingBackbone(Backbone):
    """A wrapper that forwards every `Backbone` method (and any other attribute) to `inner`.

    Subclasses override what they change (caching, locking, fewer test inputs).
    """

    def __init__(self, inner: Backbone) -> None:
        self.inner = inner
        self.name = inner.name
        self.family = inner.family

    def __getattr__(self, name: str):  # config, recommended_options, prepare, heads, ...
        if name == "inner":  # not set yet (e.g. during unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    @property
    def tasks(self) -> list[TaskInfo]:
        return self.inner.tasks

    def pretrained_state(self) -> StateDict:
        return self.inner.pretrained_state()

    def finetuned_state(self, task: str) -> StateDict:
        return self.inner.finetuned_state(task)

    def evaluate(self, state: StateDict, tasks: Sequence[str]) -> dict[str, float]:
        return self.inner.evaluate(state, tasks)

    def build_encoder(self, state: StateDict) -> nn.Module:
        return self.inner.build_encoder(state)

    def warm_evaluation(self, tasks: Sequence[str]) -> None:
        self.inner.warm_evaluation(tasks)

    def activation_batches(self, task: str, n_samples: int, split: str = "test") -> Iterator[dict[str, torch.Tensor]]:
        return self.inner.activation_batches(task, n_samples, split)

    def reference(self) -> dict[str, dict[str, float]]:
        return self.inner.reference()
