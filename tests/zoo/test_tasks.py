"""The generated tasks: shapes, determinism, balance, and the 8/14/20 grouping."""

import hashlib

import numpy as np
import pytest
import torch

from nufilt.zoo.tasks import PRETRAIN_TASKS, TASK_GROUPS, TASKS, make_split, stable_seed, task_spec


def test_twenty_distinct_tasks_with_two_to_ten_classes():
    names = [spec.name for spec in TASKS]
    assert len(names) == max(TASK_GROUPS) == 20
    assert len(set(names)) == len(names)
    assert all(2 <= len(spec.classes) <= 10 for spec in TASKS)
    assert not set(names) & {spec.name for spec in PRETRAIN_TASKS}  # pre-training sees other data


@pytest.mark.parametrize("spec", TASKS + PRETRAIN_TASKS, ids=lambda spec: spec.name)
def test_split_shape_range_and_balance(spec):
    images, labels = make_split(spec, "train", 120)
    assert images.shape == (120, 1, 16, 16) and images.dtype == torch.float32
    assert images.min() >= -1 and images.max() <= 1
    assert labels.dtype == torch.int64 and labels.shape == (120,)
    counts = np.bincount(labels.numpy(), minlength=len(spec.classes))
    assert len(counts) == len(spec.classes) and counts.min() > 0
    if not spec.name.startswith("digit"):  # digit labels follow the data; the others are balanced
        assert counts.max() - counts.min() <= 1


@pytest.mark.parametrize("name", ["digits", "shapes", "crossing"])
def test_splits_are_deterministic_and_distinct(name):
    spec = task_spec(name)
    first, again = make_split(spec, "test", 50), make_split(spec, "test", 50)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], make_split(spec, "train", 50)[0])
    assert not torch.equal(first[0], make_split(spec, "test", 50, seed=1)[0])


def test_stable_seed_comes_from_sha256_not_python_hash():
    # hash() of a str changes with PYTHONHASHSEED; the zoo's data must not
    digest = hashlib.sha256(b"digits\x1f3").digest()
    assert stable_seed("digits", 3) == int.from_bytes(digest[:8], "little") >> 1
    assert stable_seed("digits", 3) != stable_seed("digits", 4) != stable_seed("digit", "s4")


def test_bad_names_and_splits_are_rejected():
    with pytest.raises(ValueError, match="unknown zoo task"):
        task_spec("imagenet")
    with pytest.raises(ValueError, match="split"):
        make_split(TASKS[0], "validation", 10)
