"""The public merge API: options, validation of bad input, safe commits, devices."""

import math

import pytest
import torch

from nufilt.merge import continual_merge, make_merger, resolve_device
from nufilt.methods import METHODS
from tests.factories import clone, synthetic_tasks, tiny_clip_state


@pytest.fixture(scope="module")
def zoo():
    pretrained = tiny_clip_state(seed=0)
    return pretrained, synthetic_tasks(pretrained, 3, seed=1)


def test_registry_has_the_issue_names():
    assert set(METHODS) == {
        "weight_average", "task_arithmetic", "ties", "magmax", "opcm", "wudi", "iso_c", "tsv_m", "knots_ties", "nufilt"
    }


def test_unknown_method_and_option_name_the_problem(zoo):
    pretrained, _ = zoo
    with pytest.raises(ValueError, match="unknown method 'nufilter'.*nufilt"):
        make_merger("nufilter", pretrained)
    with pytest.raises(ValueError, match="unknown option 'rank' for method 'nufilt'.*r_p"):
        make_merger("nufilt", pretrained, rank=3)
    with pytest.raises(ValueError, match="unknown option 'scale' for method 'opcm'"):
        continual_merge(pretrained, [pretrained], "opcm", scale=0.3)


def test_empty_task_list_is_an_error_for_lists_and_iterators(zoo):
    pretrained, _ = zoo
    with pytest.raises(ValueError, match="task list is empty"):
        continual_merge(pretrained, [], "task_arithmetic")
    with pytest.raises(ValueError, match="task list is empty"):
        list(continual_merge(pretrained, iter([]), "task_arithmetic"))
    with pytest.raises(TypeError, match="not a single state dict"):
        continual_merge(pretrained, pretrained, "task_arithmetic")


def test_missing_extra_and_mismatched_keys_are_named(zoo):
    pretrained, tasks = zoo
    merger = make_merger("task_arithmetic", pretrained)
    missing = clone(tasks[0])
    del missing["encoder.layers.1.mlp.fc2.bias"]
    with pytest.raises(ValueError, match="task 1 lacks key 'encoder.layers.1.mlp.fc2.bias'"):
        merger.add(missing)
    extra = clone(tasks[0]) | {"head.weight": torch.zeros(2, 2)}
    with pytest.raises(ValueError, match="task 1 has key 'head.weight'"):
        merger.add(extra)
    wrong = clone(tasks[0])
    wrong["encoder.layers.0.mlp.fc1.weight"] = torch.zeros(3, 3)
    with pytest.raises(ValueError, match=r"shape mismatch at 'encoder.layers.0.mlp.fc1.weight'.*\(64, 32\).*\(3, 3\)"):
        merger.add(wrong)
    assert merger.step == 0 and merger.merged is None


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_weights_are_rejected_with_the_key_and_nothing_is_lost(zoo, bad):
    pretrained, tasks = zoo
    merger = make_merger("nufilt", pretrained, r_p=4, r_l=2, steps=2)
    first = merger.add(tasks[0])
    poisoned = clone(tasks[1])
    poisoned["encoder.layers.1.self_attn.v_proj.weight"][0, 0] = bad
    with pytest.raises(ValueError, match=r"task 2\['encoder.layers.1.self_attn.v_proj.weight'\] contains 1 NaN/Inf"):
        merger.add(poisoned)
    assert merger.step == 1
    assert all(torch.equal(merger.merged[k], first[k]) for k in first)
    merger.add(tasks[1])  # the merger still works
    assert merger.step == 2
    bad_pretrained = clone(pretrained)
    bad_pretrained["embeddings.class_embedding"][3] = bad
    with pytest.raises(ValueError, match=r"pretrained\['embeddings.class_embedding'\]"):
        make_merger("opcm", bad_pretrained)


def test_a_task_merged_twice_or_equal_to_the_pretrained_model_is_rejected(zoo):
    pretrained, tasks = zoo
    merger = make_merger("weight_average", pretrained)
    merger.add(tasks[0])
    with pytest.raises(ValueError, match="task 2 has exactly the weights of task 1"):
        merger.add(clone(tasks[0]))
    with pytest.raises(ValueError, match="weights of the pre-trained model"):
        merger.add(clone(pretrained))
    merger.add(tasks[1])
    assert merger.step == 2


def test_a_failing_step_rolls_back_method_statistics(zoo):
    pretrained, tasks = zoo
    merger = make_merger("opcm", pretrained)
    merger.add(tasks[0])
    before = (merger.method.sum_norm, merger.method.norm_total)
    huge = {k: (torch.full_like(v, 3e38) if v.is_floating_point() else v) for k, v in tasks[1].items()}
    with pytest.raises(ValueError, match="NaN/Inf"):
        merger.add(huge)  # finite input whose merge overflows float32
    assert (merger.method.sum_norm, merger.method.norm_total) == before
    reference = make_merger("opcm", pretrained)
    reference.add(tasks[0])
    expected = reference.add(tasks[1])
    got = merger.add(tasks[1])
    assert all(torch.equal(got[k], expected[k]) for k in got)


def test_ranks_must_be_non_negative_integers(zoo):
    pretrained, _ = zoo
    with pytest.raises(ValueError, match="r_v must be >= 0"):
        make_merger("nufilt", pretrained, r_v=-2)


def test_layer_globs_and_non_floating_selected_tensors(zoo):
    pretrained, tasks = zoo
    merger = make_merger("nufilt", pretrained, layers=["*.0.mlp.fc1.weight"], r_p=4, r_l=2, steps=2)
    assert merger.selected == {"encoder.layers.0.mlp.fc1.weight"}
    with pytest.raises(ValueError, match="layer pattern '\\*fc9\\*' matches no key"):
        make_merger("nufilt", pretrained, layers=["*fc9*"])
    with pytest.raises(ValueError, match="needs 2-D weights"):
        make_merger("opcm", pretrained, layers=["*layer_norm1.weight"])
    with_ids = clone(pretrained) | {"embeddings.position_ids": torch.arange(5)}
    with pytest.raises(TypeError, match="'embeddings.position_ids' has non-floating dtype"):
        make_merger("task_arithmetic", with_ids, layers=["*position_ids"])
    # integer buffers outside the selection are carried through untouched
    tasks_ids = [clone(t) | {"embeddings.position_ids": torch.arange(5)} for t in tasks[:2]]
    merged = list(continual_merge(with_ids, tasks_ids, "task_arithmetic"))[-1]
    assert torch.equal(merged["embeddings.position_ids"], torch.arange(5))
    with pytest.raises(ValueError, match="unknown layers preset 'linear'"):
        make_merger("nufilt", pretrained, layers="linear")


def test_devices_and_seed_are_checked(zoo):
    pretrained, _ = zoo
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            make_merger("nufilt", pretrained, device="cuda")
    with pytest.raises(TypeError, match="seed must be an integer"):
        make_merger("nufilt", pretrained, seed="1")


def test_report_carries_step_time_and_norms(zoo):
    pretrained, tasks = zoo
    merger = make_merger("task_arithmetic", pretrained, scale=1.0)
    merger.add(tasks[0])
    report = merger.report
    assert report.step == 1 and report.seconds >= 0
    assert report.task_norm == pytest.approx(report.merged_norm, rel=1e-5)


def test_state_dicts_may_be_read_only_mappings(zoo):
    from types import MappingProxyType

    pretrained, tasks = zoo
    merged = list(continual_merge(MappingProxyType(pretrained), map(MappingProxyType, tasks), "opcm"))
    assert len(merged) == 3
