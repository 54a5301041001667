"""Merging through safetensors files on disk: SpillState and the merger's spill_dir option."""

import math

import pytest
import torch
from safetensors import safe_open

from nufilt.merge import continual_merge, make_merger
from nufilt.methods import METHODS
from nufilt.spill import SpillState, layout_of
from tests.factories import clone, held_elements, model_elements, synthetic_tasks, tiny_clip_state

FAST = {"nufilt": {"r_p": 8, "r_l": 4, "steps": 5}, "wudi": {"steps": 5}}


def test_spill_state_round_trips_in_any_order_and_is_a_valid_safetensors_file(tmp_path):
    state = {
        "a.weight": torch.randn(3, 4),
        "b.bias": torch.randn(5).to(torch.bfloat16),
        "ids": torch.arange(6),
        "empty": torch.zeros(0, 2),
    }
    spill = SpillState(tmp_path / "s.safetensors", layout_of(state))
    for key in reversed(list(state)):
        spill[key] = state[key]
    spill["a.weight"] = state["a.weight"] * 2  # overwriting is allowed
    assert spill.complete() and list(spill) == list(state)
    spill.close()
    torch.testing.assert_close(spill["a.weight"], state["a.weight"] * 2)
    with safe_open(str(spill.path), framework="pt") as handle:
        for key in ("b.bias", "ids", "empty"):
            assert torch.equal(handle.get_tensor(key), state[key])
    with pytest.raises(ValueError, match="shape mismatch at 'a.weight'"):
        spill["a.weight"] = torch.zeros(4, 3)
    with pytest.raises(KeyError):
        spill["unknown"] = torch.zeros(1)
    spill.release()
    assert not spill.path.exists()


@pytest.mark.parametrize("method", sorted(METHODS))
def test_spilled_merge_equals_the_in_memory_merge(tmp_path, method):
    pretrained = tiny_clip_state(seed=2)
    tasks = synthetic_tasks(pretrained, 3, seed=3)
    options = FAST.get(method, {})
    in_memory = list(continual_merge(pretrained, tasks, method, **options))[-1]
    merger = make_merger(method, pretrained, spill_dir=tmp_path, **options)
    for task in tasks:
        spilled = merger.add(task)
    assert isinstance(spilled, SpillState)
    for key in pretrained:
        assert torch.equal(spilled[key], in_memory[key]), key
    # only the latest merged file remains: no scratch or earlier-step files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged-step3.safetensors"]
    # and the merger itself holds no model-sized tensors besides the pre-trained state
    assert held_elements(merger) - model_elements(pretrained) < model_elements(pretrained) // 10


def test_a_rejected_step_keeps_the_previous_file_and_leaves_no_temporaries(tmp_path):
    pretrained = tiny_clip_state(seed=2)
    tasks = synthetic_tasks(pretrained, 2, seed=3)
    merger = make_merger("opcm", pretrained, spill_dir=tmp_path)
    first = {k: v.clone() for k, v in merger.add(tasks[0]).items()}
    huge = {k: (torch.full_like(v, 3e38) if v.is_floating_point() else v) for k, v in tasks[1].items()}
    with pytest.raises(ValueError, match="NaN/Inf"):
        merger.add(huge)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged-step1.safetensors"]
    assert all(torch.equal(merger.merged[k], first[k]) for k in first)
    merger.add(clone(tasks[1]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged-step2.safetensors"]
    assert math.isfinite(merger.report.merged_norm)
