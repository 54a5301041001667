"""MagMax-Ind (App. B.3): m_t = entry-wise larger magnitude of m_{t−1} and τt; θ̄t = θ0 + λ m_t.

m_{t−1} is recovered from the merged state as (θ̄_{t−1} − θ0) / λ, so no extra model is stored.
Ties go to the newer task vector.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass

import torch

from .base import MergeMethod, StepContext, check_number, elementwise_step, option


@dataclass
class MagMaxOptions:
    scale: float = option(0.5, "λ (Table 9)")

    def __post_init__(self) -> None:
        check_number("scale", self.scale, low=0.0, low_open=True)


class MagMax(MergeMethod):
    name = "magmax"
    Options = MagMaxOptions
    paper_layers = "all"

    def step(self, ctx: StepContext) -> MutableMapping[str, torch.Tensor]:
        scale = self.options.scale

        def select(key: str, base: torch.Tensor, merged: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
            task_vector = task - base
            if ctx.step == 1:
                return base + scale * task_vector
            kept = (merged - base) / scale  # m_{t−1}
            newest = task_vector.abs() >= kept.abs()
            return base + scale * torch.where(newest, task_vector, kept)

        return elementwise_step(ctx, select)
