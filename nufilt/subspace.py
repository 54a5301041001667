"""Subspace geometry: right singular bases, null-space projectors, principal angles, affinity.

Matrices follow the paper's layout, `W ∈ R^{d_out × d_in}` acting on inputs from the right, so
the "input subspace" of a task vector is spanned by its right singular vectors. Every function
accepts a single matrix or a batch (`(..., d_out, d_in)`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

SVD_SOLVERS = ("auto", "exact", "gram", "lowrank")
# a basis passes the a-posteriori check when every kept triple (u, σ, v) has
# ‖Mᵀu − σv‖ ≤ RESIDUAL_TOL · eps · √max(d_out, d_in) · σ_1: the backward error of a float32 thin
# SVD times a small margin (a full SVD measures 1-4 eps·√d on the bench spectra)
RESIDUAL_TOL = 8.0
REFINE_ITERS = 4  # two-sided subspace iterations tried on a failing basis before the thin SVD


class RightBasis(NamedTuple):
    """Top-k right singular vectors (..., d_in, k), their singular values (..., k), and per matrix
    the path that produced them: "exact" (thin SVD), "lowrank" (unchecked on solver="lowrank"),
    or the checked start that passed, "gram" / "lowrank", with "+<n>" for n refining iterations."""

    basis: torch.Tensor
    values: torch.Tensor
    solvers: list[str]


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
    projector built from `V` never removes arbitrary directions. See `right_singular_basis` for
    the solvers.
    """
    basis, values, _ = right_singular_basis(matrix, k, solver, oversample, power_iters, seed)
    return basis, values


def right_singular_basis(
    matrix: torch.Tensor,
    k: int,
    solver: str = "exact",
    oversample: int | None = None,
    power_iters: int = 3,
    seed: int = 0,
    gram: torch.Tensor | None = None,
) -> RightBasis:
    """`top_right_singular_vectors` plus the path each matrix took.

    "exact": thin SVD. "lowrank": seeded randomized subspace iteration, unchecked. "gram": the
    top `k + oversample` eigenvectors of the Gram matrix (d x d on the smaller side; one batched
    eigh instead of an SVD) as the subspace of a Rayleigh-Ritz step with the matrix itself, so the
    values are accurate to the matrix's (not the Gram's) round-off. "auto": "lowrank" when the
    sketch is at most an eighth of the matrix's rank, else "gram"; either way every matrix is
    checked a posteriori (residual of each kept singular triple, `RESIDUAL_TOL`), failing ones get
    up to `REFINE_ITERS` two-sided subspace iterations, a randomized start that still fails is
    redone from the Gram eigenvectors, and what fails those too gets the thin SVD. "gram" is
    checked the same way. The returned paths say which of these each matrix needed. `gram`: MᵀM
    when the caller has it (the starts then skip forming it; ignored for wide matrices).
    """
    d_out, d_in = matrix.shape[-2:]
    if not 0 <= k <= min(d_out, d_in):
        raise ValueError(f"rank {k} outside [0, {min(d_out, d_in)}] for a {d_out}x{d_in} matrix")
    if solver not in SVD_SOLVERS:
        raise ValueError(f"unknown SVD solver {solver!r}; use one of {SVD_SOLVERS}")
    count = matrix[..., 0, 0].numel()
    gram = None if d_out < d_in else gram
    if k == 0:
        empty = matrix.new_zeros(*matrix.shape[:-2], d_in, 0)
        return RightBasis(empty, matrix.new_zeros(*matrix.shape[:-2], 0), ["exact"] * count)
    width = min(k + (default_oversample(k) if oversample is None else oversample), min(d_out, d_in))
    if solver == "exact" or width >= min(d_out, d_in):
        _, values, vh = torch.linalg.svd(matrix, full_matrices=False)
        basis, values, solvers = vh[..., :k, :].mT, values[..., :k], ["exact"] * count
    elif solver == "lowrank":
        basis, values = _randomized_right_basis(matrix, k, width, power_iters, seed, gram)
        solvers = ["lowrank"] * count
    else:
        start = "lowrank" if solver == "auto" and 8 * width <= min(d_out, d_in) else "gram"
        flat = matrix.reshape(count, d_out, d_in)
        flat_gram = None if gram is None else gram.reshape(count, d_in, d_in)
        basis, values, solvers = _checked_basis(flat, k, width, start, power_iters, seed, flat_gram)
        basis, values = basis.reshape(*matrix.shape[:-2], d_in, k), values.reshape(*matrix.shape[:-2], k)
    mask = numerical_rank_mask(values, max(d_out, d_in))
    return RightBasis(basis * mask.unsqueeze(-2).to(basis.dtype), values * mask, solvers)


def _randomized_range(
    matrix: torch.Tensor, width: int, power_iters: int, seed: int, gram: torch.Tensor | None = None
) -> tuple[torch.Tensor, Callable]:
    """An orthonormal (..., d_in, width) basis from a seeded sketch after `power_iters` subspace
    iterations on MᵀM (Halko et al.), and the map q -> MᵀM q it used. Tall matrices form MᵀM
    once (cheaper than two products per iteration); a given `gram` is used as it is."""
    d_out, d_in = matrix.shape[-2:]
    if d_out > d_in or gram is not None:
        gram = matrix.mT @ matrix if gram is None else gram  # (..., d_in, d_in)

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
    return q, apply


def _randomized_right_basis(
    matrix: torch.Tensor, k: int, width: int, power_iters: int, seed: int, gram: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """`_randomized_range` with a Rayleigh-Ritz finish on MᵀM in float64; unchecked."""
    q, apply = _randomized_range(matrix, width, power_iters, seed, gram)
    # eigenpairs of Qᵀ MᵀM Q give σ² and the rotation inside span(Q)
    small = (q.mT @ apply(q)).double()
    small = (small + small.mT) / 2
    eigenvalues, rotation = torch.linalg.eigh(small)  # ascending
    order = torch.arange(width - 1, width - 1 - k, -1, device=matrix.device)
    values = eigenvalues[..., order].clamp_min(0).sqrt().to(matrix.dtype)
    basis = q @ rotation[..., order].to(matrix.dtype)
    return basis, values


def _gram_range(matrix: torch.Tensor, width: int, gram: torch.Tensor | None = None) -> torch.Tensor:
    """The top-`width` eigenvectors of the Gram matrix on the smaller side (one batched eigh), as
    an orthonormal (L, d_in, width) basis of the input space. Squaring costs accuracy only in the
    small directions; the Rayleigh-Ritz step and check in `_checked_basis` deal with that."""
    d_out, d_in = matrix.shape[-2:]
    if d_out >= d_in:
        gram = matrix.mT @ matrix if gram is None else gram
        return torch.linalg.eigh(gram).eigenvectors[..., -width:].flip(-1)
    left = torch.linalg.eigh(matrix @ matrix.mT).eigenvectors[..., -width:]  # (L, d_out, width)
    return torch.linalg.qr(matrix.mT @ left).Q


def _checked_basis(
    matrix: torch.Tensor, k: int, width: int, start: str, power_iters: int, seed: int, gram: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Rayleigh-Ritz on a start subspace, checked per matrix and refined; a randomized start that
    still fails is retried from the Gram eigenvectors, and what fails those gets the thin SVD.

    matrix: (L, d_out, d_in). Each round, B = M Q = U_B S W_Bᵀ gives the triples (U_B, S, Q W_B);
    M v_i = σ_i u_i holds by construction, so the check is the other side, ‖Mᵀu_i − σ_i v_i‖, on
    the kept columns. Failing matrices go on with Q ← orth(Mᵀ U_B): one two-sided iteration.
    gram: (L, d_in, d_in) MᵀM, or None.
    """
    d_out, d_in = matrix.shape[-2:]
    count = matrix.shape[0]
    limit = RESIDUAL_TOL * torch.finfo(matrix.dtype).eps * max(d_out, d_in) ** 0.5
    basis, values = matrix.new_zeros(count, d_in, k), matrix.new_zeros(count, k)
    solvers = ["exact"] * count
    todo, current = torch.arange(count, device=matrix.device), matrix
    for source in ("lowrank", "gram") if start == "lowrank" else ("gram",):
        if source == "gram":
            q = _gram_range(current, width, gram)
        else:
            q = _randomized_range(current, width, power_iters, seed, gram)[0]
        for refined in range(REFINE_ITERS + 1):
            left, spectrum, rotation = torch.linalg.svd(current @ q, full_matrices=False)  # U_B, S, W_Bᵀ
            trial = q @ rotation[..., :k, :].mT  # (n, d_in, k)
            kept = numerical_rank_mask(spectrum[..., :k], max(d_out, d_in))
            residual = (current.mT @ left[..., :k] - trial * spectrum[..., None, :k]).norm(dim=-2)  # (n, k)
            passed = (residual * kept <= limit * spectrum[..., :1]).all(dim=-1)
            done = todo[passed]
            basis[done], values[done] = trial[passed], spectrum[passed, :k]
            for index in done.tolist():
                solvers[index] = source if refined == 0 else f"{source}+{refined}"
            todo, current = todo[~passed], current[~passed]
            gram = None if gram is None else gram[~passed]
            if todo.numel() == 0:
                return basis, values, solvers
            if refined < REFINE_ITERS:
                q = torch.linalg.qr(current.mT @ left[~passed]).Q
    _, spectrum, vh = torch.linalg.svd(current, full_matrices=False)
    basis[todo], values[todo] = vh[..., :k, :].mT, spectrum[..., :k]
    return basis, values, solvers


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


def float64_basis(basis: torch.Tensor) -> torch.Tensor:
    """A basis computed in lower precision as an orthonormal float64 basis of the same span
    (QR), its zero columns (numerically zero directions, trailing) kept zero: overlaps and
    affinities computed from it then stay within [0, 1] to float64 round-off."""
    if basis.dtype == torch.float64:
        return basis
    basis = basis.double()
    kept = basis.norm(dim=-2, keepdim=True) > 0.5  # unit or zero columns
    return orthonormalize(basis) * kept


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
