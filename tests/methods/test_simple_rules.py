"""Weight averaging, task arithmetic and MagMax on hand-checkable inputs."""

import pytest
import torch

from nufilt.merge import continual_merge, make_merger
from nufilt.methods import paper_options
from tests.factories import synthetic_tasks, tiny_clip_state


def _state(*values):
    return {"layer.weight": torch.tensor([list(values)]), "layer.bias": torch.tensor([0.0])}


def test_weight_averaging_of_identical_models_returns_the_model():
    pretrained = tiny_clip_state()
    task = synthetic_tasks(pretrained, 1)[0]
    copies = [{k: v.clone() for k, v in task.items()} for _ in range(4)]
    merged = list(continual_merge(pretrained, copies, "weight_average", allow_duplicates=True))
    for state in merged:
        for key in task:
            torch.testing.assert_close(state[key], task[key])


def test_weight_averaging_is_the_running_mean_of_all_models():
    pretrained = tiny_clip_state()
    tasks = synthetic_tasks(pretrained, 3)
    merged = list(continual_merge(pretrained, tasks, "weight_average"))[-1]
    for key in pretrained:
        if pretrained[key].is_floating_point():
            torch.testing.assert_close(merged[key], sum(t[key] for t in tasks) / 3)


def test_task_arithmetic_with_scale_one_on_one_task_returns_it():
    pretrained = tiny_clip_state()
    task = synthetic_tasks(pretrained, 1)[0]
    (merged,) = continual_merge(pretrained, [task], "task_arithmetic", scale=1.0)
    for key in task:
        torch.testing.assert_close(merged[key], task[key])


def test_task_arithmetic_adds_scaled_task_vectors_from_the_pretrained_model():
    pretrained = _state(1.0, 1.0)
    tasks = [_state(2.0, 1.0), _state(1.0, 3.0)]
    merged = list(continual_merge(pretrained, tasks, "task_arithmetic", scale=0.5))
    torch.testing.assert_close(merged[0]["layer.weight"], torch.tensor([[1.5, 1.0]]))
    torch.testing.assert_close(merged[1]["layer.weight"], torch.tensor([[1.5, 2.0]]))


def test_paper_options_follow_table_9():
    assert paper_options("task_arithmetic", 8) == {"scale": 0.3}
    assert paper_options("task_arithmetic", 14) == {"scale": 0.1}
    assert paper_options("ties", 20) == {"scale": 0.1}
    assert paper_options("nufilt", 20) == {}
    with pytest.raises(ValueError, match="unknown method"):
        paper_options("averaging", 8)


def test_magmax_keeps_the_larger_magnitude_and_ties_go_to_the_newer_task():
    pretrained = _state(0.0, 0.0, 0.0)
    tasks = [_state(2.0, -1.0, 1.0), _state(-3.0, 0.5, -1.0)]
    merged = list(continual_merge(pretrained, tasks, "magmax", scale=0.5))
    torch.testing.assert_close(merged[0]["layer.weight"], torch.tensor([[1.0, -0.5, 0.5]]))
    # |-3| > |2| -> -3; |0.5| < |-1| -> -1; |-1| == |1| -> newer (-1)
    torch.testing.assert_close(merged[1]["layer.weight"], torch.tensor([[-1.5, -0.5, -0.5]]))


def test_magmax_rejects_a_zero_scale():
    with pytest.raises(ValueError, match="scale must be >"):
        make_merger("magmax", _state(0.0, 0.0), scale=0.0)
