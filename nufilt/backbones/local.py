"""`local:<dir>`: a pre-trained model and its fine-tuned task models from local folders.

    <dir>/pretrained/          a `save_pretrained` folder: CLIPModel (vision + text, tokenizer,
                               image processor) or T5ForConditionalGeneration (with tokenizer)
    <dir>/<task>/              one fine-tuned `save_pretrained` folder per task, or
    <dir>/<task>.safetensors   a weights file (.pt/.bin/.pth too); names as the paper's tasks or
                               as the Hub repos (`clip-vit-base-patch32_sun397`, `glue-cola`)
    <dir>/nufilt.json          optional: {"task_specs": [...]} for CLIP tasks beyond the paper's
                               20 (name, classes, templates, dataset), {"model_name": ...} for
                               open_clip

A folder with `open_clip_config.json` (or an open_clip `pretrained.*` file) is read as `openclip:`.
The family comes from `pretrained/config.json`; the backbone is the same class the hub ids use,
so loading, evaluation and export run the same code.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..io import PICKLE_SUFFIXES, read_json
from .base import Backbone
from .clip import ClipBackbone, available_tasks, clip_task_specs, match_task
from .openclip import PRETRAINED_STEMS, TASK_ALIASES, OpenClipBackbone
from .t5 import T5Backbone, glue_task_specs

WEIGHT_SUFFIXES = (".safetensors", *PICKLE_SUFFIXES)
PAPER_COLUMNS = {(768, 32): "ViT-B/32", (768, 16): "ViT-B/16", (1024, 14): "ViT-L/14"}


def _task_entries(root: Path, names: list[str], aliases: dict[str, str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for entry in sorted(root.iterdir()):
        if entry.name in {"pretrained", "nufilt.json"} or entry.name.startswith("."):
            continue
        is_weights = entry.is_file() and entry.suffix in WEIGHT_SUFFIXES
        if not (entry.is_dir() or is_weights):
            continue
        task = match_task(entry.stem if is_weights else entry.name, names, aliases)
        if task is not None and task not in found:
            found[task] = str(entry)
    if not found:
        raise FileNotFoundError(f"{root}: no fine-tuned model named after a known task beside pretrained/")
    return found


def make_backbone(argument: str, **kwargs) -> Backbone:
    root = Path(os.path.expanduser(argument))
    if not root.is_dir():
        raise FileNotFoundError(f"local backbone folder not found: {root}")
    manifest_path = root / "nufilt.json"
    manifest = read_json(manifest_path, "nufilt.json manifest") if manifest_path.is_file() else {}
    if not isinstance(manifest, dict):
        raise ValueError(f"{manifest_path}: expected a JSON object")
    is_open_clip = (root / "open_clip_config.json").is_file() or any(
        (root / f"{stem}{suffix}").is_file() for stem in PRETRAINED_STEMS for suffix in WEIGHT_SUFFIXES
    )
    if is_open_clip:
        if "model_name" in manifest:
            kwargs.setdefault("model_name", manifest["model_name"])
        return OpenClipBackbone(root, **kwargs)

    config_path = root / "pretrained" / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(
            f"{root}: expected a `pretrained/` save_pretrained folder with config.json "
            "(or an open_clip folder with open_clip_config.json); see docs/real-backbones.md"
        )
    config = read_json(config_path, "model config")
    if not isinstance(config, dict):
        raise ValueError(f"{config_path}: expected a JSON object")
    model_type = config.get("model_type")
    name = f"local:{root}"
    if model_type == "clip":
        specs = {**clip_task_specs(), **{s["name"]: s for s in manifest.get("task_specs", [])}}
        found = _task_entries(root, list(specs), TASK_ALIASES)
        vision = config.get("vision_config", {})
        column = PAPER_COLUMNS.get((vision.get("hidden_size"), vision.get("patch_size")))
        kwargs["tasks"] = available_tasks([t for t in specs if t in found], kwargs.get("tasks"))
        kwargs.setdefault("task_specs", manifest.get("task_specs", ()))
        return ClipBackbone(name, model_id=str(root / "pretrained"), finetuned=found, paper_column=column, **kwargs)
    if model_type == "t5":
        found = _task_entries(root, list(glue_task_specs()), {})
        kwargs["tasks"] = available_tasks([t for t in glue_task_specs() if t in found], kwargs.get("tasks"))
        return T5Backbone(name, model_id=str(root / "pretrained"), finetuned=found, **kwargs)
    if model_type == "clip_vision_model":
        raise ValueError(
            f"{config_path}: pretrained/ is a CLIPVisionModel; evaluation needs the text tower for its zero-shot "
            "heads, so put the whole CLIPModel there (as openai/clip-vit-* stores it; the task folders may stay "
            "CLIPVisionModels), or merge without evaluation: python -m nufilt merge"
        )
    raise ValueError(f"{config_path}: model_type {model_type!r} is not supported (clip, t5, or an open_clip folder)")
