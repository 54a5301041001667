"""TSV-M (Gargiulo et al. 2025), continual form of the NUFILT authors' code (Table 1).

Static TSV-M on a matrix, for n task vectors: keep each τi's top k = ⌊m/n⌋ singular triplets
(m = min(d_out, d_in)), stack them, U = [U_1,k … U_n,k], S, V likewise, replace U and V by their closest
matrices with orthonormal columns (Procrustes: P Qᵀ from P Σ Qᵀ = U) and return U⊥ diag(S) V⊥ᵀ.
Continual: n = 2 vectors [τ̄_{t−1}, τt], θ̄t = θ0 + λ·TSV-M (θ̄1 = θ0 + λ τ1); other parameters the mean.
"""

from __future__ import annotations

from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass

import torch

from .base import MergeMethod, StepContext, check_number, option, pair_step


def closest_orthonormal(matrix: torch.Tensor) -> torch.Tensor:
    """The matrix with orthonormal columns nearest `matrix` in Frobenius norm (orthogonal Procrustes)."""
    left, _, right_t = torch.linalg.svd(matrix, full_matrices=False)
    return left @ right_t


def task_singular_merge(vectors: Sequence[torch.Tensor]) -> torch.Tensor:
    """TSV-M of same-shape matrices: top-⌊m/n⌋ triplets of each, U and V orthogonalised, summed."""
    rank = min(vectors[0].shape) // len(vectors)
    if rank == 0:  # no triplet to keep (e.g. a 1-row matrix and two vectors): the code gives zero
        return torch.zeros_like(vectors[0])
    lefts, values, rights = [], [], []
    for vector in vectors:
        u, s, vh = torch.linalg.svd(vector, full_matrices=False)
        lefts.append(u[:, :rank])
        values.append(s[:rank])
        rights.append(vh[:rank].mT)
    left = closest_orthonormal(torch.cat(lefts, dim=1))  # (d_out, n·k)
    right = closest_orthonormal(torch.cat(rights, dim=1))  # (d_in, n·k)
    return (left * torch.cat(values)) @ right.mT


@dataclass
class TsvMOptions:
    scale: float = option(1.0, "λ; the authors' config (config/method/nufilt/tsvm.yaml)")

    def __post_init__(self) -> None:
        check_number("scale", self.scale)


class TsvM(MergeMethod):
    name = "tsv_m"
    Options = TsvMOptions
    paper_layers = "all"  # every parameter; the SVD rule applies to the 2-D ones

    def step(self, ctx: StepContext) -> MutableMapping[str, torch.Tensor]:
        return pair_step(ctx, self.options.scale, lambda previous, task: task_singular_merge([previous, task]))
