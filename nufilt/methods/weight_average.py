"""Weight averaging (paper Sec. 3.2 ❶): θ̄t = ((t−1) θ̄_{t−1} + θt) / t, θ̄1 = θ1."""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass

import torch

from .base import MergeMethod, StepContext, elementwise_step


@dataclass
class WeightAverageOptions:
    """Weight averaging has no options of its own."""


class WeightAverage(MergeMethod):
    name = "weight_average"
    Options = WeightAverageOptions
    paper_layers = "all"

    def step(self, ctx: StepContext) -> MutableMapping[str, torch.Tensor]:
        t = ctx.step

        def average(key: str, base: torch.Tensor, merged: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
            return task if t == 1 else ((t - 1) * merged + task) / t

        return elementwise_step(ctx, average)
