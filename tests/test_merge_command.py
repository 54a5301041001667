"""`python -m nufilt merge` / `merge_checkpoints`: your own checkpoints in, one loadable model out."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import CLIPVisionModel

from nufilt.checkpoints import merge_checkpoints, task_labels
from nufilt.cli import main
from nufilt.merge import continual_merge
from tests.factories import synthetic_tasks, tiny_clip_config, tiny_clip_state


def _model(state):
    model = CLIPVisionModel(tiny_clip_config())
    model.load_state_dict(state)
    return model


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A save_pretrained pre-trained folder, two task folders and one bare .safetensors task."""
    root = tmp_path_factory.mktemp("checkpoints")
    pretrained = tiny_clip_state(seed=5)
    tasks = synthetic_tasks(pretrained, 3, seed=6)
    _model(pretrained).save_pretrained(root / "base")
    (root / "base" / "README.md").write_text("the base model's own card\n")
    paths = []
    for i, task in enumerate(tasks[:2]):
        _model(task).save_pretrained(root / f"task{i}")
        paths.append(root / f"task{i}")
    save_file({k: v.contiguous() for k, v in tasks[2].items()}, root / "task2.safetensors")
    paths.append(root / "task2.safetensors")
    return root, pretrained, tasks, paths


def _args(root, paths, out, *extra):
    return ["merge", "--pretrained", str(root / "base"), *[a for p in paths for a in ("--task", str(p))],
            "--out", str(out), "--quiet", *extra]


def test_the_cli_writes_a_folder_from_pretrained_loads_with_the_librarys_merge(checkpoints, tmp_path, capsys):
    root, pretrained, tasks, paths = checkpoints
    out = tmp_path / "merged"
    code = main(_args(root, paths, out, "--option", "r_p=4", "--option", "nufilt.r_l=2", "--json",
                      str(tmp_path / "summary.json")))
    assert code == 0, capsys.readouterr().err
    expected = list(continual_merge(pretrained, tasks, "nufilt", r_p=4, r_l=2))[-1]
    loaded = CLIPVisionModel.from_pretrained(out).state_dict()
    for key, value in expected.items():
        torch.testing.assert_close(loaded[key], value, msg=key)
    assert (out / "config.json").exists() and not (out / "pytorch_model.bin").exists()
    card = (out / "README.md").read_text()
    assert "nufilt" in card and "task2.safetensors" in card and "own card" not in card
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary == json.loads((out / "nufilt_merge.json").read_text())
    assert summary["options"]["r_p"] == 4 and summary["options"]["r_l"] == 2
    assert [s["step"] for s in summary["steps"]] == [1, 2, 3]
    assert [s["task"] for s in summary["steps"]] == ["task0", "task1", "task2.safetensors"]
    assert summary["tasks"] == [str(p) for p in paths]
    assert all(math.isfinite(s["seconds"]) and s["task_norm"] > 0 for s in summary["steps"])
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging left


def test_a_safetensors_output_and_an_ablation_label(checkpoints, tmp_path, capsys):
    root, pretrained, tasks, paths = checkpoints
    out = tmp_path / "merged.safetensors"
    assert main(_args(root, paths[:2], out, "--method", "null_space_only", "--option", "nufilt.r_p=3")) == 0
    expected = list(continual_merge(pretrained, tasks[:2], "nufilt", r_p=3, r_l=0))[-1]
    written = load_file(out)
    assert set(written) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(written[key], value, msg=key)


def test_the_library_call_without_out_returns_the_state(checkpoints):
    root, pretrained, tasks, paths = checkpoints
    result = merge_checkpoints(root / "base", paths[:2], "task_arithmetic", options={"scale": 0.5})
    for key, value in pretrained.items():
        if value.is_floating_point():
            expected = value + 0.5 * ((tasks[0][key] - value) + (tasks[1][key] - value))
            torch.testing.assert_close(result["state"][key], expected, msg=key)
    assert result["out"] is None and result["options"]["scale"] == 0.5


def _fails(capsys, argv, match):
    capsys.readouterr()  # drop what the test's own set-up printed
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "nufilt merge: error:" in err and match in err and len(err.splitlines()) == 1, err


def test_bad_inputs_exit_2_with_one_line_and_write_nothing(checkpoints, tmp_path, capsys):
    root, pretrained, tasks, paths = checkpoints
    out = tmp_path / "out"
    _fails(capsys, _args(root, [], out), "no task checkpoints")
    _fails(capsys, _args(root, [paths[0], paths[1], paths[0]], out), "listed twice")
    _fails(capsys, _args(root, [root / "missing"], out), "not found")
    _fails(capsys, _args(root, paths, out, "--method", "mean"), "unknown method")
    _fails(capsys, _args(root, paths, out, "--option", "opcm.alpha=0.5"), "is for 'opcm'")
    _fails(capsys, _args(root, paths, out, "--option", "r_q=3"), "r_q")
    # a task of another architecture (wider layers) and a task with NaN weights
    other = tmp_path / "other"
    CLIPVisionModel(tiny_clip_config(width=64)).save_pretrained(other)
    _fails(capsys, _args(root, [paths[0], other], out), "shape")
    broken = dict(tasks[1])
    key = next(k for k in broken if k.endswith("q_proj.weight"))
    broken[key] = broken[key].clone()
    broken[key][0, 0] = float("nan")
    save_file({k: v.contiguous() for k, v in broken.items()}, tmp_path / "nan.safetensors")
    _fails(capsys, _args(root, [paths[0], tmp_path / "nan.safetensors"], out), "NaN")
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_an_input_is_never_the_output_even_with_overwrite(checkpoints, tmp_path, capsys):
    root, _, _, paths = checkpoints
    before = {p: p.stat().st_mtime_ns for p in (root / "base").iterdir()}
    _fails(capsys, _args(root, paths[:1], root / "base", "--overwrite"), "would overwrite the input")
    _fails(capsys, _args(root, paths, paths[2], "--overwrite"), "would overwrite the input")
    _fails(capsys, _args(root, paths[:1], root, "--overwrite"), "would overwrite the input")  # a parent
    assert {p: p.stat().st_mtime_ns for p in (root / "base").iterdir()} == before
    assert paths[2].exists()


def test_an_existing_output_is_kept_unless_overwrite(checkpoints, tmp_path, capsys):
    root, _, _, paths = checkpoints
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    _fails(capsys, _args(root, paths[:1], out), "exists and is not empty")
    assert (out / "precious.txt").read_text() == "keep me"
    assert main(_args(root, paths[:1], out, "--overwrite", "--method", "weight_average")) == 0
    assert not (out / "precious.txt").exists() and (out / "model.safetensors").exists()


def test_spilled_merging_gives_the_same_model_and_cleans_its_files(checkpoints, tmp_path):
    root, _, _, paths = checkpoints
    in_memory = merge_checkpoints(root / "base", paths, "nufilt", tmp_path / "a.safetensors", options={"r_p": 4})
    spill = tmp_path / "spill"
    spill.mkdir()
    spilled = merge_checkpoints(root / "base", paths, "nufilt", tmp_path / "b.safetensors", options={"r_p": 4},
                                spill_dir=spill)
    assert in_memory["options"] == spilled["options"]
    a, b = load_file(tmp_path / "a.safetensors"), load_file(tmp_path / "b.safetensors")
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert list(spill.iterdir()) == []


def test_task_labels_are_the_shortest_distinct_path_endings(tmp_path):
    paths = [tmp_path / "zoo" / "cars" / "encoder", tmp_path / "zoo" / "dtd" / "encoder", tmp_path / "x.safetensors"]
    assert task_labels(paths) == ["cars/encoder", "dtd/encoder", f"{tmp_path.name}/x.safetensors"]
    assert task_labels([tmp_path / "a", tmp_path / "b"]) == ["a", "b"]
