"""Continual merging: a stateful `Merger` (one task at a time) and the `continual_merge` generator.

The merger holds the pre-trained state (by reference, never modified), the current merged state
and O(1) statistics, whatever the number of tasks. Each `add` validates the task model, runs one
step of the method, checks the result is finite ("safe merge") and only then commits it, so a
rejected task loses nothing. `Merger.transaction()` widens that to a whole step of a run
(merge, then evaluation or statistics): if anything in it fails, the merger is as before it.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Generator, Iterable, Iterator, Mapping, MutableMapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .methods import COMMON_OPTIONS, get_method
from .methods.base import StepContext, build_options
from .spill import SpillState, layout_of
from .statedict import StateDict, check_finite, scan_state, select_keys, squared_norm


@dataclass
class StepReport:
    """What one `add` did: step index, wall time, global norms and method diagnostics."""

    step: int
    seconds: float
    task_norm: float  # ‖τt‖ over all floating parameters
    merged_norm: float  # ‖τ̄t‖ over all floating parameters
    info: dict[str, Any] = field(default_factory=dict)


def resolve_device(device: str | torch.device) -> torch.device:
    """"auto" -> CUDA when present, else CPU; an explicit CUDA request without CUDA is an error."""
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str):
        raise TypeError(f"device must be a string such as 'auto', 'cpu' or 'cuda', got {device!r}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"unknown device {device!r}: {error}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use 'auto' or 'cpu'")
    return resolved


class Merger:
    """Merge task models into one, one at a time, with a registered method."""

    def __init__(self, method: str, pretrained: StateDict, **options: Any) -> None:
        method_cls = get_method(method)
        common = {k: options.pop(k) for k in COMMON_OPTIONS if k in options}
        self.method = method_cls(build_options(method_cls.Options, method, options))
        scan = scan_state(pretrained, "pretrained")
        self.name = method
        self.pretrained = pretrained
        self.layers = common.get("layers", "paper")
        self.selected = select_keys(pretrained, self.layers, method_cls.paper_layers, method_cls.matrix_rule)
        self.device = resolve_device(common.get("device", "auto"))
        seed = common.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an integer, got {seed!r}")
        self.seed = seed
        self.allow_duplicates = bool(common.get("allow_duplicates", False))
        spill_dir = common.get("spill_dir")
        self.spill_dir = None if spill_dir is None else Path(spill_dir)
        self._spilled: list[SpillState] = []  # files created during the current step
        self.step = 0
        self.merged: Mapping[str, torch.Tensor] | None = None
        self.report: StepReport | None = None
        self._meta = scan.meta  # key -> (shape, floating): tasks are checked against it
        self._fingerprints: dict[tuple[float, str], int] = {scan.fingerprint: 0}
        # inside a transaction: spilled states of earlier steps, released only when it succeeds
        self._deferred: list[SpillState] | None = None

    @contextmanager
    def transaction(self) -> Generator[None, None, None]:
        """Run a block in which `add` may be called once; if the block raises, the merger is
        restored (merged state, step, seen tasks, report and method statistics) and the error
        propagates. Without spilling, the snapshot holds references, never copies of a model."""
        if self._deferred is not None:
            raise RuntimeError("merger transactions do not nest")
        saved = (self.merged, self.step, dict(self._fingerprints), self.report,
                 copy.deepcopy({k: v for k, v in vars(self.method).items() if k != "options"}))
        self._deferred = []
        try:
            yield
        except BaseException:
            if self.merged is not saved[0] and isinstance(self.merged, SpillState):
                self.merged.release(delete=True)  # the uncommitted step's file
            self.merged, self.step, self._fingerprints, self.report, method_state = saved
            vars(self.method).update(method_state)
            raise
        else:
            for spilled in self._deferred:
                spilled.release(delete=True)
        finally:
            self._deferred = None

    def add(self, task: StateDict) -> dict[str, torch.Tensor]:
        """Merge one more task model; returns θ̄t as a new dict (CPU, pre-trained dtypes)."""
        name = f"task {self.step + 1}"
        scan = scan_state(task, name, self._meta, base=self.pretrained)
        fingerprint = scan.fingerprint
        if fingerprint in self._fingerprints and not self.allow_duplicates:
            seen = self._fingerprints[fingerprint]
            what = "the pre-trained model" if seen == 0 else f"task {seen}"
            raise ValueError(
                f"{name} has exactly the weights of {what}; each task must be merged once "
                "(pass allow_duplicates=True to merge it anyway)"
            )
        start = time.perf_counter()
        ctx = StepContext(
            step=self.step + 1,
            pretrained=self.pretrained,
            merged=self.merged if self.merged is not None else self.pretrained,
            task=task,
            selected=self.selected,
            device=self.device,
            seed=self.seed,
            state_factory=None if self.spill_dir is None else self._spill_factory,
        )
        saved_state = copy.deepcopy({k: v for k, v in vars(self.method).items() if k != "options"})
        try:
            with torch.no_grad():
                merged = self.method.step(ctx)
            if set(merged) != set(self._meta):
                raise RuntimeError(f"method {self.name!r} returned keys that differ from the pre-trained model")
            check_finite(merged, f"merged result of {name}")
            merged = self._commit(merged)
        except BaseException:
            vars(self.method).update(saved_state)  # roll back O(1) method statistics
            for spilled in self._spilled:
                spilled.release(delete=True)
            raise
        finally:
            self._spilled = []
        self.merged = merged
        self.step += 1
        self._fingerprints[fingerprint] = self.step
        self.report = StepReport(
            step=self.step,
            seconds=time.perf_counter() - start,
            task_norm=scan.delta_sq**0.5,
            merged_norm=squared_norm(_vectors(merged, self.pretrained)) ** 0.5,
            info=ctx.info,
        )
        return dict(merged) if isinstance(merged, dict) else merged

    def _spill_factory(self, dtype: torch.dtype | None) -> SpillState:
        """A new state file for this step (θ̄t itself, or a float32 scratch state)."""
        assert self.spill_dir is not None
        path = self.spill_dir / f".step{self.step + 1}-{len(self._spilled)}.tmp.safetensors"
        state = SpillState(path, layout_of(self.pretrained, dtype))
        self._spilled.append(state)
        return state

    def _commit(self, merged: MutableMapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
        """Order an in-memory result like θ0; for a spilled one, finish its file and drop the old ones."""
        if not isinstance(merged, SpillState):
            return {k: merged[k] for k in self._meta}
        merged.close()
        merged.move_to(self.spill_dir / f"merged-step{self.step + 1}.safetensors")
        for spilled in self._spilled:
            if spilled is not merged:
                spilled.release(delete=True)  # scratch states
        if isinstance(self.merged, SpillState):
            if self._deferred is not None:
                self._deferred.append(self.merged)  # kept until the transaction succeeds
            else:
                self.merged.release(delete=True)  # the previous step's file
        return merged


def _vectors(state: StateDict, pretrained: StateDict) -> Iterator[torch.Tensor]:
    for key in pretrained:
        if pretrained[key].is_floating_point():
            yield state[key].float() - pretrained[key].float()


def make_merger(method: str, pretrained: StateDict, **options: Any) -> Merger:
    """A `Merger` for `method`; validates the method, its options and the pre-trained state."""
    return Merger(method, pretrained, **options)


def continual_merge(
    pretrained: StateDict, finetuned: Iterable[StateDict], method: str, **options: Any
) -> Iterator[dict[str, torch.Tensor]]:
    """Yield the merged state after each task of `finetuned` (an iterable of state dicts).

    The method, options and pre-trained state are validated immediately; an empty task list
    raises ValueError (immediately for sized inputs, on exhaustion for iterators).
    """
    if isinstance(finetuned, Mapping):
        raise TypeError("finetuned must be an iterable of state dicts, not a single state dict")
    if isinstance(finetuned, Sequence) and len(finetuned) == 0:
        raise ValueError("the task list is empty: nothing to merge")
    merger = make_merger(method, pretrained, **options)

    def steps() -> Iterator[dict[str, torch.Tensor]]:
        count = 0
        for task in finetuned:
            count += 1
            yield merger.add(task)
        if count == 0:
            raise ValueError("the task list is empty: nothing to merge")

    return steps()
