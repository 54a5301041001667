"""WUDI-merging, continual form (App. B.3).

For each selected weight, start from τm = τ̄_{t−1} + τt and minimise
Σ_{i∈{prev,t}} ‖(τm − τi) τiᵀ‖²_F / ‖τi‖²_F with Adam; other parameters average τ̄_{t−1} and τt.
θ̄t = θ0 + τm, and θ̄1 = θ1 (the first model is taken as is, as in the continual setting).
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass

import torch

from .base import MergeMethod, StepContext, check_number, check_rank, chunks, elementwise_step, group_by_shape


def wudi_solve(
    previous: torch.Tensor, task_vector: torch.Tensor, steps: int, lr: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched WUDI solve over (L, d_out, d_in) stacks; returns (τm, per-step loss (steps, L))."""
    targets = (previous, task_vector)
    weights = []
    for target in targets:
        norm_sq = target.pow(2).sum(dim=(-2, -1), keepdim=True)
        weights.append(torch.where(norm_sq > 0, 1.0 / norm_sq.clamp_min(1e-30), 0.0))
    merged = (previous + task_vector).clone().requires_grad_(True)
    optimizer = torch.optim.Adam([merged], lr=lr)
    history = []
    with torch.enable_grad():
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            per_layer = sum(
                ((merged - target) @ target.mT).pow(2).sum(dim=(-2, -1)) * weight.flatten()
                for target, weight in zip(targets, weights, strict=True)
            )
            per_layer.sum().backward()
            optimizer.step()
            history.append(per_layer.detach())
    losses = torch.stack(history) if history else merged.new_zeros(0, merged.shape[0])
    return merged.detach(), losses


@dataclass
class WudiOptions:
    steps: int = 50  # Adam iterations per step (Table 9)
    lr: float = 1e-5  # Adam learning rate (Table 9)

    def __post_init__(self) -> None:
        check_rank("steps", self.steps)
        check_number("lr", self.lr, low=0.0, low_open=True)


class Wudi(MergeMethod):
    name = "wudi"
    Options = WudiOptions
    paper_layers = "all-linear"
    matrix_rule = True

    def step(self, ctx: StepContext) -> MutableMapping[str, torch.Tensor]:
        if ctx.step == 1:  # θ̄1 = θ1 on every floating parameter
            return elementwise_step(ctx, lambda key, base, prev, task: task, lambda key: ctx.load(ctx.task, key))
        merged = ctx.new_state()
        losses: dict[str, list[float]] = {}
        selected = [k for k in ctx.pretrained if k in ctx.selected]
        for shape, group in group_by_shape(ctx.pretrained, selected).items():
            for keys in chunks(group, shape):
                previous = torch.stack([ctx.merged_vector(k) for k in keys])
                task_vector = torch.stack([ctx.task_vector(k) for k in keys])
                solved, history = wudi_solve(previous, task_vector, self.options.steps, self.options.lr)
                for i, key in enumerate(keys):
                    merged[key] = ctx.output(key, ctx.load(ctx.pretrained, key) + solved[i])
                    losses[key] = history[:, i].tolist()
        for key in ctx.pretrained:
            if key in merged:
                continue
            if ctx.pretrained[key].is_floating_point():
                average = (ctx.merged_vector(key) + ctx.task_vector(key)) / 2
                merged[key] = ctx.output(key, ctx.load(ctx.pretrained, key) + average)
            else:
                merged[key] = ctx.pretrained[key].detach().clone()
        ctx.info["loss_curve"] = losses
        return merged
