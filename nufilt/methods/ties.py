"""TIES-merging, continual form (App. B.3): θ̄t = θ̄_{t−1} + λ · TIES(τ̄_{t−1}, τt).

TIES (Yadav et al. 2023): trim each vector to its top-k% magnitudes over the whole selected
model, elect a sign per entry from the sum of the trimmed values, and average the trimmed entries
that agree with it ("disjoint mean"; `merge="sum"` adds them, as the authors' continual config).
τ̄_{t−1} = θ̄_{t−1} − θ0 is the previous merged task vector.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, MutableMapping, Sequence
from dataclasses import dataclass

import torch

from .base import MergeMethod, StepContext, check_choice, check_number, elementwise_step, option
from .task_arithmetic import scale_for


def magnitude_threshold(vectors: Callable[[], Iterable[torch.Tensor]], top_k: float, bins: int = 4096) -> float:
    """The smallest magnitude kept when keeping the top `top_k` percent of all entries.

    Exact, without concatenating the model: `vectors()` is iterated a few times. A histogram of
    magnitudes locates the bin holding the threshold; that bin is histogrammed again until its
    entries fit in memory, then the threshold is selected exactly among them. Bin membership is
    always decided by the same index arithmetic, so counts never disagree at bin edges.
    Memory is O(bins + entries of one bin), not O(model).
    """
    count, top = 0, 0.0
    for vector in vectors():
        count += vector.numel()
        if vector.numel():
            top = max(top, float(vector.abs().max()))
    n_keep = math.ceil(count * top_k / 100.0)
    if n_keep == 0:
        return math.inf
    levels: list[tuple[float, float, int]] = []  # (low, width, chosen bin) of each narrowing

    def candidates() -> Iterator[torch.Tensor]:
        for vector in vectors():
            values = vector.abs().flatten()
            for low, width, chosen in levels:
                values = values[_bin_index(values, low, width, bins) == chosen]
            yield values

    low, width, above = 0.0, top / bins, 0  # `above`: entries known to be larger than the candidates
    while True:
        histogram = torch.zeros(bins, dtype=torch.int64)
        inside = 0
        for values in candidates():
            inside += values.numel()
            histogram += torch.bincount(_bin_index(values, low, width, bins).cpu(), minlength=bins)
        rank = n_keep - above  # wanted: the rank-th largest candidate
        if inside <= (1 << 22) or width == 0:
            gathered = torch.cat([values.cpu() for values in candidates()])
            return float(gathered.kthvalue(gathered.numel() - rank + 1).values)
        from_top = histogram.flip(0).cumsum(0)
        position = int((from_top >= rank).nonzero()[0])
        chosen = bins - 1 - position
        above += int(from_top[position] - histogram[chosen])
        levels.append((low, width, chosen))
        low, width = low + chosen * width, width / bins


def _bin_index(values: torch.Tensor, low: float, width: float, bins: int) -> torch.Tensor:
    if width == 0:
        return torch.zeros(values.shape, dtype=torch.long, device=values.device)
    return ((values - low) / width).floor().clamp(0, bins - 1).long()


def trim(vector: torch.Tensor, threshold: float) -> torch.Tensor:
    """Zero the entries below `threshold` in magnitude."""
    return torch.where(vector.abs() >= threshold, vector, torch.zeros_like(vector))


DISJOINT_MERGES = ("mean", "sum")


def elect_and_merge(trimmed: Sequence[torch.Tensor], merge: str = "mean") -> torch.Tensor:
    """Sign election from the summed trimmed vectors, then the mean (or sum) of agreeing non-zero entries."""
    stacked = torch.stack(list(trimmed))  # (n, ...)
    # elect sign
    elected = torch.sign(stacked.sum(dim=0))
    # disjoint merge
    agree = (torch.sign(stacked) == elected) & (stacked != 0)
    total = (stacked * agree).sum(dim=0)
    if merge == "sum":
        return total
    return total / agree.sum(dim=0).clamp_min(1)


@dataclass
class TiesOptions:
    scale: float = option(0.3, "λ; Table 9 uses 0.3 for 8 tasks and 0.1 for 14/20")
    top_k: float = option(20.0, "percent of entries kept per vector, over the whole selected model")
    merge: str = option(
        "mean",
        'disjoint merge of agreeing entries: "mean" (TIES paper) or "sum" (authors\' config)',
        choices=DISJOINT_MERGES,
    )

    def __post_init__(self) -> None:
        check_number("scale", self.scale)
        check_number("top_k", self.top_k, low=0.0, high=100.0, low_open=True)
        check_choice("merge", self.merge, DISJOINT_MERGES)


class Ties(MergeMethod):
    name = "ties"
    Options = TiesOptions
    paper_layers = "all"

    def step(self, ctx: StepContext) -> MutableMapping[str, torch.Tensor]:
        keys = [k for k in ctx.pretrained if k in ctx.selected]
        top_k = self.options.top_k
        merged_threshold = magnitude_threshold(lambda: (ctx.merged_vector(k) for k in keys), top_k)
        task_threshold = magnitude_threshold(lambda: (ctx.task_vector(k) for k in keys), top_k)
        scale, merge = self.options.scale, self.options.merge

        def combine(key: str, base: torch.Tensor, merged: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
            update = elect_and_merge(
                [trim(merged - base, merged_threshold), trim(task - base, task_threshold)], merge
            )
            return merged + scale * update

        return elementwise_step(ctx, combine)

    @classmethod
    def paper_options(cls, n_tasks: int) -> dict:
        return {"scale": scale_for(n_tasks)}
