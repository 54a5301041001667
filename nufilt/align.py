"""Line up task checkpoints with a pre-trained checkpoint saved in another layout.

The Hub stores the same weights under different names and in different model classes:
`openai/clip-vit-*` is a whole `CLIPModel` (`vision_model.*`, `text_model.*`, projections,
`logit_scale`), `tanganke/clip-vit-*_<task>` are `CLIPVisionModel`s (`vision_model.*` as
transformers 4 wrote them, no prefix as transformers 5 writes them), open_clip task files hold
`visual.*`, `model.visual.*` or bare vision keys, and T5 files may or may not repeat the tied
embedding (`encoder.embed_tokens.weight` = `shared.weight`). `align` finds, per task, the one
prefix rename that puts most of its keys onto the pre-trained keys, and then:
- the pre-trained keys the tasks cover are merged; whole top-level parts the tasks do not have
  (a text tower, `logit_scale`) are carried over unchanged;
- a tied copy missing on either side is read from the key it is tied to;
- a task key under another part of the model (the task's own text tower) is left out;
- anything else is an error that names the keys: a part the task touches must be complete.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from .io import LazyStateDict

PREFIX_DEPTH = 2  # "vision_model.", "model.visual.": how deep a rename may reach


@dataclass(frozen=True)
class Alignment:
    """How the tasks map onto the pre-trained checkpoint (see the module docstring)."""

    merged_keys: tuple[str, ...]  # pre-trained keys every task covers, in pre-trained order
    carried_keys: tuple[str, ...]  # pre-trained keys kept as they are
    renames: tuple[tuple[str, str], ...]  # per task: (its prefix, the pre-trained prefix)
    dropped: tuple[int, ...]  # per task: keys left out (another part of the model, tied copies)

    @property
    def carried_parts(self) -> list[str]:
        return list(dict.fromkeys(_part(key) for key in self.carried_keys))

    def describe(self) -> str:
        """One line for the user; empty when the layouts matched one to one."""
        notes = []
        if self.carried_keys:
            parts = ", ".join(self.carried_parts)
            notes.append(f"the tasks hold {len(self.merged_keys)} of the pre-trained model's "
                         f"{len(self.merged_keys) + len(self.carried_keys)} tensors; kept as pre-trained: {parts}")
        renamed = sorted({f"'{src}' -> '{dst}'" for src, dst in self.renames if src != dst})
        if renamed:
            notes.append(f"task keys renamed {', '.join(renamed)}")
        if any(self.dropped):
            notes.append(f"left out task tensors the pre-trained model does not have: {max(self.dropped)}")
        return "; ".join(notes)


def _part(key: str) -> str:
    return key.split(".", 1)[0]


def _prefixes(keys: Sequence[str]) -> set[str]:
    found = {""}
    for key in keys:
        parts = key.split(".")
        for depth in range(1, min(PREFIX_DEPTH, len(parts) - 1) + 1):
            found.add(".".join(parts[:depth]) + ".")
    return found


def best_rename(task_keys: Sequence[str], pretrained_keys: Sequence[str]) -> tuple[str, str]:
    """(src, dst): task key `src + rest` becomes `dst + rest`; the pair that maps the most keys
    onto `pretrained_keys` (ties: no rename, then the shortest prefixes)."""
    wanted = set(pretrained_keys)
    best, best_score = ("", ""), -1
    candidates = sorted(((s, d) for s in _prefixes(task_keys) for d in _prefixes(pretrained_keys)),
                        key=lambda pair: (pair != ("", ""), len(pair[0]) + len(pair[1]), pair))
    for src, dst in candidates:
        score = sum(1 for key in task_keys if key.startswith(src) and dst + key[len(src):] in wanted)
        if score > best_score:
            best, best_score = (src, dst), score
    return best


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal and not constant: two zero biases or unit norms are not a tied pair."""
    if a.shape != b.shape or a.dtype != b.dtype or a.numel() < 2:
        return False
    flat = a.reshape(-1)
    return not bool((flat == flat[0]).all()) and torch.equal(a, b)


def _tied_source(key: str, state: Mapping[str, torch.Tensor], candidates: Sequence[str]) -> str | None:
    """A key among `candidates` whose tensor equals `state[key]` (a tied copy), else None.
    Equality of a non-constant tensor stands in for sharing, which safetensors files do not
    record."""
    shape = _shape_of(state)
    value = state[key]
    for other in candidates:
        if other != key and shape(other) == tuple(value.shape) and _same(state[other], value):
            return other
    return None


def _shape_of(state: Mapping[str, torch.Tensor]):
    """`key -> shape`, from header metadata where the state has it (no tensor read)."""
    if isinstance(state, LazyStateDict):
        return state.shape
    return lambda key: tuple(state[key].shape)


def _some(keys: Sequence[str]) -> str:
    return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")


def align(pretrained: LazyStateDict, tasks: Sequence[LazyStateDict]) -> tuple[Alignment, list[LazyStateDict]]:
    """The alignment and, per task, a view of it under the pre-trained names of `merged_keys`."""
    pre_keys = list(pretrained)
    views: list[dict[str, tuple]] = []
    renames, dropped, covered_sets = [], [], []
    for number, task in enumerate(tasks, start=1):
        task_keys = list(task)
        src, dst = best_rename(task_keys, pre_keys)
        mapped = {dst + key[len(src):]: key for key in task_keys if key.startswith(src)}
        inside = {name: key for name, key in mapped.items() if name in pretrained}
        if not inside:
            raise ValueError(f"task {number} shares no weight names with the pre-trained model "
                             f"(task keys such as {_some(task_keys)}; pre-trained keys such as {_some(pre_keys)})")
        parts = {_part(name) for name in inside}
        # pre-trained keys of a part the task touches but lacks: a tied copy, or an incomplete task
        for name in [k for k in pre_keys if _part(k) in parts and k not in inside]:
            source = _tied_source(name, pretrained, list(inside))
            if source is None:
                lacking = [k for k in pre_keys if _part(k) in parts and k not in inside]
                raise ValueError(f"task {number} lacks {len(lacking)} weight(s) of the pre-trained model's "
                                 f"{'/'.join(sorted({_part(k) for k in lacking}))} ({_some(lacking)})")
            inside[name] = inside[source]
        # task keys in a touched part that the pre-trained model lacks: a tied copy, or another architecture
        extra = [key for key in task_keys if key not in inside.values()]
        clash = [key for key in extra if key.startswith(src) and _part(dst + key[len(src):]) in parts]
        for key in clash:
            if _tied_source(key, task, list(inside.values())) is None:
                raise ValueError(f"task {number} has weight(s) the pre-trained model lacks ({_some(clash)}): "
                                 "another architecture?")
        views.append({name: inside[name] for name in pre_keys if name in inside})
        renames.append((src, dst))
        dropped.append(len(extra))
        covered_sets.append(frozenset(inside))
    first = covered_sets[0]
    for number, covered in enumerate(covered_sets[1:], start=2):
        if covered != first:
            differ = sorted(first ^ covered)
            raise ValueError(f"task {number} covers other weights than task 1 ({_some(differ)})")
    alignment = Alignment(
        merged_keys=tuple(k for k in pre_keys if k in first),
        carried_keys=tuple(k for k in pre_keys if k not in first),
        renames=tuple(renames),
        dropped=tuple(dropped),
    )
    task_views = [_view(task, view) for task, view in zip(tasks, views, strict=True)]
    return alignment, task_views


def _view(state: Mapping[str, torch.Tensor], names: Mapping[str, str]) -> LazyStateDict:
    """`new -> state[old]` for each `names[new] = old`, lazy, keeping header shapes."""
    known = state.known_shape if isinstance(state, LazyStateDict) else (lambda key: None)
    shapes = {new: known(old) for new, old in names.items() if known(old) is not None}
    return LazyStateDict({new: (state.__getitem__, old) for new, old in names.items()}, shapes)


def subset(state: LazyStateDict, keys: Sequence[str]) -> LazyStateDict:
    """The `keys` of a lazy state, still lazy."""
    return _view(state, {key: key for key in keys})


def combine(pretrained: Mapping[str, torch.Tensor], merged: Mapping[str, torch.Tensor],
            order: Sequence[str]) -> LazyStateDict:
    """The whole model in pre-trained key order: merged tensors where there are, else pre-trained."""
    return LazyStateDict({key: ((merged if key in merged else pretrained).__getitem__, key) for key in order})
