"""State-dict checks, layer selection and small arithmetic helpers shared by every merge method.

A state dict here is any `Mapping[str, Tensor]`: a plain dict or a lazy, memory-mapped mapping.
Nothing in this module mutates its inputs.
"""

from __future__ import annotations

import fnmatch
import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch

StateDict = Mapping[str, torch.Tensor]

# Each method's published layer setting for NUFILT (ALGORITHMS.md "Selected layers"): attention
# projections and the first MLP linear of CLIP (transformers), the attention and feed-forward
# linears of T5, and the fused attention + first MLP linear of open_clip.
PAPER_NUFILT_PATTERNS: tuple[str, ...] = (
    "*self_attn.q_proj.weight",
    "*self_attn.k_proj.weight",
    "*self_attn.v_proj.weight",
    "*self_attn.out_proj.weight",
    "*mlp.fc1.weight",
    "*SelfAttention.[qkvo].weight",
    "*EncDecAttention.[qkvo].weight",
    "*DenseReluDense.w*.weight",
    "*attn.in_proj_weight",
    "*attn.out_proj.weight",
    "*mlp.c_fc.weight",
)

# Key fragments of 2-D tensors that are lookup tables, not linear maps.
_NON_LINEAR_2D = ("embed", "shared.weight", "position", "token_type", "class_embedding")

LAYER_PRESETS = ("paper", "all-linear", "all")


def is_linear_weight(key: str, tensor: torch.Tensor) -> bool:
    """A 2-D floating weight of a linear map (embeddings and position tables excluded)."""
    if tensor.ndim != 2 or not tensor.is_floating_point():
        return False
    if not (key.endswith("weight") or key.endswith("in_proj_weight")):
        return False
    return not any(fragment in key for fragment in _NON_LINEAR_2D)


def select_keys(
    state: StateDict,
    layers: str | Sequence[str],
    paper_preset: str | Sequence[str],
    matrix_rule: bool,
) -> frozenset[str]:
    """Resolve a `layers` option to the set of keys that get a method's own rule.

    `layers` is "paper" (the method's published setting, `paper_preset`), "all-linear", "all"
    (every floating tensor), or a list of glob patterns over keys. `matrix_rule` methods (SVD- or
    matrix-based rules) require every selected tensor to be a 2-D floating matrix.
    """
    if isinstance(layers, str):
        if layers not in LAYER_PRESETS:
            raise ValueError(
                f"unknown layers preset {layers!r}; use one of {LAYER_PRESETS} or a list of globs"
            )
        if layers == "paper":
            if isinstance(paper_preset, str):
                return select_keys(state, paper_preset, paper_preset, matrix_rule)
            selected = _match(state, paper_preset, strict=False)
        elif layers == "all":
            selected = [k for k in state if state[k].is_floating_point()]
        else:
            selected = [k for k in state if is_linear_weight(k, state[k])]
        if not selected:
            raise ValueError(
                f"layers={layers!r} selects no tensor of this model (first keys: {list(state)[:3]}); "
                "pass layers='all-linear' or a list of glob patterns"
            )
    else:
        selected = _match(state, layers, strict=True)
    for key in selected:
        tensor = state[key]
        if not tensor.is_floating_point():
            raise TypeError(f"selected layer {key!r} has non-floating dtype {tensor.dtype}")
        if matrix_rule and tensor.ndim != 2:
            raise ValueError(
                f"selected layer {key!r} has shape {tuple(tensor.shape)}; this method needs 2-D weights"
            )
    return frozenset(selected)


def _match(state: StateDict, patterns: Sequence[str], strict: bool) -> list[str]:
    """Keys matching any glob, in state order; `strict`: every pattern must match something."""
    patterns = list(patterns)
    if not patterns or not all(isinstance(p, str) and p for p in patterns):
        raise ValueError(f"layers must be a preset name or a non-empty list of globs: {patterns!r}")
    keys = list(state)
    for pattern in patterns if strict else ():
        if not any(fnmatch.fnmatchcase(k, pattern) for k in keys):
            raise ValueError(f"layer pattern {pattern!r} matches no key (first keys: {keys[:3]})")
    return [k for k in keys if any(fnmatch.fnmatchcase(k, p) for p in patterns)]


def check_state(state: object, name: str) -> None:
    """A non-empty mapping of string keys to tensors."""
    if not isinstance(state, Mapping):
        raise TypeError(f"{name} must be a mapping of parameter names to tensors, got {type(state).__name__}")
    if len(state) == 0:
        raise ValueError(f"{name} is empty")
    for key in state:
        if not isinstance(key, str):
            raise TypeError(f"{name} has a non-string key {key!r}")


def _checked_norm(tensor: torch.Tensor, name: str, key: str) -> float:
    """‖tensor‖ (float32), raising ValueError naming the key if it holds NaN/Inf.

    A finite norm proves every entry finite; only a non-finite one (NaN/Inf, or an overflow of
    huge but finite values) pays for the element-wise check.
    """
    norm = float(torch.linalg.vector_norm(tensor.float()))
    if not math.isfinite(norm):
        bad = int((~torch.isfinite(tensor)).sum())
        if bad:
            raise ValueError(f"{name}[{key!r}] contains {bad} NaN/Inf value(s)")
    return norm


def check_finite(state: StateDict, name: str) -> None:
    """Every floating tensor is free of NaN/Inf; names the first offending key."""
    for key in state:
        tensor = state[key]
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name}[{key!r}] is {type(tensor).__name__}, not a tensor")
        if tensor.is_floating_point():
            _checked_norm(tensor, name, key)


@dataclass(frozen=True)
class Scan:
    """What one read of every tensor of a state dict tells: shapes, a fingerprint, ‖θ − base‖²."""

    meta: dict[str, tuple[tuple[int, ...], bool]]  # key -> (shape, is floating)
    fingerprint: tuple[float, str]
    delta_sq: float  # Σ ‖θ − base‖² over floating tensors (0 without a base)


def scan_state(
    state: StateDict,
    name: str,
    expected: Mapping[str, tuple[tuple[int, ...], bool]] | None = None,
    base: StateDict | None = None,
) -> Scan:
    """Validate a state dict in a single pass over its tensors (each is read once).

    Checks the keys, shapes and kinds against `expected` (naming the first mismatch), that every
    floating tensor is finite (naming the key), and computes a content fingerprint (float64 sum of
    squares plus a hash of a strided sample of every tensor's bytes: equal models always match,
    different fine-tuned models practically never) and, with `base`, ‖state − base‖².
    """
    check_state(state, name)
    if expected is not None:
        keys = set(state)
        missing = [k for k in expected if k not in keys]
        if missing:
            raise ValueError(f"{name} lacks key {missing[0]!r} of the pre-trained model ({len(missing)} missing)")
        if len(keys) != len(expected):
            extra = sorted(keys.difference(expected))
            raise ValueError(f"{name} has key {extra[0]!r} that the pre-trained model lacks ({len(extra)} extra)")
    digest = hashlib.blake2b(digest_size=16)
    meta: dict[str, tuple[tuple[int, ...], bool]] = {}
    total_sq = delta_sq = 0.0
    for key in expected if expected is not None else state:
        tensor = state[key]
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name}[{key!r}] is {type(tensor).__name__}, not a tensor")
        shape, floating = tuple(tensor.shape), tensor.is_floating_point()
        if expected is not None:
            want_shape, want_floating = expected[key]
            if shape != want_shape:
                raise ValueError(f"shape mismatch at {key!r}: pre-trained {want_shape} vs {name} {shape}")
            if floating != want_floating:
                raise TypeError(f"dtype mismatch at {key!r}: pre-trained is {'' if want_floating else 'not '}"
                                f"floating, {name} has {tensor.dtype}")
        meta[key] = (shape, floating)
        flat = tensor.detach().reshape(-1)
        digest.update(flat[:: max(1, flat.numel() // 4096)].contiguous().cpu().view(torch.uint8).numpy().tobytes())
        if floating:
            norm = _checked_norm(tensor, name, key)
            total_sq += norm * norm
            if base is not None:
                delta_sq += float(torch.linalg.vector_norm(tensor.float() - base[key].float())) ** 2
    return Scan(meta, (total_sq, digest.hexdigest()), delta_sq)


def squared_norm(tensors: Iterable[torch.Tensor]) -> float:
    """Sum of squares over many tensors (per-tensor float32 norms, summed in Python floats)."""
    return sum(float(torch.linalg.vector_norm(tensor.float())) ** 2 for tensor in tensors)


def clone_state(state: StateDict) -> dict[str, torch.Tensor]:
    """An independent copy (new tensors), so callers can never alias the merger's state."""
    return {k: state[k].detach().clone() for k in state}
