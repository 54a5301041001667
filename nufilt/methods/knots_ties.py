"""KnOTS-TIES (Stoica et al. 2025), continual form of the NUFILT authors' code (Table 1).

For a linear weight: U S [V_1ᵀ V_2ᵀ] = [τ̄_{t−1}, τt] (SVD of the column concatenation, float64,
singular values ≤ `rank_tol` dropped); TIES over the task blocks V_1ᵀ, V_2ᵀ (top-k% per block, sign
election, disjoint sum); result U S V_mergedᵀ. The authors' code adds it to the merged model,
θ̄t = θ̄_{t−1} + λ·result (θ̄1 = θ0 + λ τ1); every other parameter keeps θ0.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass

import torch

from .base import MergeMethod, StepContext, check_choice, check_number, elementwise_step, option
from .ties import DISJOINT_MERGES, elect_and_merge, magnitude_threshold, trim

ADD_TO = ("merged", "pretrained")


def knots_merge(
    previous: torch.Tensor, task_vector: torch.Tensor, top_k: float, merge: str, rank_tol: float
) -> torch.Tensor:
    """KnOTS-TIES of two (d_out, d_in) matrices: TIES on their blocks of the shared right basis."""
    d_in = previous.shape[1]
    u, s, vh = torch.linalg.svd(torch.cat([previous, task_vector], dim=1).double(), full_matrices=False)
    kept = s > rank_tol  # the supported components only (absolute cut-off, as the authors' code)
    u, s, vh = u[:, kept], s[kept], vh[kept]  # (d_out, r), (r,), (r, 2·d_in)
    blocks = (vh[:, :d_in], vh[:, d_in:])  # V_1ᵀ, V_2ᵀ: (r, d_in) each
    trimmed = [trim(block, magnitude_threshold(lambda block=block: [block], top_k)) for block in blocks]
    merged_block = elect_and_merge(trimmed, merge)
    return ((u * s) @ merged_block).to(previous.dtype)


@dataclass
class KnotsTiesOptions:
    scale: float = option(0.1, "λ; the authors' config (config/method/nufilt/knots.yaml)")
    top_k: float = option(20.0, "percent of each V block's entries TIES keeps")
    merge: str = option("sum", 'TIES disjoint merge: "sum" (the authors\' config) or "mean"', choices=DISJOINT_MERGES)
    rank_tol: float = option(1e-4, "singular values of [τ̄, τt] at or below this are dropped (absolute)")
    add_to: str = option(
        "merged",
        'θ̄t = θ̄_{t−1} + λ·result (authors\' code) or "pretrained": θ0 + λ·result',
        choices=ADD_TO,
    )

    def __post_init__(self) -> None:
        check_number("scale", self.scale)
        check_number("top_k", self.top_k, low=0.0, high=100.0, low_open=True)
        check_choice("merge", self.merge, DISJOINT_MERGES)
        check_number("rank_tol", self.rank_tol, low=0.0)
        check_choice("add_to", self.add_to, ADD_TO)


class KnotsTies(MergeMethod):
    name = "knots_ties"
    Options = KnotsTiesOptions
    paper_layers = "all-linear"  # the authors' code merges nn.Linear weights only
    matrix_rule = True

    def step(self, ctx: StepContext) -> MutableMapping[str, torch.Tensor]:
        opts = self.options

        def combine(key: str, base: torch.Tensor, merged: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
            if ctx.step == 1:
                return base + opts.scale * (task - base)
            result = knots_merge(merged - base, task - base, opts.top_k, opts.merge, opts.rank_tol)
            return (merged if opts.add_to == "merged" else base) + opts.scale * result

        return elementwise_step(ctx, combine)
