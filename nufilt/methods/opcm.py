"""OPCM (Tang et al. 2025; paper Sec. 3.2 ❸): orthogonal projection + adaptive norm scaling.

Keeps the unscaled sum S_t = S_{t−1} + τt' and sets θ̄t = θ0 + S_t · mean_i‖τi‖ / ‖S_t‖ (norms over
all floating parameters). For a selected weight, τt' removes from τt the diagonal and the top-left
k×k block of C = Uᵀ τt V, where U S Vᵀ is the SVD of S_{t−1} and k the first index at which
cumsum(S)/sum(S) > α. S_{t−1} is recovered from θ̄_{t−1} with two scalars, so no model is stored.
`zero_diagonal=False` keeps the diagonal, as the code behind the published numbers did.
"""

from __future__ import annotations

import math
from collections.abc import MutableMapping
from dataclasses import dataclass

import torch

from .base import MergeMethod, StepContext, check_number, option


def split_rank(singular_values: torch.Tensor, alpha: float) -> int:
    """First (0-based) index where the cumulative share of singular values exceeds α."""
    total = singular_values.sum()
    if total <= 0:
        return 0
    above = (singular_values.cumsum(0) / total) > alpha
    return int(above.float().argmax()) if bool(above.any()) else singular_values.numel()


def project_out(
    previous: torch.Tensor, task_vector: torch.Tensor, alpha: float, zero_diagonal: bool = True
) -> torch.Tensor:
    """τ' = U C' Vᵀ with C = Uᵀ τ V, C' = C minus its diagonal and its top-left k×k block.

    Equivalent to the full-SVD formula but with a thin SVD: the removed parts only involve the
    first min(d_out, d_in) singular pairs, everything else of τ is kept as is. With
    `zero_diagonal=False` only the k×k block is removed: the OPCM code behind the published numbers
    calls `.diag().fill_(0)`, which fills a copy, so its diagonal was never zeroed.
    """
    if not bool(previous.any()):
        return task_vector.clone()  # nothing merged yet on this weight: nothing to protect
    u, s, vh = torch.linalg.svd(previous, full_matrices=False)
    k = split_rank(s, alpha)
    coefficients = u.mT @ task_vector @ vh.mT  # (m, m), m = min(d_out, d_in)
    removed = torch.diag_embed(torch.diagonal(coefficients)) if zero_diagonal else torch.zeros_like(coefficients)
    removed[:k, :k] = coefficients[:k, :k]
    return task_vector - u @ removed @ vh


@dataclass
class OpcmOptions:
    alpha: float = option(0.5, "share of the previous spectrum whose top-left block is protected")
    zero_diagonal: bool = option(True, "remove diag(C) as described; False: the published code (a no-op fill)")

    def __post_init__(self) -> None:
        check_number("alpha", self.alpha, low=0.0, high=1.0)
        if not isinstance(self.zero_diagonal, bool):
            raise TypeError(f"zero_diagonal must be True or False, got {self.zero_diagonal!r}")


class Opcm(MergeMethod):
    name = "opcm"
    Options = OpcmOptions
    paper_layers = "all-linear"
    matrix_rule = True

    def __init__(self, options: OpcmOptions) -> None:
        super().__init__(options)
        self.sum_norm = 0.0  # ‖S_{t−1}‖
        self.norm_total = 0.0  # Σ_i ‖τi‖ over merged tasks

    def step(self, ctx: StepContext) -> MutableMapping[str, torch.Tensor]:
        keys = ctx.floating_keys()
        # S_{t−1} = τ̄_{t−1} · ‖S_{t−1}‖ / mean_{i<t}‖τi‖  (scaling keeps bases and k unchanged)
        unscale = self.sum_norm / (self.norm_total / (ctx.step - 1)) if ctx.step > 1 else 0.0
        sums = ctx.new_state(torch.float32)  # unscaled S_t until its norm is known
        sum_sq = task_sq = 0.0
        for key in keys:
            task_vector = ctx.task_vector(key)
            previous = ctx.merged_vector(key) * unscale
            if key in ctx.selected and ctx.step > 1:
                update = project_out(previous, task_vector, self.options.alpha, self.options.zero_diagonal)
            else:
                update = task_vector
            total = previous + update
            sum_sq += float(torch.sum(total.pow(2), dtype=torch.float64))
            task_sq += float(torch.sum(task_vector.pow(2), dtype=torch.float64))
            sums[key] = total.cpu()
        self.norm_total += math.sqrt(task_sq)
        self.sum_norm = math.sqrt(sum_sq)
        mean_norm = self.norm_total / ctx.step
        factor = mean_norm / self.sum_norm if self.sum_norm > 0 else 0.0
        ctx.info.update(sum_norm=self.sum_norm, mean_task_norm=mean_norm, scale=factor)
        merged = ctx.new_state()
        for key in ctx.pretrained:
            if key in sums:
                merged[key] = ctx.output(key, ctx.load(ctx.pretrained, key) + sums.pop(key).to(ctx.device) * factor)
            else:
                merged[key] = ctx.pretrained[key].detach().clone()
        return merged
