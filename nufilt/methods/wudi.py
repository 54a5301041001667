"""WUDI-merging, continual form (App. B.3).

For each selected weight, start from τm = τ̄_{t−1} + τt and minimise
Σ_{i∈{prev,t}} ‖(τm − τi) τiᵀ‖²_F / ‖τi‖²_F with Adam; other parameters average τ̄_{t−1} and τt.
θ̄t = θ0 + τm, and θ̄1 = θ1 (the first model is taken as is, as in the continual setting).
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass

import torch

from .base import MergeMethod, StepContext, check_number, check_rank, chunks, elementwise_step, group_by_shape, option


def wudi_solve(
    previous: torch.Tensor, task_vector: torch.Tensor, steps: int, lr: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched WUDI solve over (L, d_out, d_in) stacks; returns (τm, per-step loss (steps, L)).

    Adam with the exact gradient of Σ_i w_i ‖(τm − τi) τiᵀ‖², w_i = 1/‖τi‖². When d_in ≤ d_out the
    two terms fold into one quadratic: with G_i = τiᵀτi, H = Σ w_i G_i and C = Σ w_i τi G_i, the
    gradient is 2 (τm H − C) and the loss ⟨τm H − 2C, τm⟩ + Σ w_i ⟨τi G_i, τi⟩, one d_out·d_in² product
    per step. Otherwise each term uses the d_out x d_out product Z_i = (τm − τi) τiᵀ, gradient 2 Z_i τi.
    """
    d_out, d_in = previous.shape[-2:]
    weights = []
    for target in (previous, task_vector):
        norm_sq = target.pow(2).sum(dim=(-2, -1), keepdim=True)
        weights.append(torch.where(norm_sq > 0, 1.0 / norm_sq.clamp_min(1e-30), 0.0))
    folded = d_in <= d_out
    if folded:
        hessian = linear = constant = 0
        for target, weight in zip((previous, task_vector), weights, strict=True):
            gram = target.mT @ target  # G_i: (L, d_in, d_in)
            mapped = target @ gram  # τi G_i
            hessian = hessian + weight * gram
            linear = linear + weight * mapped
            constant = constant + (mapped * target).sum(dim=(-2, -1)) * weight.flatten()
    merged = previous + task_vector
    optimizer = torch.optim.Adam([merged], lr=lr)
    history = []
    for _ in range(steps):
        if folded:
            product = merged @ hessian
            loss = ((product - 2 * linear) * merged).sum(dim=(-2, -1)) + constant
            grad = 2 * (product - linear)
        else:
            loss = merged.new_zeros(merged.shape[0])
            grad = torch.zeros_like(merged)
            for target, weight in zip((previous, task_vector), weights, strict=True):
                product = (merged - target) @ target.mT
                loss = loss + product.pow(2).sum(dim=(-2, -1)) * weight.flatten()
                grad += 2 * weight * (product @ target)
        merged.grad = grad
        optimizer.step()
        history.append(loss)
    merged.grad = None
    losses = torch.stack(history) if history else merged.new_zeros(0, merged.shape[0])
    return merged, losses


@dataclass
class WudiOptions:
    steps: int = option(50, "Adam iterations per step (Table 9)")
    lr: float = option(1e-5, "Adam learning rate (Table 9)")

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
