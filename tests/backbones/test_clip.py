"""CLIP (transformers) backbone: hub-format folders -> load -> merge -> evaluate -> export -> reload."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from transformers import CLIPImageProcessor, CLIPVisionModel

from nufilt.backbones import get_backbone
from nufilt.backbones.clip import ARCHITECTURES, clip_task_specs, match_task
from nufilt.backbones.hub import HubUnavailableError, quiet_transformers
from nufilt.export import save_merged
from nufilt.io import LazyStateDict
from nufilt.merge import continual_merge
from tests.backbones.builders import random_images
from tests.backbones.conftest import CLIP_TASKS, reference_clip_logits


def make(clip_hub, **kwargs):
    return get_backbone(
        "clip-vit-b32",
        model_id=str(clip_hub["pretrained"]),
        finetuned_pattern=str(clip_hub["root"] / "clip-vit-tiny_{task}"),
        tasks=list(CLIP_TASKS),
        data_dir=clip_hub["data"],
        device="cpu",
        **kwargs,
    )


def saved_vision_weights(folder) -> dict[str, torch.Tensor]:
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        return {k.removeprefix("vision_model."): f.get_tensor(k) for k in f.keys()}


def test_task_data_covers_the_papers_twenty_tasks():
    specs = clip_task_specs()
    assert len(specs) == 20
    assert [s["paper_id"] for s in specs.values()] == list(range(1, 21))
    sizes = {"sun397": 397, "stanford-cars": 196, "gtsrb": 43, "cifar100": 100, "food101": 101, "kmnist": 10}
    for name, n in sizes.items():
        assert len(specs[name]["classes"]) == n
    for spec in specs.values():
        assert len(set(spec["classes"])) == len(spec["classes"]), spec["name"]
        assert spec["templates"] and all("{}" in t for t in spec["templates"]), spec["name"]
        assert spec["dataset"].count("/") == 1


def test_task_names_from_repo_and_folder_names():
    names = list(clip_task_specs())
    assert match_task("clip-vit-base-patch32_kmnist", names) == "kmnist"
    assert match_task("clip-vit-base-patch32_mnist", names) == "mnist"
    assert match_task("Fashion-MNIST", names) == "fashion_mnist"
    assert match_task("clip-vit-base-patch32_stanford-cars", names) == "stanford-cars"
    assert match_task("CIFAR100", names) == "cifar100"
    assert match_task("readme", names) is None


def test_specs_map_to_hub_ids_and_task_counts():
    assert ARCHITECTURES["clip-vit-l14"][0] == "openai/clip-vit-large-patch14"
    backbone = get_backbone("clip-vit-b16", tasks=14)
    assert [t.name for t in backbone.tasks][-1] == "cifar100"
    assert backbone.finetuned_id("sun397") == "tanganke/clip-vit-base-patch16_sun397"
    assert backbone.family == "clip"
    with pytest.raises(ValueError, match="unknown task"):
        get_backbone("clip-vit-b32", tasks=["imagenet"])


def test_states_are_lazy_vision_only_and_read_both_key_layouts(clip_hub):
    backbone = make(clip_hub)
    pre = backbone.pretrained_state()
    assert isinstance(pre, LazyStateDict)
    assert not any(k.startswith("text_model") or "projection" in k for k in pre)
    for task in CLIP_TASKS:  # mnist saved by transformers 5 (no prefix), eurosat as v4 did
        task_state = backbone.finetuned_state(task)
        assert list(task_state) == list(pre)
        expected = saved_vision_weights(clip_hub[task])
        assert all(torch.equal(task_state[k], expected[k]) for k in task_state)
        assert any(not torch.equal(task_state[k], pre[k]) for k in pre)


def test_zero_shot_evaluation_matches_clip_forward(clip_hub):
    backbone = make(clip_hub)
    # the test images carry the pre-trained model's own predictions
    assert backbone.evaluate(backbone.pretrained_state(), list(CLIP_TASKS)) == {t: 100.0 for t in CLIP_TASKS}
    # a fine-tuned encoder scores what CLIPModel.forward with its vision weights scores
    state = backbone.finetuned_state("eurosat")
    images = [backbone._split("eurosat", "test").get(i) for i in range(24)]
    logits = reference_clip_logits(clip_hub["pretrained"], [im for im, _ in images], "eurosat", dict(state))
    expected = (
        100.0 * sum(int(p == label) for p, (_, label) in zip(logits.argmax(-1).tolist(), images, strict=True)) / 24
    )
    assert backbone.evaluate(state, ["eurosat"])["eurosat"] == pytest.approx(expected)


def test_head_is_normalised_template_average(clip_hub):
    backbone = make(clip_hub)
    head = backbone.head("eurosat")
    assert head.shape == (10, 16)
    assert torch.allclose(head.norm(dim=-1), torch.ones(10))


def test_merge_evaluate_export_reload(clip_hub, tmp_path):
    backbone = make(clip_hub, max_samples=12)
    pre = backbone.pretrained_state()
    tasks = [backbone.finetuned_state(t) for t in CLIP_TASKS]
    *_, merged = continual_merge(pre, tasks, "nufilt", r_p=8, r_l=4, r_v=4, steps=5, device="cpu")
    scores = backbone.evaluate(merged, list(CLIP_TASKS))
    assert all(0.0 <= s <= 100.0 for s in scores.values())

    card = {"method": "nufilt", "options": {"r_p": 8}, "order": list(CLIP_TASKS), "scores": scores, "acc": 50.0}
    out = save_merged(backbone, merged, tmp_path / "merged", card)
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin"))
    with quiet_transformers():
        reloaded = CLIPVisionModel.from_pretrained(out).eval()
    for key, value in reloaded.state_dict().items():
        assert torch.equal(value, merged[key]), key
    pixels = CLIPImageProcessor.from_pretrained(out)(images=random_images(3, seed=5), return_tensors="pt")
    with torch.no_grad():
        ours = backbone.build_encoder(merged)(**pixels)
        theirs = reloaded(**pixels)
    assert torch.equal(ours.pooler_output, theirs.pooler_output)
    assert torch.equal(ours.last_hidden_state, theirs.last_hidden_state)
    text = (out / "README.md").read_text()
    assert "nufilt" in text and "mnist → eurosat" in text and str(clip_hub["pretrained"]) in text
    assert json.loads((out / "nufilt_merge.json").read_text())["order"] == list(CLIP_TASKS)


def test_activation_batches_yield_encoder_inputs(clip_hub):
    backbone = make(clip_hub, batch_size=5)
    batches = list(backbone.activation_batches("mnist", 7))
    assert [b["pixel_values"].shape[0] for b in batches] == [5, 2]
    encoder = backbone.build_encoder(backbone.pretrained_state())
    with torch.no_grad():
        assert encoder(**batches[0]).last_hidden_state.shape[0] == 5


def test_hub_id_without_network_or_cache_says_what_and_how(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    backbone = get_backbone("clip-vit-b32", tasks=8, cache_dir=tmp_path)
    with pytest.raises(HubUnavailableError) as error:
        backbone.pretrained_state()
    message = str(error.value)
    assert "openai/clip-vit-base-patch32" in message and "local:" in message and "Traceback" not in message
    with pytest.raises(HubUnavailableError, match="tanganke/clip-vit-base-patch32_sun397"):
        backbone.finetuned_state("sun397")


def test_missing_local_split_is_a_clear_error(clip_hub, tmp_path):
    backbone = make(clip_hub)
    backbone.data_dir = tmp_path
    with pytest.raises(FileNotFoundError, match="no local 'test' split for task 'mnist'"):
        backbone.evaluate(backbone.pretrained_state(), ["mnist"])
