"""Small, seeded builders shared by the tests: real tiny CLIP state dicts and synthetic tasks."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from transformers import CLIPVisionConfig, CLIPVisionModel


def tiny_clip_config(width: int = 32, layers: int = 2) -> CLIPVisionConfig:
    return CLIPVisionConfig(
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=layers,
        num_attention_heads=4,
        image_size=8,
        patch_size=4,
        num_channels=1,
    )


def tiny_clip_state(seed: int = 0, width: int = 32, layers: int = 2) -> dict[str, torch.Tensor]:
    """The state dict of a real, randomly initialised `CLIPVisionModel`."""
    torch.manual_seed(seed)
    model = CLIPVisionModel(tiny_clip_config(width, layers))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def synthetic_tasks(
    pretrained: Mapping[str, torch.Tensor], n_tasks: int, seed: int = 1, scale: float = 0.02, rank: int = 3
) -> list[dict[str, torch.Tensor]]:
    """Fine-tuned variants: low-rank task vectors on 2-D weights (τ = B H), small noise elsewhere."""
    generator = torch.Generator().manual_seed(seed)
    tasks = []
    for _ in range(n_tasks):
        task = {}
        for key, value in pretrained.items():
            if not value.is_floating_point():
                task[key] = value.clone()
            elif value.ndim == 2:
                d_out, d_in = value.shape
                r = min(rank, d_out, d_in)
                left = torch.randn(d_out, r, generator=generator)
                right = torch.randn(r, d_in, generator=generator)
                task[key] = value + scale * (left @ right) / r
            else:
                task[key] = value + scale * 0.1 * torch.randn(value.shape, generator=generator)
        tasks.append(task)
    return tasks


def clone(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in state.items()}


def held_elements(obj: object, _seen: set[int] | None = None) -> int:
    """Number of tensor elements reachable from `obj` through attributes, dicts, lists and tuples.

    Tensors sharing storage are counted once. Used to check that a merger's memory does not grow
    with the number of tasks.
    """
    seen = set() if _seen is None else _seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        pointer = obj.untyped_storage().data_ptr()
        if ("storage", pointer) in seen:
            return 0
        seen.add(("storage", pointer))  # type: ignore[arg-type]
        return obj.numel()
    if isinstance(obj, dict):
        return sum(held_elements(v, seen) for v in obj.values())
    if isinstance(obj, (list, tuple, set, frozenset)):
        return sum(held_elements(v, seen) for v in obj)
    if hasattr(obj, "__dict__") and not isinstance(obj, type):
        return sum(held_elements(v, seen) for v in vars(obj).values())
    return 0


def model_elements(state: Mapping[str, torch.Tensor]) -> int:
    return sum(v.numel() for v in state.values())
