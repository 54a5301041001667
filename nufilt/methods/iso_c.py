"""Iso-C (Marczak et al. 2025), continual form of the NUFILT authors' code (Table 1).

Static Iso-C on a matrix: the sum of the task vectors U Σ Vᵀ with its spectrum made flat,
mean(σ)·U Vᵀ (thin SVD, all min(d_out, d_in) singular values). Continual: each step merges the pair
[τ̄_{t−1}, τt] and sets θ̄t = θ0 + λ·Iso-C (θ̄1 = θ0 + λ τ1); non-matrix parameters take the mean.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass

import torch

from .base import MergeMethod, StepContext, check_number, option, pair_step


def isotropic_sum(previous: torch.Tensor, task_vector: torch.Tensor) -> torch.Tensor:
    """mean(σ)·U Vᵀ for U Σ Vᵀ = τ̄_{t−1} + τt: the sum's singular directions, each with the mean weight."""
    u, s, vh = torch.linalg.svd(previous + task_vector, full_matrices=False)
    return s.mean() * (u @ vh)


@dataclass
class IsoCOptions:
    scale: float = option(1.0, "λ; the authors' config (config/method/nufilt/iso.yaml)")

    def __post_init__(self) -> None:
        check_number("scale", self.scale)


class IsoC(MergeMethod):
    name = "iso_c"
    Options = IsoCOptions
    paper_layers = "all"  # every parameter; the SVD rule applies to the 2-D ones

    def step(self, ctx: StepContext) -> MutableMapping[str, torch.Tensor]:
        return pair_step(ctx, self.options.scale, isotropic_sum)
