"""Subspace geometry: right singular bases, null-space projectors, principal angles, affinity.

Matrices follow the paper's layout, `W ∈ R^{d_out × d_in}` acting on inputs from the right, so
the "input subspace" of a task vector is spanned by its right singular vectors. Every function
accepts a single matrix or a batch (`(..., d_out, d_in)`).
"""

from __future__ import annotations

import torch

SVD_SOLVERS = ("exact", "lowrank")


def numerical_rank_mask(singular_values: torch.Tensor, size: int) -> torch.Tensor:
    """True for singular values above round-off, σ > σ_max · size · eps, per matrix.

    `size` is the larger matrix dimension; σ_max is the first (largest) value of each row.
    """
    eps = torch.finfo(singular_values.dtype).eps
    top = singular_values[..., :1]
    return singular_values > top * eps * size


def top_right_singular_vectors(
    matrix: torch.Tensor,
    k: int,
    solver: str = "exact",
    oversample: int = 8,
    power_iters: int = 4,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The top-`k` right singular vectors `V` (`(..., d_in, k)`) and their singular values.

    `k` must not exceed `min(d_out, d_in)`. Columns whose singular value is numerically zero (a
    rank-deficient input, e.g. an all-zero task vector) are returned as zero columns, so a
    projector built from `V` never removes arbitrary directions. `solver="lowrank"` uses a
    seeded randomized range finder; "exact" a full thin SVD.
    """
    d_out, d_in = matrix.shape[-2:]
    if not 0 <= k <= min(d_out, d_in):
        raise ValueError(f"rank {k} outside [0, {min(d_out, d_in)}] for a {d_out}x{d_in} matrix")
    if solver not in SVD_SOLVERS:
        raise ValueError(f"unknown SVD solver {solver!r}; use one of {SVD_SOLVERS}")
    if k == 0:
        empty = matrix.new_zeros(*matrix.shape[:-2], d_in, 0)
        return empty, matrix.new_zeros(*matrix.shape[:-2], 0)
    if solver == "exact" or k + oversample >= min(d_out, d_in):
        _, values, vh = torch.linalg.svd(matrix, full_matrices=False)
        basis, values = vh[..., :k, :].mT, values[..., :k]
    else:
        basis, values = _randomized_right_basis(matrix, k, oversample, power_iters, seed)
    mask = numerical_rank_mask(values, max(d_out, d_in))
    return basis * mask.unsqueeze(-2).to(basis.dtype), values * mask


def _randomized_right_basis(
    matrix: torch.Tensor, k: int, oversample: int, power_iters: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Randomized SVD (Halko et al.) of the row space: only products with `matrix` are needed."""
    d_in = matrix.shape[-1]
    generator = torch.Generator(device="cpu").manual_seed(seed)
    sketch = torch.randn(*matrix.shape[:-2], d_in, k + oversample, generator=generator)
    sketch = sketch.to(device=matrix.device, dtype=matrix.dtype)
    # (..., d_in, k+p): orthonormal basis approximating the top right singular subspace
    q = torch.linalg.qr(matrix.mT @ (matrix @ sketch)).Q
    for _ in range(power_iters):
        q = torch.linalg.qr(matrix.mT @ (matrix @ q)).Q
    _, values, vh = torch.linalg.svd(matrix @ q, full_matrices=False)  # small (d_out, k+p)
    basis = q @ vh.mT[..., :k]
    return basis, values[..., :k]


def projector(basis: torch.Tensor) -> torch.Tensor:
    """Orthogonal projector onto span(basis): `V Vᵀ` (`(..., d, d)`)."""
    return basis @ basis.mT


def null_space_projector(basis: torch.Tensor) -> torch.Tensor:
    """`I − V Vᵀ` (paper Eq. 8): removes the components inside span(basis)."""
    eye = torch.eye(basis.shape[-2], dtype=basis.dtype, device=basis.device)
    return eye - projector(basis)


def orthonormalize(matrix: torch.Tensor) -> torch.Tensor:
    """An orthonormal basis (`(..., d, r)`) of the column span of `matrix` (full column rank)."""
    return torch.linalg.qr(matrix).Q


def principal_angles(basis_a: torch.Tensor, basis_b: torch.Tensor) -> torch.Tensor:
    """Principal angles (radians, ascending) between the spans of two orthonormal bases."""
    cosines = torch.linalg.svdvals(basis_a.mT @ basis_b).clamp(0.0, 1.0)
    return torch.arccos(cosines)


def affinity(data_basis: torch.Tensor, vector_basis: torch.Tensor) -> torch.Tensor:
    """Subspace affinity (paper Eq. 5): ‖V̂ᵀ V_d‖²_F / r_d ∈ [0, 1], r_d = columns of data_basis."""
    r_d = data_basis.shape[-1]
    if r_d == 0:
        raise ValueError("affinity needs a data basis with at least one column")
    overlap = vector_basis.mT @ data_basis
    return overlap.pow(2).sum(dim=(-2, -1)) / r_d


def random_affinity_baseline(r_v: int, d_in: int) -> float:
    """Expected affinity of a uniformly random r_v-dimensional subspace: r_v / d_in."""
    return min(r_v, d_in) / d_in


def removed_energy(task_vector: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Fraction of ‖τ‖² inside span(basis): ‖τ V‖²_F / ‖τ‖²_F (0 for a zero τ)."""
    inside = (task_vector @ basis).pow(2).sum(dim=(-2, -1))
    total = task_vector.pow(2).sum(dim=(-2, -1))
    return torch.where(total > 0, inside / total.clamp_min(torch.finfo(total.dtype).tiny), 0.0)
