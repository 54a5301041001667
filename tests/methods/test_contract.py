"""One contract every registered method must keep, run over the whole registry."""

import pytest
import torch

from nufilt.merge import continual_merge, make_merger
from nufilt.methods import ABLATIONS, METHODS
from tests.factories import clone, held_elements, model_elements, synthetic_tasks, tiny_clip_state

FAST = {"nufilt": {"r_p": 8, "r_l": 4, "steps": 5}, "wudi": {"steps": 5}}


@pytest.fixture(scope="module")
def zoo():
    pretrained = tiny_clip_state(seed=0)
    return pretrained, synthetic_tasks(pretrained, 6, seed=1)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_keys_shapes_dtypes_kept_finite_and_inputs_untouched(zoo, method):
    pretrained, tasks = zoo
    before = [clone(pretrained)] + [clone(t) for t in tasks[:3]]
    outputs = list(continual_merge(pretrained, tasks[:3], method, **FAST.get(method, {})))
    assert len(outputs) == 3
    for merged in outputs:
        assert list(merged) == list(pretrained)
        for key, value in merged.items():
            assert value.shape == pretrained[key].shape and value.dtype == pretrained[key].dtype, key
            assert value.device.type == "cpu"
            assert torch.isfinite(value).all(), key
    for original, now in zip(before, [pretrained, *tasks[:3]], strict=True):
        for key in original:
            assert torch.equal(original[key], now[key]), f"input mutated at {key}"
    # each step returns a new dict, and the merge moved away from the pre-trained model
    assert outputs[0] is not outputs[1]
    assert any(not torch.equal(outputs[-1][k], pretrained[k]) for k in pretrained)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_half_precision_inputs_come_back_in_their_dtype(zoo, method):
    pretrained, tasks = zoo
    half = {k: v.to(torch.bfloat16) for k, v in pretrained.items()}
    half_tasks = [{k: v.to(torch.bfloat16) for k, v in t.items()} for t in tasks[:2]]
    merged = list(continual_merge(half, half_tasks, method, **FAST.get(method, {})))[-1]
    assert all(merged[k].dtype == torch.bfloat16 for k in merged)
    assert all(torch.isfinite(merged[k].float()).all() for k in merged)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_memory_held_by_the_merger_does_not_grow_with_the_number_of_tasks(zoo, method):
    pretrained, tasks = zoo
    merger = make_merger(method, pretrained, **FAST.get(method, {}))
    held = []
    for task in tasks:
        merger.add(task)
        held.append(held_elements(merger))
    size = model_elements(pretrained)
    assert held[1] == held[-1], f"held tensor elements grew: {held}"
    # the pre-trained model, the current merged model, and nothing model-sized besides
    assert held[-1] <= 2 * size


@pytest.mark.parametrize("method", sorted(METHODS))
def test_same_inputs_and_seed_give_bit_identical_results(zoo, method):
    pretrained, tasks = zoo
    runs = [list(continual_merge(pretrained, tasks[:3], method, seed=7, **FAST.get(method, {})))[-1] for _ in range(2)]
    for key in pretrained:
        assert torch.equal(runs[0][key], runs[1][key]), key


def _storages(state) -> set[int]:
    return {value.untyped_storage().data_ptr() for value in state.values()}


ROWS = [(name, {}) for name in sorted(METHODS)] + [("nufilt", dict(opts)) for opts in ABLATIONS.values()]


@pytest.mark.parametrize(("method", "options"), ROWS, ids=[f"{m}{'-' + '-'.join(map(str, o.values())) if o else ''}"
                                                           for m, o in ROWS])
def test_results_share_no_storage_with_inputs_or_each_other(zoo, method, options):
    """The loop `model.load_state_dict(task); merger.add(model.state_dict())` must not turn θ̄1
    into θ2: no yielded tensor may be an input's tensor or a view of one."""
    pretrained, tasks = zoo
    inputs = [clone(pretrained)] + [clone(t) for t in tasks[:3]]
    outputs = list(continual_merge(inputs[0], inputs[1:], method, **{**FAST.get(method, {}), **options}))
    input_storages = set().union(*(_storages(state) for state in inputs))
    for step, merged in enumerate(outputs, start=1):
        shared = _storages(merged) & input_storages
        assert not shared, f"step {step}: {len(shared)} result tensor(s) share storage with an input"
    kept = [{k: v.clone() for k, v in merged.items()} for merged in outputs]
    for state in inputs:  # the caller reuses its buffers after the merge
        for value in state.values():
            value.add_(1.0)
    for step, (merged, copy) in enumerate(zip(outputs, kept, strict=True), start=1):
        for key in merged:
            assert torch.equal(merged[key], copy[key]), f"step {step}: {key} changed with an input"
    assert not (_storages(outputs[0]) & _storages(outputs[1])), "two steps' results share storage"
