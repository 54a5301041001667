"""Subspace geometry: right singular bases, null-space projectors, principal angles, affinity.

Matrices follow the paper's layout, `W ∈ R^{d_out × d_in}` acting on inputs from the right, so
the "input subspace" of a task vector is spanned by its right singular vectors. Every function
accepts a single matrix or a batch (`(..., d_out, d_in)`).
"""

from __future__ import annotations

import torch

SVD_SOLVERS = ("auto", "exact", "lowrank")


def numerical_rank_mask(singular_values: torch.Tensor, size: int) -> torch.Tensor:
    """True for singular values above round-off, σ > σ_max · size · eps, per matrix.

    `size` is the larger matrix dimension; σ_max is the first (largest) value of each row.
    """
    eps = torch.finfo(singular_values.dtype).eps
    top = singular_values[..., :1]
    return singular_values > top * eps * size


def default_oversample(k: int) -> int:
    """Extra sketch columns: with k/2 (at least 32) and 3 power iterations, the randomized top-128
    subspace of a 768-wide matrix with a 1/i spectrum changes NUFILT's objective by < 0.1%."""
    return max(32, k // 2)


def top_right_singular_vectors(
    matrix: torch.Tensor,
    k: int,
    solver: str = "exact",
    oversample: int | None = None,
    power_iters: int = 3,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The top-`k` right singular vectors `V` (`(..., d_in, k)`) and their singular values.

    `k` must not exceed `min(d_out, d_in)`. Columns whose singular value is numerically zero (a
    rank-deficient input, e.g. an all-zero task vector) are returned as zero columns, so a
    projector built from `V` never removes arbitrary directions. `solver="exact"` is a thin SVD;
    "lowrank" a seeded randomized subspace iteration that needs only matrix products; "auto"
    picks "lowrank" when the sketch is less than half the matrix's rank, else "exact".
    """
    d_out, d_in = matrix.shape[-2:]
    if not 0 <= k <= min(d_out, d_in):
        raise ValueError(f"rank {k} outside [0, {min(d_out, d_in)}] for a {d_out}x{d_in} matrix")
    if solver not in SVD_SOLVERS:
        raise ValueError(f"unknown SVD solver {solver!r}; use one of {SVD_SOLVERS}")
    if k == 0:
        empty = matrix.new_zeros(*matrix.shape[:-2], d_in, 0)
        return empty, matrix.new_zeros(*matrix.shape[:-2], 0)
    width = k + (default_oversample(k) if oversample is None else oversample)
    if solver == "auto":
        solver = "lowrank" if 2 * width <= min(d_out, d_in) else "exact"
    if solver == "exact" or width >= min(d_out, d_in):
        _, values, vh = torch.linalg.svd(matrix, full_matrices=False)
        basis, values = vh[..., :k, :].mT, values[..., :k]
    else:
        basis, values = _randomized_right_basis(matrix, k, width, power_iters, seed)
    mask = numerical_rank_mask(values, max(d_out, d_in))
    return basis * mask.unsqueeze(-2).to(basis.dtype), values * mask


def _randomized_right_basis(
    matrix: torch.Tensor, k: int, width: int, power_iters: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Randomized subspace iteration on MᵀM (Halko et al.) with a Rayleigh-Ritz finish.

    Tall matrices form the Gram matrix MᵀM once (cheaper than two products per iteration).
    """
    d_out, d_in = matrix.shape[-2:]
    if d_out > d_in:
        gram = matrix.mT @ matrix  # (..., d_in, d_in)

        def apply(q: torch.Tensor) -> torch.Tensor:
            return gram @ q
    else:

        def apply(q: torch.Tensor) -> torch.Tensor:
            return matrix.mT @ (matrix @ q)

    generator = torch.Generator(device="cpu").manual_seed(seed)
    sketch = torch.randn(*matrix.shape[:-2], d_in, width, generator=generator)
    q = torch.linalg.qr(apply(sketch.to(device=matrix.device, dtype=matrix.dtype))).Q  # (..., d_in, width)
    for _ in range(power_iters):
        q = torch.linalg.qr(apply(q)).Q
    # Rayleigh-Ritz in float64: eigenpairs of Qᵀ MᵀM Q give σ² and the rotation inside span(Q)
    small = (q.mT @ apply(q)).double()
    small = (small + small.mT) / 2
    eigenvalues, rotation = torch.linalg.eigh(small)  # ascending
    order = torch.arange(width - 1, width - 1 - k, -1, device=matrix.device)
    values = eigenvalues[..., order].clamp_min(0).sqrt().to(matrix.dtype)
    basis = q @ rotation[..., order].to(matrix.dtype)
    return basis, values


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


def removed_energy(task_vector: torch.Tensor, basis: torch.Tensor, product: torch.Tensor | None = None) -> torch.Tensor:
    """Fraction of ‖τ‖² inside span(basis): ‖τ V‖²_F / ‖τ‖²_F (0 for a zero τ); `product` = τ V
    when the caller already has it."""
    inside = (task_vector @ basis if product is None else product).pow(2).sum(dim=(-2, -1))
    total = task_vector.pow(2).sum(dim=(-2, -1))
    return torch.where(total > 0, inside / total.clamp_min(torch.finfo(total.dtype).tiny), 0.0)
