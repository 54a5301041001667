"""Task arithmetic (paper Sec. 3.2 ❷): θ̄t = θ̄_{t−1} + λ τt, starting from θ̄0 = θ0."""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass

import torch

from .base import MergeMethod, StepContext, check_number, elementwise_step, option


def scale_for(n_tasks: int) -> float:
    """Table 9: λ = 0.3 for 8 tasks, 0.1 for 14 and 20."""
    return 0.3 if n_tasks <= 8 else 0.1


@dataclass
class TaskArithmeticOptions:
    scale: float = option(0.3, "λ; Table 9 uses 0.3 for 8 tasks and 0.1 for 14/20")

    def __post_init__(self) -> None:
        check_number("scale", self.scale)


class TaskArithmetic(MergeMethod):
    name = "task_arithmetic"
    Options = TaskArithmeticOptions
    paper_layers = "all"

    def step(self, ctx: StepContext) -> MutableMapping[str, torch.Tensor]:
        scale = self.options.scale

        def add(key: str, base: torch.Tensor, merged: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
            return merged + scale * (task - base)

        return elementwise_step(ctx, add)

    @classmethod
    def paper_options(cls, n_tasks: int) -> dict:
        return {"scale": scale_for(n_tasks)}
