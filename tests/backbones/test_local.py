"""`local:<dir>`: the same backbones from a folder of `save_pretrained` folders and files."""

from __future__ import annotations

import json

import pytest
import torch

from nufilt.backbones import get_backbone
from nufilt.backbones.clip import ClipBackbone
from nufilt.backbones.openclip import OpenClipBackbone
from nufilt.backbones.t5 import T5Backbone
from nufilt.merge import continual_merge
from tests.backbones.builders import random_images, write_image_folder


@pytest.fixture()
def clip_folder(clip_hub, tmp_path):
    """pretrained/, a fine-tuned folder named like its Hub repo, a bare weights file, a custom task."""
    root = tmp_path / "models"
    root.mkdir()
    (root / "pretrained").symlink_to(clip_hub["pretrained"])
    (root / "clip-vit-base-patch32_mnist").symlink_to(clip_hub["mnist"])
    (root / "EuroSAT.safetensors").symlink_to(clip_hub["eurosat"] / "model.safetensors")
    (root / "shapes").symlink_to(clip_hub["eurosat"])
    (root / "notes.txt").write_text("not a model")
    spec = {"name": "shapes", "classes": ["circle", "square", "triangle"], "templates": ["a drawing of a {}."]}
    (root / "nufilt.json").write_text(json.dumps({"task_specs": [spec]}))
    return root


def test_clip_folder_finds_tasks_in_paper_order_then_custom(clip_folder):
    backbone = get_backbone(f"local:{clip_folder}")
    assert isinstance(backbone, ClipBackbone) and backbone.family == "clip"
    assert [t.name for t in backbone.tasks] == ["eurosat", "mnist", "shapes"]
    assert backbone.task("shapes").classes == ("circle", "square", "triangle")
    assert backbone.paper_column is None  # a tiny model is no paper architecture
    backbone.prepare()  # every model found and its weight names checked
    assert [t.name for t in get_backbone(f"local:{clip_folder}", tasks=2).tasks] == ["eurosat", "mnist"]
    with pytest.raises(ValueError, match="has 3 tasks"):
        get_backbone(f"local:{clip_folder}", tasks=8)


def test_clip_folder_loads_merges_and_scores_like_the_hub_path(clip_folder, clip_hub, tmp_path):
    local = get_backbone(f"local:{clip_folder}", data_dir=clip_hub["data"], device="cpu")
    hub = get_backbone(
        "clip-vit-b32",
        model_id=str(clip_hub["pretrained"]),
        finetuned_pattern=str(clip_hub["root"] / "clip-vit-tiny_{task}"),
        tasks=["mnist", "eurosat"],
        data_dir=clip_hub["data"],
        device="cpu",
    )
    for task in ("mnist", "eurosat"):
        a, b = local.finetuned_state(task), hub.finetuned_state(task)
        assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    *_, merged = continual_merge(local.pretrained_state(), [local.finetuned_state("eurosat")], "task_arithmetic")
    assert local.evaluate(merged, ["mnist", "eurosat"]) == hub.evaluate(merged, ["mnist", "eurosat"])
    write_image_folder(tmp_path / "data" / "shapes" / "test", random_images(6, seed=3), [0, 1, 2, 0, 1, 2])
    local.data_dir = tmp_path / "data"
    assert 0.0 <= local.evaluate(merged, ["shapes"])["shapes"] <= 100.0


def test_t5_folder(t5_hub, tmp_path):
    root = tmp_path / "t5"
    root.mkdir()
    (root / "pretrained").symlink_to(t5_hub["pretrained"])
    (root / "flan-t5-base_glue-cola").symlink_to(t5_hub["cola"])
    (root / "glue-stsb").symlink_to(t5_hub["stsb"])
    backbone = get_backbone(f"local:{root}")
    assert isinstance(backbone, T5Backbone) and [t.name for t in backbone.tasks] == ["cola", "stsb"]
    state = backbone.finetuned_state("stsb")
    assert list(state) == list(backbone.pretrained_state())


def test_open_clip_folder_is_recognised(open_clip_folder):
    backbone = get_backbone(f"local:{open_clip_folder['root']}")
    assert isinstance(backbone, OpenClipBackbone)


def test_unusable_folders_say_what_is_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        get_backbone(f"local:{tmp_path / 'missing'}")
    with pytest.raises(FileNotFoundError, match="pretrained/"):
        get_backbone(f"local:{tmp_path}")
    (tmp_path / "pretrained").mkdir()
    (tmp_path / "pretrained" / "config.json").write_text(json.dumps({"model_type": "clip"}))
    with pytest.raises(FileNotFoundError, match="no fine-tuned model"):
        get_backbone(f"local:{tmp_path}")
    (tmp_path / "pretrained" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="'bert' is not supported"):
        get_backbone(f"local:{tmp_path}")
    (tmp_path / "pretrained" / "config.json").write_text(json.dumps({"model_type": "clip_vision_model"}))
    with pytest.raises(ValueError, match="needs the text tower.*python -m nufilt merge"):
        get_backbone(f"local:{tmp_path}")


def test_whole_clipmodel_task_folders_are_read_as_their_vision_tower(clip_hub, tmp_path):
    """A task saved as a whole CLIPModel (text tower included) scores like its vision-only folder."""
    from safetensors.torch import load_file, save_file

    pretrained = load_file(clip_hub["pretrained"] / "model.safetensors")
    vision = load_file(clip_hub["eurosat"] / "model.safetensors")  # `vision_model.` keys (transformers 4)
    whole = {**pretrained, **vision}
    root = tmp_path / "models"
    (root / "eurosat").mkdir(parents=True)
    (root / "pretrained").symlink_to(clip_hub["pretrained"])
    save_file({k: v.contiguous() for k, v in whole.items()}, str(root / "eurosat" / "model.safetensors"))
    backbone = get_backbone(f"local:{root}", tasks=["eurosat"], data_dir=clip_hub["data"], device="cpu")
    state = backbone.finetuned_state("eurosat")
    assert set(state) == set(backbone.pretrained_state())
    for key, value in state.items():
        assert torch.equal(value, vision[f"vision_model.{key}"] if f"vision_model.{key}" in vision else vision[key])
