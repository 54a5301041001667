"""WUDI: the objective decreases, zero steps give the plain sum, other parameters average."""

import pytest
import torch

from nufilt.merge import continual_merge, make_merger
from nufilt.methods.wudi import wudi_solve
from tests.factories import synthetic_tasks, tiny_clip_state


def _objective(merged, targets):
    return sum(((merged - t) @ t.T).pow(2).sum() / t.pow(2).sum() for t in targets)


def test_solver_lowers_the_interference_objective():
    generator = torch.Generator().manual_seed(0)
    previous = torch.randn(1, 10, 6, generator=generator)
    task_vector = torch.randn(1, 10, 6, generator=generator)
    solved, history = wudi_solve(previous, task_vector, steps=200, lr=1e-2)
    start = _objective(previous[0] + task_vector[0], [previous[0], task_vector[0]])
    end = _objective(solved[0], [previous[0], task_vector[0]])
    assert float(end) < 0.5 * float(start)
    assert history.shape == (200, 1) and float(history[-1, 0]) < float(history[0, 0])


def test_zero_steps_is_the_sum_and_other_parameters_average():
    pretrained = tiny_clip_state(seed=9)
    tasks = synthetic_tasks(pretrained, 2, seed=10)
    merger = make_merger("wudi", pretrained, steps=0)
    first = merger.add(tasks[0])
    second = merger.add(tasks[1])
    for key in pretrained:
        torch.testing.assert_close(first[key], tasks[0][key])
        tau1, tau2 = tasks[0][key] - pretrained[key], tasks[1][key] - pretrained[key]
        expected = pretrained[key] + (tau1 + tau2 if key in merger.selected else (tau1 + tau2) / 2)
        torch.testing.assert_close(second[key], expected, atol=1e-6, rtol=1e-5)


def test_default_layers_are_every_linear_weight():
    pretrained = tiny_clip_state(seed=9)
    merger = make_merger("wudi", pretrained)
    assert all(pretrained[k].ndim == 2 for k in merger.selected)
    assert "encoder.layers.0.mlp.fc2.weight" in merger.selected
    assert "embeddings.position_embedding.weight" not in merger.selected
    merged = list(continual_merge(pretrained, synthetic_tasks(pretrained, 2, seed=3), "wudi", steps=3))
    assert len(merged) == 2


@pytest.mark.parametrize("shape", [(10, 6), (6, 10)])
def test_solver_matches_adam_with_autograd(shape):
    generator = torch.Generator().manual_seed(1)
    previous = torch.randn(2, *shape, generator=generator, dtype=torch.float64)
    task_vector = torch.randn(2, *shape, generator=generator, dtype=torch.float64)
    solved, history = wudi_solve(previous, task_vector, steps=15, lr=1e-2)
    merged = (previous + task_vector).clone().requires_grad_(True)
    optimizer = torch.optim.Adam([merged], lr=1e-2)
    losses = []
    for _ in range(15):
        optimizer.zero_grad()
        loss = sum(
            ((merged - t) @ t.mT).pow(2).sum(dim=(-2, -1)) / t.pow(2).sum(dim=(-2, -1)) for t in (previous, task_vector)
        )
        loss.sum().backward()
        optimizer.step()
        losses.append(loss.detach())
    torch.testing.assert_close(solved, merged.detach())
    torch.testing.assert_close(history, torch.stack(losses))
