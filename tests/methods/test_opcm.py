"""OPCM: projection against a full-SVD reference, split rank, and the norm rescaling."""

import math

import numpy as np
import pytest
import torch

from nufilt.merge import make_merger
from nufilt.methods.opcm import project_out, split_rank
from tests.factories import synthetic_tasks, tiny_clip_state


def _reference_projection(
    previous: np.ndarray, task_vector: np.ndarray, alpha: float, zero_diagonal: bool = True
) -> np.ndarray:
    """ALGORITHMS.md literally: full SVD (square U, V), zero diag (unless not) and top-left k×k block of C."""
    u, s, vt = np.linalg.svd(previous, full_matrices=True)
    share = np.cumsum(s) / s.sum()
    k = int(np.argmax(share > alpha))
    c = u.T @ task_vector @ vt.T
    if zero_diagonal:
        np.fill_diagonal(c, 0.0)
    c[:k, :k] = 0.0
    return u @ c @ vt


@pytest.mark.parametrize("zero_diagonal", [True, False])
@pytest.mark.parametrize("shape", [(12, 7), (7, 12), (9, 9)])
def test_thin_projection_equals_the_full_svd_formula(shape, zero_diagonal):
    generator = np.random.default_rng(0)
    previous, task_vector = generator.normal(size=shape), generator.normal(size=shape)
    ours = project_out(torch.from_numpy(previous), torch.from_numpy(task_vector), 0.5, zero_diagonal).numpy()
    expected = _reference_projection(previous, task_vector, 0.5, zero_diagonal)
    np.testing.assert_allclose(ours, expected, atol=1e-10)
    # keeping the diagonal keeps exactly τ's component along each pair u_i v_iᵀ
    u, _, vt = np.linalg.svd(previous, full_matrices=False)
    along = np.einsum("ij,jk,ki->i", u.T, task_vector, vt.T)
    kept = np.einsum("ij,jk,ki->i", u.T, ours, vt.T)
    k = int(np.argmax(np.cumsum(np.linalg.svd(previous, compute_uv=False)) > 0.5 * np.linalg.norm(previous, "nuc")))
    np.testing.assert_allclose(kept[k:], along[k:] if not zero_diagonal else 0.0, atol=1e-10)


def test_split_rank_is_the_first_index_past_alpha():
    values = torch.tensor([4.0, 3.0, 2.0, 1.0])  # shares 0.4, 0.7, 0.9, 1.0
    assert split_rank(values, 0.5) == 1
    assert split_rank(values, 0.3) == 0
    assert split_rank(values, 0.95) == 3
    assert split_rank(torch.zeros(3), 0.5) == 0


def test_projection_of_a_zero_previous_vector_keeps_the_task_vector():
    task_vector = torch.randn(5, 4)
    torch.testing.assert_close(project_out(torch.zeros(5, 4), task_vector, 0.5), task_vector)


def test_zero_diagonal_must_be_a_bool():
    with pytest.raises(TypeError, match="zero_diagonal"):
        make_merger("opcm", tiny_clip_state(seed=5), zero_diagonal="no")


def test_rescaling_keeps_the_merged_norm_at_the_running_mean_task_norm():
    pretrained = tiny_clip_state(seed=5)
    tasks = synthetic_tasks(pretrained, 5, seed=6)
    merger = make_merger("opcm", pretrained)
    norms = []
    for task in tasks:
        merged = merger.add(task)
        norms.append(math.sqrt(sum(float((task[k] - pretrained[k]).double().pow(2).sum()) for k in pretrained)))
        merged_norm = math.sqrt(sum(float((merged[k] - pretrained[k]).double().pow(2).sum()) for k in pretrained))
        assert merged_norm == pytest.approx(np.mean(norms), rel=1e-5)
        assert merger.report.merged_norm == pytest.approx(merged_norm, rel=1e-6)
    # step 1 is θ1 itself
    first = make_merger("opcm", pretrained).add(tasks[0])
    for key in pretrained:
        torch.testing.assert_close(first[key], tasks[0][key])


@pytest.mark.parametrize("zero_diagonal", [True, False])
def test_opcm_step_two_matches_a_reference_built_from_the_description(zero_diagonal):
    pretrained = tiny_clip_state(seed=7)
    # full-rank task vectors: for rank-deficient ones the singular pairs of zero singular values
    # are arbitrary, and so is the part of τ2 that zeroing the diagonal removes along them
    tasks = synthetic_tasks(pretrained, 2, seed=8, rank=1000)
    merger = make_merger("opcm", pretrained, alpha=0.5, zero_diagonal=zero_diagonal)
    merger.add(tasks[0])
    merged = merger.add(tasks[1])
    sums = {}
    for key in pretrained:
        tau1 = (tasks[0][key] - pretrained[key]).double().numpy()
        tau2 = (tasks[1][key] - pretrained[key]).double().numpy()
        if key in merger.selected:
            tau2 = _reference_projection(tau1, tau2, 0.5, zero_diagonal)
        sums[key] = tau1 + tau2
    norm = lambda vs: math.sqrt(sum(float((v**2).sum()) for v in vs))  # noqa: E731
    mean_norm = (norm([(t[k] - pretrained[k]).double().numpy() for k in pretrained]) for t in tasks)
    scale = np.mean(list(mean_norm)) / norm(sums.values())
    for key in pretrained:
        expected = pretrained[key].double().numpy() + sums[key] * scale
        np.testing.assert_allclose(merged[key].double().numpy(), expected, atol=2e-6)
