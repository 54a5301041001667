"""Checkpoint I/O: lazy safetensors mappings, safe pickle loading, prefixes, atomic saving."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from nufilt.io import (
    LazyStateDict,
    UnsafeCheckpointError,
    find_checkpoint_file,
    open_checkpoint,
    pick_keys,
    save_safetensors,
)
from nufilt.merge import continual_merge


def state(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "layer.weight": torch.randn(6, 4, generator=generator),
        "layer.bias": torch.randn(6, generator=generator),
        "steps": torch.tensor(3),
    }


def test_lazy_mapping_reads_on_access_and_isolates_callers(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file(state(), str(path))
    lazy = open_checkpoint(path)
    assert isinstance(lazy, LazyStateDict)
    assert len(lazy) == 3 and set(lazy.keys()) == set(state()) and "layer.bias" in lazy
    first = lazy["layer.weight"]
    assert torch.equal(first, state()["layer.weight"])
    first.add_(100.0)  # a caller modifying its tensor does not change the next read
    assert torch.equal(lazy["layer.weight"], state()["layer.weight"])
    plain = lazy.materialize()
    assert isinstance(plain, dict) and torch.equal(plain["steps"], torch.tensor(3))
    with pytest.raises(KeyError):
        lazy["missing"]


def test_lazy_mapping_reads_the_file_only_when_asked(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file(state(), str(path))
    lazy = open_checkpoint(path)
    save_file(state(seed=1), str(path))  # the file changes after opening: reads see the new data
    assert torch.equal(lazy["layer.bias"], state(seed=1)["layer.bias"])


def test_sharded_index_and_folders(tmp_path):
    full = state()
    save_file({"layer.weight": full["layer.weight"]}, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file({k: full[k] for k in ("layer.bias", "steps")}, str(tmp_path / "model-00002-of-00002.safetensors"))
    weight_map = {"layer.weight": "model-00001-of-00002.safetensors"}
    weight_map |= {k: "model-00002-of-00002.safetensors" for k in ("layer.bias", "steps")}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    assert find_checkpoint_file(tmp_path).name == "model.safetensors.index.json"
    lazy = open_checkpoint(tmp_path)
    assert all(torch.equal(lazy[k], full[k]) for k in full)


def test_pickle_checkpoints_load_tensors_only(tmp_path):
    torch.save({"state_dict": state()}, tmp_path / "wrapped.pt")
    loaded = open_checkpoint(tmp_path / "wrapped.pt")
    assert all(torch.equal(loaded[k], v) for k, v in state().items())
    torch.save(torch.nn.Linear(4, 6), tmp_path / "module.pt")
    with pytest.raises(UnsafeCheckpointError, match="will not unpickle") as error:
        open_checkpoint(tmp_path / "module.pt")
    assert "state_dict()" in str(error.value)  # says how to convert a trusted file


def test_pick_keys_uses_one_prefix_for_the_whole_file(tmp_path):
    weights = {"text.proj": torch.zeros(2), "proj": torch.ones(2), "visual.proj": torch.full((2,), 2.0)}
    weights["visual.conv"] = torch.full((2,), 3.0)
    save_file(weights, str(tmp_path / "m.safetensors"))
    lazy = open_checkpoint(tmp_path / "m.safetensors")
    picked = pick_keys(lazy, ["proj", "conv"], ["visual.", ""])
    assert list(picked) == ["proj", "conv"] and torch.equal(picked["proj"], torch.full((2,), 2.0))
    assert picked.source_name("conv") == "visual.conv"
    with pytest.raises(KeyError, match="lacks 1 of 2"):
        pick_keys(lazy, ["proj", "absent"], ["visual.", ""])


def test_save_is_atomic_and_handles_shared_tensors(tmp_path):
    base = torch.randn(4, 4)
    shared = {"a": base, "b": base, "view": base[1]}
    path = save_safetensors(shared, tmp_path / "out" / "model.safetensors", {"method": "nufilt"})
    loaded = load_file(str(path))
    assert torch.equal(loaded["a"], base) and torch.equal(loaded["b"], base) and torch.equal(loaded["view"], base[1])
    assert os.listdir(path.parent) == ["model.safetensors"]  # no temporary file left behind
    with pytest.raises(TypeError, match="not tensors: bad"):
        save_safetensors({"bad": "not a tensor"}, tmp_path / "out" / "model.safetensors")
    with pytest.raises(NotImplementedError):  # fails while writing
        save_safetensors({"a": torch.empty(2, device="meta")}, tmp_path / "out" / "model.safetensors")
    assert torch.equal(load_file(str(path))["a"], base)  # a failed save keeps the old file
    assert os.listdir(path.parent) == ["model.safetensors"]


def test_merge_core_accepts_lazy_mappings(tmp_path):
    pretrained, task = state(0), state(1)
    save_file(pretrained, str(tmp_path / "pre.safetensors"))
    save_file(task, str(tmp_path / "task.safetensors"))
    lazy_pre, lazy_task = open_checkpoint(tmp_path / "pre.safetensors"), open_checkpoint(tmp_path / "task.safetensors")
    (lazy_merged,) = continual_merge(lazy_pre, [lazy_task], "task_arithmetic", layers="all")
    (plain_merged,) = continual_merge(pretrained, [task], "task_arithmetic", layers="all")
    assert all(torch.equal(lazy_merged[k], plain_merged[k]) for k in plain_merged)
    assert torch.equal(open_checkpoint(tmp_path / "pre.safetensors")["layer.weight"], pretrained["layer.weight"])


def test_shapes_come_from_the_header_without_reading_tensors(tmp_path):
    """Layout matching compares shapes of many tensors; a safetensors header records them, so
    no tensor is read for it (the file is cut after opening: any tensor read would now fail)."""
    path = tmp_path / "model.safetensors"
    save_file(state(), str(path))
    lazy = open_checkpoint(path)
    path.write_bytes(b"")
    assert lazy.shape("layer.weight") == (6, 4) and lazy.shape("steps") == ()
    renamed = lazy.renamed({"w": "layer.weight"})
    assert renamed.known_shape("w") == (6, 4)
    with pytest.raises(SafetensorError):
        lazy["layer.weight"]
    in_memory = LazyStateDict({"x": (state().__getitem__, "layer.bias")})
    assert in_memory.known_shape("x") is None and in_memory.shape("x") == (6,)  # read when unknown
