"""The interface every merge method implements, and the option checks they share.

A method sees one step at a time: the pre-trained state θ0, the previous merged state θ̄_{t−1}
(θ0 at the first step) and the new task model θt, and returns θ̄t. It may keep O(1) scalars
between steps (counts, norms) but never a copy of a model.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import torch

StateDict = Mapping[str, torch.Tensor]


@dataclass
class StepContext:
    """Everything a method may read at step `step` (1-based), plus a dict for diagnostics."""

    step: int
    pretrained: StateDict
    merged: StateDict  # θ̄_{t−1}; the pre-trained state itself when step == 1
    task: StateDict
    selected: frozenset[str]  # keys that get the method's own rule
    device: torch.device
    seed: int
    info: dict[str, Any] = field(default_factory=dict)
    # Where new states live: plain dicts by default; files when the merger spills to disk.
    state_factory: Callable[[torch.dtype | None], MutableMapping[str, torch.Tensor]] | None = None
    # storages of input tensors that `load` handed out unchanged: `output` copies those
    _input_storages: set[int] = field(default_factory=set, repr=False)

    def new_state(self, dtype: torch.dtype | None = None) -> MutableMapping[str, torch.Tensor]:
        """An empty state to write results into (any key order); `dtype` overrides floating dtypes."""
        return {} if self.state_factory is None else self.state_factory(dtype)

    def load(self, state: StateDict, key: str) -> torch.Tensor:
        """A tensor as float32 on the compute device.

        It may share memory with the input (float32 on the same device): treat it as read-only.
        The contract tests check that no method modifies its inputs, and `output` copies such a
        tensor, so a result never shares storage with an input.
        """
        original = state[key]
        value = original.to(device=self.device, dtype=torch.float32)
        if value.untyped_storage().data_ptr() == original.untyped_storage().data_ptr():
            self._input_storages.add(value.untyped_storage().data_ptr())
        return value

    def task_vector(self, key: str) -> torch.Tensor:
        """τt = θt − θ0 for one key."""
        return self.load(self.task, key) - self.load(self.pretrained, key)

    def merged_vector(self, key: str) -> torch.Tensor:
        """τ̄_{t−1} = θ̄_{t−1} − θ0 for one key."""
        return self.load(self.merged, key) - self.load(self.pretrained, key)

    def output(self, key: str, value: torch.Tensor) -> torch.Tensor:
        """Bring a computed float32 tensor back to the pre-trained dtype on the CPU, as a tensor of
        its own (a value that is an input, e.g. θ̄1 = θ1, is copied)."""
        result = value.detach().to(device="cpu", dtype=self.pretrained[key].dtype)
        if result.untyped_storage().data_ptr() in self._input_storages:
            result = result.clone()
        return result

    def floating_keys(self) -> list[str]:
        return [k for k in self.pretrained if self.pretrained[k].is_floating_point()]


class MergeMethod(ABC):
    """One continual merge rule. Subclasses set `name`, `Options` and implement `step`."""

    name: ClassVar[str]
    Options: ClassVar[type]
    # The method's published layer setting: a preset name or a tuple of globs.
    paper_layers: ClassVar[str | tuple[str, ...]] = "all"
    # True when the rule needs 2-D matrices (SVD or matrix products) on selected keys.
    matrix_rule: ClassVar[bool] = False

    def __init__(self, options: Any) -> None:
        self.options = options

    @abstractmethod
    def step(self, ctx: StepContext) -> MutableMapping[str, torch.Tensor]:
        """Return θ̄t over all keys of θ0 (CPU tensors in θ0's dtypes) in a `ctx.new_state()`."""

    @classmethod
    def paper_options(cls, n_tasks: int) -> dict[str, Any]:
        """Table 9 settings for a task count (those that differ from the Options defaults)."""
        return {}


def elementwise_step(
    ctx: StepContext,
    rule: Callable[[str, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    other: Callable[[str], torch.Tensor] | None = None,
) -> MutableMapping[str, torch.Tensor]:
    """Apply `rule(key, θ0, θ̄_{t−1}, θt) -> θ̄t` to selected keys.

    Unselected floating keys get `other(key)` (default: keep θ0); non-floating tensors (integer
    buffers) always keep θ0.
    """
    merged = ctx.new_state()
    for key in ctx.pretrained:
        if key in ctx.selected:
            value = rule(key, ctx.load(ctx.pretrained, key), ctx.load(ctx.merged, key), ctx.load(ctx.task, key))
            merged[key] = ctx.output(key, value)
        elif other is not None and ctx.pretrained[key].is_floating_point():
            merged[key] = ctx.output(key, other(key))
        else:
            merged[key] = ctx.pretrained[key].detach().clone()
    return merged


def option(default: Any, help: str, choices: Sequence[str] = ()) -> Any:
    """A dataclass field of an Options class with its help text (and allowed values, for strings) as
    metadata: the app's widgets and the CLI read them from `dataclasses.fields`, never from source."""
    if not help:
        raise ValueError("every option needs a help text")
    return field(default=default, metadata={"help": help, "choices": tuple(choices)})


def option_help(options_cls: type) -> dict[str, tuple[str, tuple[str, ...]]]:
    """name -> (help, choices) for every field of an Options dataclass ("" and () when missing)."""
    return {f.name: (f.metadata.get("help", ""), tuple(f.metadata.get("choices", ()))) for f in fields(options_cls)}


def resolve_aliases(options_cls: type, values: Mapping[str, Any]) -> dict[str, Any]:
    """`values` with each alias of `options_cls` replaced by the options it stands for.

    An Options class may declare `aliases = {old_name: translate}`: an older spelling of an option,
    `translate(value)` giving the options it means. Given together, they must agree.
    """
    aliases: Mapping[str, Callable[[Any], dict[str, Any]]] = getattr(options_cls, "aliases", {})
    resolved = {k: v for k, v in values.items() if k not in aliases}
    for alias in (k for k in values if k in aliases):
        for name, value in aliases[alias](values[alias]).items():
            if name in resolved and resolved[name] != value:
                raise ValueError(
                    f"option {alias}={values[alias]!r} means {name}={value!r}, "
                    f"but {name}={resolved[name]!r} was also given"
                )
            resolved[name] = value
    return resolved


def build_options(options_cls: type, method: str, values: Mapping[str, Any]) -> Any:
    """Instantiate an Options dataclass, naming unknown options and the valid ones."""
    aliases = list(getattr(options_cls, "aliases", {}))
    valid = [f.name for f in fields(options_cls)]
    unknown = [k for k in values if k not in valid and k not in aliases]
    if unknown:
        raise ValueError(
            f"unknown option {unknown[0]!r} for method {method!r}; valid options: "
            f"{', '.join(valid + aliases + list(COMMON_OPTIONS))}"
        )
    return options_cls(**resolve_aliases(options_cls, values))


# Options every method accepts (handled by the Merger, not by the method itself).
COMMON_OPTIONS = ("layers", "device", "seed", "allow_duplicates", "spill_dir")


def check_rank(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")


def check_number(name: str, value: Any, low: float | None = None, high: float | None = None,
                 low_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(f"{name} must be a finite number, got {value!r}")
    if low is not None and (value < low or (low_open and value == low)):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value}")


def check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")


def group_by_shape(state: StateDict, keys: Sequence[str]) -> dict[tuple[int, ...], list[str]]:
    """Selected keys grouped by shape (state order kept), for batched matrix work."""
    groups: dict[tuple[int, ...], list[str]] = {}
    for key in keys:
        groups.setdefault(tuple(state[key].shape), []).append(key)
    return groups


def chunks(keys: Sequence[str], shape: Sequence[int], budget: int = 1 << 24) -> list[list[str]]:
    """Split a same-shape group so that one stacked tensor holds at most `budget` elements.

    16 M float32 elements (64 MB) per stack keeps a step's working set to a few layers (e.g. six
    768x3072 matrices) while still batching the small ones.
    """
    per_matrix = max(math.prod(shape), 1)
    size = max(budget // per_matrix, 1)
    return [list(keys[i : i + size]) for i in range(0, len(keys), size)]


def pair_step(
    ctx: StepContext, scale: float, matrix_rule: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
) -> MutableMapping[str, torch.Tensor]:
    """A static two-vector merge run continually, as the NUFILT authors' code runs Iso-C and TSV-M.

    θ̄t = θ0 + λ·merge(τ̄_{t−1}, τt) on selected keys: 2-D keys get `matrix_rule`, the others the
    mean of the two vectors; θ̄1 = θ0 + λ τ1. Unselected keys keep θ0.
    """

    def rule(key: str, base: torch.Tensor, merged: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        task_vector = task - base
        if ctx.step == 1:
            return base + scale * task_vector
        previous = merged - base
        combined = matrix_rule(previous, task_vector) if task_vector.ndim == 2 else (previous + task_vector) / 2
        return base + scale * combined

    return elementwise_step(ctx, rule)
