"""Properties of the subspace geometry: projectors, singular bases, principal angles, affinity."""

import math

import numpy as np
import pytest
import torch

import nufilt.subspace as subspace
from nufilt.subspace import (
    affinity,
    float64_basis,
    null_space_projector,
    orthonormalize,
    principal_angles,
    projector,
    random_affinity_baseline,
    removed_energy,
    right_singular_basis,
    top_right_singular_vectors,
)


def _random_basis(d: int, r: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return orthonormalize(torch.randn(d, r, generator=generator, dtype=torch.float64))


@pytest.mark.parametrize("d,r", [(12, 3), (20, 20), (7, 1)])
def test_null_space_projector_is_idempotent_symmetric_and_kills_the_basis(d, r):
    basis = _random_basis(d, r, seed=d + r)
    p = null_space_projector(basis)
    torch.testing.assert_close(p @ p, p)
    torch.testing.assert_close(p, p.T)
    torch.testing.assert_close(p @ basis, torch.zeros_like(basis), atol=1e-12, rtol=0)
    # and keeps everything orthogonal to it: rank d - r
    assert float(torch.trace(p)) == pytest.approx(d - r, abs=1e-9)
    torch.testing.assert_close(projector(basis) + p, torch.eye(d, dtype=torch.float64))


def test_top_right_singular_vectors_match_numpy_svd():
    generator = torch.Generator().manual_seed(0)
    matrix = torch.randn(30, 12, generator=generator, dtype=torch.float64)
    basis, values = top_right_singular_vectors(matrix, 4)
    _, s, vt = np.linalg.svd(matrix.numpy())
    np.testing.assert_allclose(values.numpy(), s[:4], rtol=1e-10)
    # same subspace (signs may differ): projectors agree
    np.testing.assert_allclose(projector(basis).numpy(), vt[:4].T @ vt[:4], atol=1e-10)


def test_batched_singular_vectors_equal_per_matrix_ones():
    generator = torch.Generator().manual_seed(1)
    stack = torch.randn(3, 9, 6, generator=generator, dtype=torch.float64)
    batched, _ = top_right_singular_vectors(stack, 2)
    for i in range(3):
        single, _ = top_right_singular_vectors(stack[i], 2)
        torch.testing.assert_close(projector(batched[i]), projector(single))


def test_rank_deficient_input_gives_zero_columns_not_arbitrary_directions():
    generator = torch.Generator().manual_seed(2)
    low_rank = torch.randn(10, 2, generator=generator) @ torch.randn(2, 8, generator=generator)
    basis, values = top_right_singular_vectors(low_rank, 5)
    assert (values[2:] == 0).all() and (values[:2] > 0).all()
    assert torch.count_nonzero(basis[:, 2:]) == 0
    zero_basis, _ = top_right_singular_vectors(torch.zeros(6, 4), 3)
    assert torch.count_nonzero(zero_basis) == 0
    torch.testing.assert_close(null_space_projector(zero_basis), torch.eye(4))


@pytest.mark.parametrize("shape", [(200, 120), (120, 200)])  # tall: Gram path; wide: two products
def test_lowrank_solver_finds_the_same_subspace_as_the_exact_one(shape):
    generator = torch.Generator().manual_seed(3)
    # a clear spectral gap after 5 directions
    matrix = torch.randn(shape[0], 5, generator=generator) @ torch.randn(5, shape[1], generator=generator)
    matrix += 1e-3 * torch.randn(*shape, generator=generator)
    exact, exact_values = top_right_singular_vectors(matrix, 5, solver="exact")
    approx, approx_values = top_right_singular_vectors(matrix, 5, solver="lowrank")
    torch.testing.assert_close(projector(approx), projector(exact), atol=1e-4, rtol=0)
    torch.testing.assert_close(approx_values, exact_values, rtol=1e-4, atol=0)


def test_lowrank_solver_on_a_decaying_spectrum_without_gap():
    """σ_i = 1/i: no gap at k; the default sketch still captures the top-k subspace closely."""
    generator = torch.Generator().manual_seed(4)
    d, k = 300, 40
    u = torch.linalg.qr(torch.randn(d, d, generator=generator, dtype=torch.float64)).Q
    v = torch.linalg.qr(torch.randn(d, d, generator=generator, dtype=torch.float64)).Q
    matrix = (u / torch.arange(1, d + 1, dtype=torch.float64)) @ v.T
    approx, values = top_right_singular_vectors(matrix, k, solver="lowrank")
    exact, _ = top_right_singular_vectors(matrix, k, solver="exact")
    assert float(affinity(exact, approx)) > 0.98
    torch.testing.assert_close(values[:20], 1 / torch.arange(1, 21, dtype=torch.float64), rtol=1e-3, atol=0)


def _decaying(d_out: int, d_in: int, seed: int, power: float = 1.0) -> torch.Tensor:
    """σ_i = 1/i^power with random singular vectors, float32."""
    generator = torch.Generator().manual_seed(seed)
    u = torch.linalg.qr(torch.randn(d_out, min(d_out, d_in), generator=generator, dtype=torch.float64)).Q
    v = torch.linalg.qr(torch.randn(d_in, min(d_out, d_in), generator=generator, dtype=torch.float64)).Q
    return ((u / torch.arange(1, min(d_out, d_in) + 1, dtype=torch.float64) ** power) @ v.T).float()


@pytest.mark.parametrize("solver", ["auto", "gram"])
@pytest.mark.parametrize("shape", [(300, 200), (200, 200), (150, 260)])  # tall, square, wide
def test_checked_solvers_match_the_float64_svd_on_a_steep_spectrum(solver, shape):
    # σ_1/σ_k = 1600 at k = 40, squared in the Gram matrix: its eigenvectors fail the check and
    # need refining iterations
    matrix = _decaying(*shape, seed=7, power=2.0)
    basis, values, paths = right_singular_basis(matrix, 40, solver)
    exact, exact_values = top_right_singular_vectors(matrix.double(), 40)
    # a float32 thin SVD reaches 1 - 1e-7 here; the check allows 8x its backward error
    assert float(affinity(exact, basis.double())) > 1 - 2e-5
    torch.testing.assert_close(values.double(), exact_values, rtol=1e-3, atol=0)
    assert len(paths) == 1 and paths[0].startswith("gram+")


def test_flat_spectrum_that_the_sketch_cannot_resolve_falls_back_and_says_so():
    generator = torch.Generator().manual_seed(8)
    matrix = torch.randn(2, 400, 400, generator=generator)  # i.i.d.: a flat (Marchenko-Pastur) spectrum
    randomized, _, paths = right_singular_basis(matrix, 8, "lowrank")
    checked, _, checked_paths = right_singular_basis(matrix, 8, "auto")
    exact, _ = top_right_singular_vectors(matrix.double(), 8)
    assert paths == ["lowrank", "lowrank"] and float(affinity(exact[0], randomized[0].double())) < 0.99
    assert all(path != "lowrank" for path in checked_paths)  # the unrefined sketch failed the check
    for i in range(2):
        assert float(affinity(exact[i], checked[i].double())) > 1 - 1e-4


def test_a_basis_that_never_passes_the_check_is_the_thin_svd(monkeypatch):
    monkeypatch.setattr(subspace, "RESIDUAL_TOL", 0.0)
    matrix = _decaying(120, 90, seed=9, power=0.5)
    basis, values, paths = right_singular_basis(torch.stack([matrix, 2 * matrix]), 10, "auto")
    _, exact_values, vh = torch.linalg.svd(matrix, full_matrices=False)
    assert paths == ["exact", "exact"]
    torch.testing.assert_close(values[0], exact_values[:10])
    torch.testing.assert_close(projector(basis[1]), projector(vh[:10].T), atol=1e-5, rtol=0)


def test_checked_batches_keep_each_matrix_its_own_path_and_result():
    flat = torch.randn(400, 400, generator=torch.Generator().manual_seed(10))
    steep = _decaying(400, 400, seed=11)
    batched, values, paths = right_singular_basis(torch.stack([flat, steep, flat]), 8, "auto")
    for i, matrix in enumerate((flat, steep, flat)):
        single, single_values, single_path = right_singular_basis(matrix, 8, "auto")
        assert single_path == [paths[i]]
        torch.testing.assert_close(projector(batched[i]), projector(single), atol=1e-5, rtol=0)
        torch.testing.assert_close(values[i], single_values)
    # columns are orthonormal
    gram = batched.mT @ batched
    torch.testing.assert_close(gram, torch.eye(8).expand_as(gram), atol=1e-5, rtol=0)


@pytest.mark.parametrize("solver", ["auto", "gram"])
def test_checked_solvers_drop_round_off_directions_of_rank_deficient_inputs(solver):
    generator = torch.Generator().manual_seed(12)
    low_rank = torch.randn(300, 3, generator=generator) @ torch.randn(3, 200, generator=generator)
    basis, values, _ = right_singular_basis(torch.stack([low_rank, torch.zeros(300, 200)]), 40, solver)
    assert (values[0, 3:] == 0).all() and (values[0, :3] > 0).all()
    assert torch.count_nonzero(basis[0, :, 3:]) == 0 and torch.count_nonzero(basis[1]) == 0
    exact, _ = top_right_singular_vectors(low_rank.double(), 3)
    assert float(affinity(exact, basis[0, :, :3].double())) > 1 - 1e-6


@pytest.mark.parametrize("solver", ["auto", "gram", "lowrank"])
def test_a_given_gram_matrix_is_used_as_it_is(solver):
    matrix = _decaying(300, 200, seed=13, power=0.5)
    own = right_singular_basis(matrix, 20, solver)
    given = right_singular_basis(matrix, 20, solver, gram=matrix.mT @ matrix)
    torch.testing.assert_close(given.basis, own.basis)
    torch.testing.assert_close(given.values, own.values)
    # a wrong Gram matrix is really used: the unchecked sketch goes wrong, the checked solvers
    # catch the bad start and still return the right basis
    wrong = right_singular_basis(matrix, 20, solver, gram=torch.eye(200))
    if solver == "lowrank":
        assert not torch.allclose(projector(wrong.basis), projector(own.basis), atol=1e-3)
    else:
        assert wrong.solvers != own.solvers
        torch.testing.assert_close(projector(wrong.basis), projector(own.basis), atol=1e-4, rtol=0)


def test_rank_out_of_range_and_unknown_solver_are_rejected():
    with pytest.raises(ValueError, match="rank 7 outside"):
        top_right_singular_vectors(torch.randn(4, 6), 7)
    with pytest.raises(ValueError, match="unknown SVD solver"):
        top_right_singular_vectors(torch.randn(4, 6), 2, solver="magic")


def test_principal_angles_zero_for_same_span_and_right_angle_for_orthogonal():
    basis = _random_basis(10, 3, seed=4)
    rotated = basis @ orthonormalize(torch.randn(3, 3, dtype=torch.float64))
    torch.testing.assert_close(principal_angles(basis, rotated), torch.zeros(3, dtype=torch.float64), atol=1e-6, rtol=0)
    eye = torch.eye(6, dtype=torch.float64)
    angles = principal_angles(eye[:, :2], eye[:, 2:4])
    torch.testing.assert_close(angles, torch.full((2,), math.pi / 2, dtype=torch.float64))


def test_affinity_is_one_for_identical_zero_for_orthogonal_and_in_unit_interval():
    basis = _random_basis(16, 4, seed=5)
    assert float(affinity(basis, basis)) == pytest.approx(1.0)
    eye = torch.eye(16, dtype=torch.float64)
    assert float(affinity(eye[:, :4], eye[:, 4:12])) == 0.0
    for seed in range(10):
        value = float(affinity(_random_basis(16, 2, seed), _random_basis(16, 5, seed + 100)))
        assert 0.0 <= value <= 1.0
    # r_d <= r_v: a data subspace inside the vector subspace scores 1
    assert float(affinity(eye[:, :2], eye[:, :5])) == pytest.approx(1.0)


def test_random_subspaces_score_the_random_baseline_on_average():
    d, r_v, r_d = 64, 8, 4
    values = [float(affinity(_random_basis(d, r_d, s), _random_basis(d, r_v, 1000 + s))) for s in range(200)]
    assert np.mean(values) == pytest.approx(random_affinity_baseline(r_v, d), rel=0.1)


def test_affinity_of_task_vector_built_from_data_is_one():
    generator = torch.Generator().manual_seed(6)
    data = torch.randn(50, 3, generator=generator) @ torch.randn(3, 20, generator=generator)  # H, rank 3
    task_vector = torch.randn(15, 50, generator=generator) @ data  # τ = B H
    data_basis, _ = top_right_singular_vectors(data, 3)
    vector_basis, _ = top_right_singular_vectors(task_vector, 3)
    assert float(affinity(data_basis, vector_basis)) == pytest.approx(1.0, abs=1e-5)


def test_removed_energy_is_the_share_of_the_norm_inside_the_basis():
    eye = torch.eye(4)
    task_vector = torch.tensor([[3.0, 4.0, 0.0, 0.0]])
    assert float(removed_energy(task_vector, eye[:, :1])) == pytest.approx(9 / 25)
    assert float(removed_energy(torch.zeros(2, 4), eye[:, :1])) == 0.0


def test_float64_basis_keeps_the_span_and_the_zero_columns():
    g = torch.Generator().manual_seed(5)
    exact = torch.linalg.qr(torch.randn(3, 40, 6, generator=g, dtype=torch.float64)).Q
    exact[1, :, 4:] = 0  # a rank-deficient matrix's basis: trailing zero columns
    low = exact.float()
    basis = float64_basis(low)
    assert basis.dtype == torch.float64
    assert (basis[1, :, 4:] == 0).all()
    gram = basis.mT @ basis
    expected_gram = torch.diag_embed((exact.norm(dim=-2) > 0.5).double())
    assert (gram - expected_gram).abs().max() < 1e-14  # orthonormal to float64 round-off
    assert ((basis @ basis.mT) - (exact @ exact.mT)).abs().max() < 1e-6  # the same span
    assert float64_basis(exact) is exact
