"""`merge` on checkpoints laid out as the Hub stores them: the pre-trained model and the task
models may be different classes (CLIPModel / CLIPVisionModel), name the same weights with other
prefixes, repeat or omit tied copies (T5), or be open_clip files. The expected results are
computed here from the raw files, independently of nufilt.align."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import CLIPModel, CLIPVisionModel, T5ForConditionalGeneration

from nufilt.backbones.hub import quiet_transformers
from nufilt.checkpoints import merge_checkpoints
from nufilt.cli import main
from tests.backbones.builders import build_clip_hub, build_open_clip_folder, build_t5_hub

SCALE = 0.3  # task arithmetic, Table 9 for fewer than 14 tasks


def _vision(state: dict, prefix: str = "vision_model.") -> dict:
    """The vision tower of a CLIP state under bare names, whatever its layout."""
    if any(key.startswith(prefix) for key in state):
        return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    return dict(state)


def _task_arithmetic(base: dict, tasks: list[dict]) -> dict:
    return {k: base[k] + SCALE * sum(t[k] - base[k] for t in tasks) for k in base}


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    return build_clip_hub(tmp_path_factory.mktemp("clip-hub"))


def _run(capsys, *argv) -> tuple[int, str]:
    code = main(["merge", *map(str, argv), "--quiet"])
    return code, capsys.readouterr().err


def test_clipmodel_pretrained_with_clipvisionmodel_tasks(hub, tmp_path, capsys):
    """openai/clip-vit-* + tanganke/clip-vit-*_<task>: the vision tower is merged, the text tower
    and logit scale are the pre-trained ones, and the output loads as both classes."""
    out = tmp_path / "merged"
    code, err = _run(capsys, "--pretrained", hub["pretrained"], "--task", hub["mnist"], "--task", hub["eurosat"],
                     "--method", "task_arithmetic", "--out", out)
    assert code == 0, err
    pretrained = load_file(hub["pretrained"] / "model.safetensors")
    tasks = [_vision(load_file(hub[t] / "model.safetensors")) for t in ("mnist", "eurosat")]
    expected = _task_arithmetic(_vision(pretrained), tasks)
    written = load_file(out / "model.safetensors")
    assert set(written) == set(pretrained)
    for key, value in expected.items():
        torch.testing.assert_close(written[f"vision_model.{key}"], value, rtol=0, atol=1e-6)
    for key in pretrained:
        if not key.startswith("vision_model."):
            assert torch.equal(written[key], pretrained[key]), key
    with quiet_transformers():
        full = CLIPModel.from_pretrained(out)
        vision = CLIPVisionModel.from_pretrained(out)
    loaded = _vision(vision.state_dict())
    for key in ("post_layernorm.weight", "encoder.layers.0.self_attn.q_proj.weight"):
        torch.testing.assert_close(loaded[key], expected[key], rtol=0, atol=1e-6)
    assert full.logit_scale.item() == pytest.approx(pretrained["logit_scale"].item())
    assert (out / "tokenizer_config.json").is_file() and json.loads((out / "config.json").read_text())[
        "model_type"] == "clip"


def test_clipvisionmodel_pretrained_with_clipmodel_tasks(hub, tmp_path, capsys):
    """The reverse: whole-CLIP task files against a vision-only pre-trained folder give a
    CLIPVisionModel with the same vision tower as the case above."""
    pre = tmp_path / "vision-pretrained"
    with quiet_transformers():
        CLIPVisionModel.from_pretrained(hub["pretrained"]).save_pretrained(pre)
    task_dirs = []
    pretrained_full = load_file(hub["pretrained"] / "model.safetensors")
    for name in ("mnist", "eurosat"):
        vision = _vision(load_file(hub[name] / "model.safetensors"))
        whole = dict(pretrained_full) | {f"vision_model.{k}": v for k, v in vision.items()}
        folder = tmp_path / f"clipmodel-{name}"
        folder.mkdir()
        save_file({k: v.contiguous() for k, v in whole.items()}, str(folder / "model.safetensors"))
        task_dirs.append(folder)
    out = tmp_path / "merged-vision"
    code, err = _run(capsys, "--pretrained", pre, "--task", task_dirs[0], "--task", task_dirs[1],
                     "--method", "task_arithmetic", "--out", out)
    assert code == 0, err
    tasks = [_vision(load_file(hub[t] / "model.safetensors")) for t in ("mnist", "eurosat")]
    expected = _task_arithmetic(_vision(pretrained_full), tasks)
    written = _vision(load_file(out / "model.safetensors"))
    assert set(written) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(written[key], value, rtol=0, atol=1e-6)
    with quiet_transformers():
        CLIPVisionModel.from_pretrained(out)


def test_sharded_task_and_missing_or_extra_weights(hub, tmp_path, capsys):
    task = _vision(load_file(hub["eurosat"] / "model.safetensors"))
    keys = sorted(task)
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    halves = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    weight_map = {}
    for file, part in halves.items():
        save_file({f"vision_model.{k}": task[k].contiguous() for k in part}, str(sharded / file))
        weight_map |= {f"vision_model.{k}": file for k in part}
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    out = tmp_path / "from-shards.safetensors"
    code, err = _run(capsys, "--pretrained", hub["pretrained"], "--task", hub["mnist"], "--task", sharded,
                     "--method", "task_arithmetic", "--out", out)
    assert code == 0, err
    reference = merge_checkpoints(hub["pretrained"], [hub["mnist"], hub["eurosat"]], "task_arithmetic")["state"]
    written = load_file(out)
    assert all(torch.equal(written[k], reference[k]) for k in reference)

    lacking = tmp_path / "lacking.safetensors"
    save_file({f"vision_model.{k}": v.contiguous() for k, v in task.items() if "layers.1.mlp.fc2" not in k},
              str(lacking))
    code, err = _run(capsys, "--pretrained", hub["pretrained"], "--task", lacking, "--out", tmp_path / "x")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "lacks 2 weight(s)" in err and "layers.1.mlp.fc2" in err
    extra = tmp_path / "extra.safetensors"
    grown = {f"vision_model.{k}": v.contiguous() for k, v in task.items()}
    grown["vision_model.encoder.layers.9.mlp.fc1.weight"] = torch.randn(3, 3)
    save_file(grown, str(extra))
    code, err = _run(capsys, "--pretrained", hub["pretrained"], "--task", extra, "--out", tmp_path / "y")
    assert code == 2 and "another architecture" in err and "layers.9" in err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_t5_with_and_without_tied_embedding_copies(tmp_path, capsys):
    """Google's files repeat the tied embedding (encoder/decoder.embed_tokens = shared);
    save_pretrained leaves the copies out. Either side may be either way."""
    hub = build_t5_hub(tmp_path / "t5")
    base = load_file(hub["pretrained"] / "model.safetensors")
    with_copies = dict(base)
    for copy in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"):
        with_copies.setdefault(copy, base["shared.weight"])
    pre = tmp_path / "pretrained-with-copies"
    pre.mkdir()
    torch.save({k: v.clone() for k, v in with_copies.items()}, pre / "pytorch_model.bin")
    (pre / "config.json").write_text((hub["pretrained"] / "config.json").read_text())
    out = tmp_path / "t5-merged"
    code, err = _run(capsys, "--pretrained", pre, "--task", hub["cola"], "--method", "task_arithmetic", "--out", out)
    assert code == 0, err
    task = load_file(hub["cola"] / "model.safetensors")
    written = load_file(out / "model.safetensors")
    expected_shared = base["shared.weight"] + SCALE * (task["shared.weight"] - base["shared.weight"])
    for key in ("shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight"):
        torch.testing.assert_close(written[key], expected_shared, rtol=0, atol=1e-6)
    with quiet_transformers():
        model = T5ForConditionalGeneration.from_pretrained(out)
    torch.testing.assert_close(model.shared.weight, expected_shared, rtol=0, atol=1e-6)


def test_open_clip_whole_model_with_vision_only_task_files(tmp_path, capsys):
    paths = build_open_clip_folder(tmp_path / "oc")
    out = tmp_path / "oc-merged.safetensors"
    code, err = _run(capsys, "--pretrained", paths["pretrained"], "--task", paths["SUN397"], "--task",
                     paths["Cars"], "--method", "task_arithmetic", "--out", out)
    assert code == 0, err
    base = torch.load(paths["pretrained"], weights_only=True)
    tasks = [_vision(load_file(paths["SUN397"]), "model.visual."), _vision(torch.load(paths["Cars"]), "visual.")]
    visual = _vision(base, "visual.")
    expected = _task_arithmetic(visual, tasks)
    written = load_file(out)
    assert set(written) == set(base)
    for key, value in expected.items():
        torch.testing.assert_close(written[f"visual.{key}"], value, rtol=0, atol=1e-6)
    assert torch.equal(written["token_embedding.weight"], base["token_embedding.weight"])
