"""Session-wide tiny model folders (built once, read-only for the tests) and their test sets."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F
from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

from nufilt.backbones.clip import clip_task_specs
from nufilt.backbones.hub import quiet_transformers
from tests.backbones.builders import (
    build_clip_hub,
    build_open_clip_folder,
    build_t5_hub,
    random_images,
    write_image_folder,
)

CLIP_TASKS = ("mnist", "eurosat")


def reference_clip_logits(folder, images, task: str, vision_state=None) -> torch.Tensor:
    """Zero-shot logits through `CLIPModel.forward` (independent of the backbone's code path)."""
    with quiet_transformers():
        model = CLIPModel.from_pretrained(folder).eval()
    if vision_state is not None:
        model.vision_model.load_state_dict({k.removeprefix("vision_model."): v for k, v in vision_state.items()})
    tokenizer = AutoTokenizer.from_pretrained(folder)
    processor = CLIPImageProcessor.from_pretrained(folder)
    spec = clip_task_specs()[task]
    prompts = [t.replace("{}", c) for c in spec["classes"] for t in spec["templates"]]
    with torch.no_grad():
        out = model(
            **tokenizer(prompts, padding=True, return_tensors="pt"),
            pixel_values=processor(images=images, return_tensors="pt")["pixel_values"],
        )
    head = F.normalize(out.text_embeds.reshape(len(spec["classes"]), len(spec["templates"]), -1).mean(1), dim=-1)
    return model.logit_scale.exp() * out.image_embeds @ head.T


@pytest.fixture(scope="session")
def clip_hub(tmp_path_factory):
    """{"root", "pretrained", <task>: folder, "data": folder}; test images are labelled with the
    pre-trained model's own zero-shot predictions (clear margins only), so it scores 100%."""
    root = tmp_path_factory.mktemp("clip_hub")
    paths = build_clip_hub(root, CLIP_TASKS)
    for i, task in enumerate(CLIP_TASKS):
        images = random_images(60, seed=10 + i)
        logits = reference_clip_logits(paths["pretrained"], images, task)
        top2 = logits.topk(2, dim=-1).values
        keep = [j for j in range(len(images)) if top2[j, 0] - top2[j, 1] > 1e-2][:24]
        write_image_folder(root / "data" / task / "test", [images[j] for j in keep], logits.argmax(-1)[keep].tolist())
    return {"root": root, "data": root / "data", **paths}


@pytest.fixture(scope="session")
def t5_hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("t5_hub")
    return {"root": root, **build_t5_hub(root, ("cola", "stsb"))}


@pytest.fixture(scope="session")
def open_clip_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("open_clip") / "checkpoints"
    return {"root": root, **build_open_clip_folder(root, ("SUN397", "Cars"))}
