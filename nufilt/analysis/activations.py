"""Activation statistics of the selected linear layers: input covariance E[x xᵀ] and its eigenbasis.

Forward pre-hooks on the linear modules that own the selected weights record, per layer, the
token-averaged second moment `C = E[x xᵀ]` of the layer input (`(d_in, d_in)`, uncentred, as in
the paper's Sec. 3.4) over `n_samples` inputs of a task. Its top eigenvectors are the data basis
`V_d` of Eq. 5; `C` itself gives the squared-ℓ2 losses of Eq. 3-4 (`E‖Δ x‖² = tr(Δ C Δᵀ)`) and the
two data quantities of Corollary 1 (`σ1(X)² = λ_max(XᵀX)`, `V_d`).

Results are cached on disk (`nufilt.cache` entries) per (backbone, source model, task, split,
layer set, sample count) and in memory, so a second request is a dictionary lookup.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..backbones import EMBEDDED
from ..backbones.base import Backbone
from ..cache import atomic_save_tensors, atomic_write_json, config_hash, default_cache_dir, ensure_entry
from ..statedict import PAPER_NUFILT_PATTERNS, StateDict, select_keys

SOURCES = ("pretrained", "finetuned")
CACHE_VERSION = 1
_MEMORY: OrderedDict[str, dict[str, LayerStatistics]] = OrderedDict()
_MEMORY_SIZE = 64
_MEMORY_LOCK = threading.Lock()  # app sessions share the memo


def _recall(key: str) -> dict[str, LayerStatistics] | None:
    with _MEMORY_LOCK:
        if key not in _MEMORY:
            return None
        _MEMORY.move_to_end(key)
        return dict(_MEMORY[key])


def _remember(key: str, stats: dict[str, LayerStatistics]) -> None:
    with _MEMORY_LOCK:
        _MEMORY[key] = stats
        _MEMORY.move_to_end(key)
        while len(_MEMORY) > _MEMORY_SIZE:
            _MEMORY.popitem(last=False)


@dataclass(frozen=True)
class LayerStatistics:
    """Second-moment statistics of one layer's input on one task's data."""

    covariance: torch.Tensor  # (d_in, d_in) E[x xᵀ] over tokens, float64
    eigenvalues: torch.Tensor  # (d_in,) descending
    eigenvectors: torch.Tensor  # (d_in, k) the top-k eigenvectors as columns, descending
    tokens: int  # number of token vectors averaged

    @property
    def d_in(self) -> int:
        return self.covariance.shape[-1]

    def basis(self, r_d: int) -> torch.Tensor:
        """V_d: the top `r_d` eigenvectors, `(d_in, r_d)`."""
        if not 1 <= r_d <= self.eigenvectors.shape[-1]:
            raise ValueError(f"r_d must be in 1..{self.eigenvectors.shape[-1]} for this layer, got {r_d}")
        return self.eigenvectors[:, :r_d]

    @property
    def sigma1_squared(self) -> float:
        """λ_max(C): σ1(X)² of the token matrix scaled by 1/√tokens."""
        return float(self.eigenvalues[0])


def selected_layers(state: StateDict, layers: str | Sequence[str] = "paper") -> list[str]:
    """The layer keys the analysis looks at, in state order: NUFILT's selection by default."""
    chosen = select_keys(state, layers, PAPER_NUFILT_PATTERNS, matrix_rule=True)
    return [key for key in state if key in chosen]


def layer_statistics(covariance: torch.Tensor, tokens: int, keep: int | None = None) -> LayerStatistics:
    """Eigen-decompose a second-moment matrix (kept as float64) into a `LayerStatistics`."""
    covariance = covariance.double()
    covariance = (covariance + covariance.mT) / 2
    values, vectors = torch.linalg.eigh(covariance)  # ascending
    values, vectors = values.flip(-1).clamp_min(0.0), vectors.flip(-1)
    keep = covariance.shape[-1] if keep is None else min(keep, covariance.shape[-1])
    return LayerStatistics(covariance, values, vectors[:, :keep].contiguous(), int(tokens))


# ---------------------------------------------------------------- hooks


def find_linear_modules(encoder: nn.Module, keys: Sequence[str]) -> dict[str, nn.Module]:
    """The module that applies each weight key, matched by name suffix and checked by shape.

    A key `<path>.weight` belongs to the module named `<path>` (the encoder may add or drop a
    prefix such as `vision_model.`); `<path>.in_proj_weight` to a `MultiheadAttention` at `<path>`.
    """
    modules = dict(encoder.named_modules())
    found: dict[str, nn.Module] = {}
    for key in keys:
        stem, _, leaf = key.rpartition(".")
        if leaf not in ("weight", "in_proj_weight") or not stem:
            raise ValueError(f"{key!r} is not the weight of a linear layer")
        matches = [m for m in modules if m == stem or m.endswith("." + stem) or stem.endswith("." + m)]
        matches = [m for m in matches if isinstance(getattr(modules[m], leaf, None), torch.Tensor)]
        if len(matches) != 1:
            raise ValueError(f"layer {key!r} matches {len(matches)} modules of the encoder ({matches[:3]})")
        module = modules[matches[0]]
        if getattr(module, leaf).ndim != 2:
            raise ValueError(f"layer {key!r} is not a 2-D weight in the encoder")
        found[key] = module
    return found


def _token_mask(batch: Mapping[str, Any], leading: torch.Size) -> torch.Tensor | None:
    """The encoder padding mask when it unambiguously matches an activation's (batch, tokens)."""
    mask = batch.get("attention_mask")
    if not isinstance(mask, torch.Tensor) or mask.shape != leading:
        return None
    decoder = batch.get("decoder_input_ids")
    if isinstance(decoder, torch.Tensor) and decoder.shape == leading:
        return None  # encoder and decoder sequences of equal shape: cannot tell them apart
    return mask


@torch.no_grad()
def collect_statistics(
    encoder: nn.Module, batches: Iterable[Mapping[str, torch.Tensor]], keys: Sequence[str], keep: int | None = None
) -> dict[str, LayerStatistics]:
    """Run `encoder(**batch)` over `batches` with hooks on `keys`; the input second moment per key.

    Inputs are flattened to token vectors `(tokens, d_in)`; padding tokens are dropped where the
    batch's `attention_mask` identifies them. Layers that share one input tensor (q/k/v) reuse
    one product. The hooks are removed afterwards, even on error.
    """
    modules = find_linear_modules(encoder, keys)
    sums: dict[str, torch.Tensor] = {}
    counts = dict.fromkeys(keys, 0)
    current: dict[str, Any] = {}
    # the last input seen and its (gram, count): q/k/v are called in a row on one tensor. The
    # reference keeps that tensor alive, so `is` cannot match a new tensor in reused memory.
    last: list[Any] = [None, None]

    def make_hook(key: str):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            x = args[0] if args else next(v for k, v in kwargs.items() if k in ("input", "query", "hidden_states"))
            if last[0] is not x:
                flat = x.detach().reshape(-1, x.shape[-1]).double()
                mask = _token_mask(current, x.shape[:-1])
                if mask is not None:
                    flat = flat[mask.reshape(-1).bool()]
                last[:] = [x, (flat.mT @ flat, flat.shape[0])]
            gram, count = last[1]
            sums[key] = gram if key not in sums else sums[key] + gram
            counts[key] += count

        return hook

    handles = [modules[k].register_forward_pre_hook(make_hook(k), with_kwargs=True) for k in keys]
    try:
        encoder.eval()
        for batch in batches:
            current.clear()
            current.update(batch)
            encoder(**batch)
            last[:] = [None, None]
    finally:
        for handle in handles:
            handle.remove()
        last[:] = [None, None]
    missing = [k for k in keys if counts[k] == 0]
    if missing:
        raise RuntimeError(f"no activations reached layer(s) {missing[:3]}; is the layer used by the forward pass?")
    return {k: layer_statistics(sums[k] / counts[k], counts[k], keep) for k in keys}


# ---------------------------------------------------------------- cached statistics of a backbone's task


def state_digest(state: StateDict) -> str:
    """A content digest of a model: key names, shapes and a strided sample of every tensor."""
    digest = hashlib.blake2b(digest_size=16)
    for key in state:
        tensor = state[key].detach()
        digest.update(f"{key}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        flat = tensor.reshape(-1)
        sample = flat[:: max(1, flat.numel() // 4096)].contiguous().cpu()
        digest.update(sample.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _backbone_identity(backbone: Backbone) -> dict[str, Any]:
    config = getattr(backbone, "config", None)
    identity: dict[str, Any] = {"backbone": backbone.name}
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        # the zoo's config leaves fields that were added later out of its keys at their neutral
        # value (`ZooConfig.stage_fields`), so statistics cached before such a field stay valid
        fields = getattr(config, "stage_fields", None)
        identity["config"] = config_hash(fields("finetune") if fields else config)
    return identity


DEFAULT_SAMPLES = 256


def clamp_samples(backbone: Backbone, n_samples: int) -> int:
    """At most the embedded zoo's test-set size (the statistics use its test inputs)."""
    if backbone.name != EMBEDDED:
        return n_samples
    return min(n_samples, backbone.config.n_test)


def activation_statistics(
    backbone: Backbone,
    task: str,
    keys: Sequence[str] | None = None,
    n_samples: int | None = None,
    split: str = "test",
    source: str = "finetuned",
    keep: int = 256,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
) -> dict[str, LayerStatistics]:
    """Input statistics of `keys` (default: NUFILT's layers) on `n_samples` inputs of `task`.

    `source` picks the model that produces the activations: "finetuned" (default: the task's own
    θt, whose inputs its task vector was fitted to and Eq. 4's reference model) or "pretrained"
    (θ0). Either way the inputs depend only on the task, never on a merge method.
    `keep` top eigenvectors are stored per layer. Cached under `cache_dir/activations/`.
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    if n_samples is None:  # 256, or every test image of the embedded zoo when it has fewer
        n_samples = clamp_samples(backbone, DEFAULT_SAMPLES)
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}")
    backbone.task(task)
    state = backbone.pretrained_state() if source == "pretrained" else backbone.finetuned_state(task)
    keys = selected_layers(state) if keys is None else list(keys)
    unknown = [k for k in keys if k not in state]
    if unknown:
        raise ValueError(f"unknown layer key(s) {unknown[:3]}")
    identity = {
        **_backbone_identity(backbone),
        "model": state_digest(state),
        "source": source,
        "task": task,
        "split": split,
        "n_samples": n_samples,
        "keys": keys,
        "keep": keep,
        "version": CACHE_VERSION,
    }
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder = root / "activations" / f"{backbone.name.replace(':', '_').replace('/', '_')}-{config_hash(identity)}"
    memo_key = str(folder)
    remembered = _recall(memo_key) if use_cache else None
    if remembered is not None:
        return remembered

    def compute() -> dict[str, LayerStatistics]:
        encoder = backbone.build_encoder(state)
        return collect_statistics(encoder, backbone.activation_batches(task, n_samples, split), keys, keep)

    if not use_cache:
        return compute()

    def build(target: Path) -> None:
        stats = compute()
        tensors = {}
        for i, key in enumerate(keys):
            tensors[f"{i}.covariance"] = stats[key].covariance
            tensors[f"{i}.eigenvalues"] = stats[key].eigenvalues
            tensors[f"{i}.eigenvectors"] = stats[key].eigenvectors
        atomic_save_tensors(target / "statistics.safetensors", tensors)
        atomic_write_json(target / "meta.json", {**identity, "tokens": [stats[k].tokens for k in keys]})

    ensure_entry(folder, build)
    stats = _load(folder, keys)
    _remember(memo_key, stats)
    return dict(stats)


def _load(folder: Path, keys: Sequence[str]) -> dict[str, LayerStatistics]:
    from safetensors.torch import load_file

    tensors = load_file(folder / "statistics.safetensors")
    tokens = json.loads((folder / "meta.json").read_text())["tokens"]
    return {
        key: LayerStatistics(
            tensors[f"{i}.covariance"], tensors[f"{i}.eigenvalues"], tensors[f"{i}.eigenvectors"], tokens[i]
        )
        for i, key in enumerate(keys)
    }


def task_statistics(
    backbone: Backbone, tasks: Sequence[str] | None = None, **options: Any
) -> dict[str, dict[str, LayerStatistics]]:
    """`activation_statistics` for several tasks (default: all of the backbone's): {task: {key: stats}}."""
    names = [t.name for t in backbone.tasks] if tasks is None else list(tasks)
    return {task: activation_statistics(backbone, task, **options) for task in names}


def clear_memory_cache() -> None:
    """Forget the in-memory copies (the disk cache stays)."""
    with _MEMORY_LOCK:
        _MEMORY.clear()
