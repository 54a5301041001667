"""Iso-C, TSV-M and KnOTS-TIES against plain NumPy versions written from their papers, every step.

Each reference takes θ0, the merger's own θ̄_{t−1} and θt, and builds θ̄t in float64 with explicit
matrices, so a wrong step shows at the step it happens. Task vectors are full rank: for rank-
deficient ones the singular vectors of zero singular values are arbitrary.
"""

import numpy as np
import pytest
import torch

from nufilt.merge import make_merger
from nufilt.methods.iso_c import isotropic_sum
from nufilt.methods.tsv_m import task_singular_merge
from tests.factories import synthetic_tasks, tiny_clip_state

LINEAR = ("q_proj.weight", "k_proj.weight", "v_proj.weight", "out_proj.weight", "fc1.weight", "fc2.weight")


@pytest.fixture(scope="module")
def zoo():
    pretrained = tiny_clip_state(seed=21)
    return pretrained, synthetic_tasks(pretrained, 4, seed=22, rank=1000)


def _np(tensor: torch.Tensor) -> np.ndarray:
    return tensor.double().numpy()


def _iso_c(previous: np.ndarray, task_vector: np.ndarray) -> np.ndarray:
    """Iso-C (Marczak et al. 2025): Δ = Σ τ = U Σ Vᵀ, Δ_Iso = σ̄ U Vᵀ with σ̄ the mean singular value."""
    u, s, vt = np.linalg.svd(previous + task_vector, full_matrices=False)
    return s.mean() * u @ vt


def _polar(matrix: np.ndarray) -> np.ndarray:
    """Orthonormal-column factor of a full-column-rank matrix: M (MᵀM)^(-1/2)."""
    values, vectors = np.linalg.eigh(matrix.T @ matrix)
    return matrix @ vectors @ np.diag(values**-0.5) @ vectors.T


def _tsv_m(previous: np.ndarray, task_vector: np.ndarray) -> np.ndarray:
    """TSV-M (Gargiulo et al. 2025) for two tasks: each keeps 1/2 of its singular triplets."""
    k = min(previous.shape) // 2
    parts = [np.linalg.svd(m, full_matrices=False) for m in (previous, task_vector)]
    u = np.hstack([p[0][:, :k] for p in parts])
    s = np.concatenate([p[1][:k] for p in parts])
    v = np.hstack([p[2][:k].T for p in parts])
    return _polar(u) @ np.diag(s) @ _polar(v).T


def _ties_sum(blocks: list[np.ndarray], top_k: float) -> np.ndarray:
    """TIES (Yadav et al. 2023) with the sum merge: trim each to its top-k%, elect signs, add agreeing."""
    trimmed = []
    for block in blocks:
        keep = int(np.ceil(block.size * top_k / 100))
        threshold = np.sort(np.abs(block).ravel())[::-1][keep - 1]
        trimmed.append(np.where(np.abs(block) >= threshold, block, 0.0))
    stacked = np.stack(trimmed)
    sign = np.sign(stacked.sum(axis=0))
    agree = (np.sign(stacked) == sign) & (stacked != 0)
    return (stacked * agree).sum(axis=0)


def _knots_ties(previous: np.ndarray, task_vector: np.ndarray) -> np.ndarray:
    """KnOTS (Stoica et al. 2025): [τ̄, τt] = U S [V1ᵀ V2ᵀ], TIES on V1ᵀ, V2ᵀ, back through U S."""
    d_in = previous.shape[1]
    u, s, vt = np.linalg.svd(np.hstack([previous, task_vector]), full_matrices=False)
    kept = s > 1e-4
    u, s, vt = u[:, kept], s[kept], vt[kept]
    return u @ np.diag(s) @ _ties_sum([vt[:, :d_in], vt[:, d_in:]], 20.0)


def _pair_reference(rule, scale: float, step: int, base, merged, task) -> np.ndarray:
    """θ̄t = θ0 + λ·merge(τ̄_{t−1}, τt); θ̄1 = θ0 + λτ1; non-matrix parameters take the mean."""
    if not base.is_floating_point():
        return base.numpy()
    theta0, previous, task_vector = _np(base), _np(merged) - _np(base), _np(task) - _np(base)
    if step == 1:
        return theta0 + scale * task_vector
    if base.ndim == 2:
        return theta0 + scale * rule(previous, task_vector)
    return theta0 + scale * (previous + task_vector) / 2


# float32 SVDs: TSV-M's Procrustes step amplifies their rounding to a few 1e-6 by step 4 (values ~0.1)
@pytest.mark.parametrize("method,rule,atol", [("iso_c", _iso_c, 2e-6), ("tsv_m", _tsv_m, 2e-5)])
def test_pair_methods_match_their_paper_at_every_step(zoo, method, rule, atol):
    pretrained, tasks = zoo
    merger = make_merger(method, pretrained)
    assert merger.selected == {k for k, v in pretrained.items() if v.is_floating_point()}
    merged = pretrained
    for step, task in enumerate(tasks, start=1):
        new = merger.add(task)
        for key in pretrained:
            expected = _pair_reference(rule, 1.0, step, pretrained[key], merged[key], task[key])
            np.testing.assert_allclose(_np(new[key]) if new[key].is_floating_point() else new[key].numpy(),
                                       expected, atol=atol, rtol=1e-5, err_msg=f"{method} step {step} {key}")
        merged = new


def test_knots_ties_matches_its_paper_at_every_step(zoo):
    pretrained, tasks = zoo
    merger = make_merger("knots_ties", pretrained)
    assert merger.selected == {k for k in pretrained if k.endswith(LINEAR)}
    merged = pretrained
    for step, task in enumerate(tasks, start=1):
        new = merger.add(task)
        for key in pretrained:
            if not key.endswith(LINEAR):
                assert torch.equal(new[key], pretrained[key]), key
                continue
            base, previous, task_vector = _np(pretrained[key]), _np(merged[key]), _np(task[key]) - _np(pretrained[key])
            if step == 1:
                expected = base + 0.1 * task_vector
            else:
                expected = previous + 0.1 * _knots_ties(previous - base, task_vector)
            np.testing.assert_allclose(_np(new[key]), expected, atol=2e-6, rtol=1e-5, err_msg=f"step {step} {key}")
        merged = new


def test_knots_ties_can_add_to_the_pretrained_model_instead(zoo):
    pretrained, tasks = zoo
    merger = make_merger("knots_ties", pretrained, add_to="pretrained", scale=0.5)
    first = merger.add(tasks[0])
    second = merger.add(tasks[1])
    for key in merger.selected:
        base = _np(pretrained[key])
        expected = base + 0.5 * _knots_ties(_np(first[key]) - base, _np(tasks[1][key]) - base)
        np.testing.assert_allclose(_np(second[key]), expected, atol=2e-6, rtol=1e-5)


def test_tsv_m_of_one_matrix_with_too_few_singular_values_is_zero():
    row = torch.randn(1, 6)
    assert torch.equal(task_singular_merge([row, row.clone()]), torch.zeros(1, 6))


def test_iso_c_flattens_the_spectrum_of_the_sum():
    generator = torch.Generator().manual_seed(0)
    previous, task_vector = torch.randn(12, 8, generator=generator), torch.randn(12, 8, generator=generator)
    values = torch.linalg.svdvals(isotropic_sum(previous, task_vector))
    expected = torch.linalg.svdvals(previous + task_vector).mean()
    torch.testing.assert_close(values, expected.expand(8), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "method,option,value,error",
    [
        ("iso_c", "scale", float("nan"), TypeError),
        ("tsv_m", "scale", "1", TypeError),
        ("knots_ties", "top_k", 0.0, ValueError),
        ("knots_ties", "merge", "max", ValueError),
        ("knots_ties", "add_to", "base", ValueError),
        ("knots_ties", "rank_tol", -1.0, ValueError),
    ],
)
def test_bad_options_name_the_option(zoo, method, option, value, error):
    with pytest.raises(error, match=option):
        make_merger(method, zoo[0], **{option: value})
