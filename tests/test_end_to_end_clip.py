"""End to end on a real tiny `transformers.CLIPVisionModel`: merge, reload, and the paper's effect.

Each synthetic task t owns a random input subspace H_t per selected layer and its task vector is
τt = B_t H_tᵀ (Theorem 1's T0 = B H). Inputs of task t lie in span(H_t). The null-space filter
must then keep earlier tasks' layer responses, where the plain sum interferes.
"""

import pytest
import torch
from transformers import CLIPVisionModel

from nufilt.merge import continual_merge, make_merger
from tests.factories import tiny_clip_config, tiny_clip_state

RANK = 3


def _subspace_tasks(pretrained, selected, n_tasks, seed):
    generator = torch.Generator().manual_seed(seed)
    tasks, inputs = [], []
    for _ in range(n_tasks):
        task, task_inputs = {k: v.clone() for k, v in pretrained.items()}, {}
        for key in selected:
            d_out, d_in = pretrained[key].shape
            h = torch.linalg.qr(torch.randn(d_in, RANK, generator=generator)).Q  # (d_in, r)
            task[key] = pretrained[key] + 0.05 * torch.randn(d_out, RANK, generator=generator) @ h.T
            task_inputs[key] = torch.randn(RANK, 20, generator=generator).T @ h.T  # (20, d_in) in span(H)
        tasks.append(task)
        inputs.append(task_inputs)
    return tasks, inputs


def _stability_error(merged, reference, pretrained, inputs, keys):
    """Σ over layers of ‖(θ̄ − θ_ref) Xᵀ‖²: how far the merged layer moved on a task's inputs."""
    return sum(float(((merged[k] - reference[k]) @ inputs[k].T).pow(2).sum()) for k in keys)


@pytest.fixture(scope="module")
def setting():
    pretrained = tiny_clip_state(seed=21, width=32, layers=2)
    selected = make_merger("nufilt", pretrained).selected
    tasks, inputs = _subspace_tasks(pretrained, sorted(selected), 3, seed=22)
    return pretrained, selected, tasks, inputs


def test_null_space_filter_keeps_the_first_tasks_responses_where_the_sum_interferes(setting):
    pretrained, selected, tasks, inputs = setting
    options = {"r_p": 2 * RANK, "r_v": RANK}
    filtered = list(continual_merge(pretrained, tasks, "nufilt", r_l=0, **options))[-1]
    naive = list(continual_merge(pretrained, tasks, "nufilt", r_l=0, null_space=False, **options))[-1]
    with_lora = list(continual_merge(pretrained, tasks, "nufilt", r_l=4, steps=50, **options))[-1]
    first = {k: tasks[0][k] for k in pretrained}
    error_filtered = _stability_error(filtered, first, pretrained, inputs[0], selected)
    error_naive = _stability_error(naive, first, pretrained, inputs[0], selected)
    error_lora = _stability_error(with_lora, first, pretrained, inputs[0], selected)
    assert error_naive > 0
    assert error_filtered < 1e-6 * error_naive
    assert error_lora < 0.1 * error_naive


def test_nufilt_keeps_more_of_the_last_task_than_the_filter_alone(setting):
    pretrained, selected, tasks, inputs = setting
    options = {"r_p": 3 * RANK, "r_v": RANK}  # r_p larger than one task's subspace: the filter overreaches
    only_filter = list(continual_merge(pretrained, tasks, "nufilt", r_l=0, **options))[-1]
    adapted = list(continual_merge(pretrained, tasks, "nufilt", r_l=8, steps=200, lr=1e-2, **options))[-1]

    def plasticity(merged):  # distance to the last task model on the last task's inputs
        return sum(float(((merged[k] - tasks[-1][k]) @ inputs[-1][k].T).pow(2).sum()) for k in selected)

    assert plasticity(adapted) < plasticity(only_filter)


@pytest.mark.parametrize("method", ["weight_average", "task_arithmetic", "ties", "magmax", "opcm", "wudi", "nufilt"])
def test_merged_state_loads_into_clip_and_runs(setting, method):
    pretrained, _, tasks, _ = setting
    options = {"r_p": 6, "r_l": 4, "steps": 10} if method == "nufilt" else {}
    merged = list(continual_merge(pretrained, tasks, method, **options))[-1]
    model = CLIPVisionModel(tiny_clip_config(32, 2)).eval()
    model.load_state_dict(merged, strict=True)
    pixels = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(pixel_values=pixels).pooler_output
    assert out.shape == (2, 32) and torch.isfinite(out).all()
