"""open_clip vision towers from local checkpoint files (the original task-vector format).

`openclip:<dir>` reads a folder laid out as

    open_clip_config.json        open_clip's own {"model_cfg", "preprocess_cfg"} (or `model_name=`,
                                 a built-in open_clip architecture such as "ViT-B-32-quickgelu")
    pretrained.safetensors       the pre-trained CLIP (also zeroshot.*, open_clip_model.*; .pt/.bin/.pth)
    <task>.safetensors           one fine-tuned model per task (also <task>/finetuned.* or a
                                 <task>/ folder with one weights file); task names as in the paper
                                 or the task-vector repo (SUN397, Cars, ...)
    heads/<task>.safetensors     optional zero-shot heads {"weight": (C, D)}; otherwise built from
                                 the pre-trained text tower, like the transformers CLIP backbone

Weights may be whole-CLIP state dicts or vision-only ones (`visual.`, `model.visual.` prefixes are
recognised). Only the vision tower is merged; its fused `attn.in_proj_weight` is one layer.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ..io import PICKLE_SUFFIXES, LazyStateDict, open_checkpoint, pick_keys, read_json, save_safetensors
from .base import StateDict
from .clip import ClipBackbone, available_tasks, clip_task_specs, match_task, zero_shot_head
from .hub import quiet_transformers

WEIGHT_SUFFIXES = (".safetensors", *PICKLE_SUFFIXES)
PRETRAINED_STEMS = ("pretrained", "zeroshot", "open_clip_model", "open_clip_pytorch_model")
VISUAL_PREFIXES = ("visual.", "model.visual.", "module.visual.", "")
FULL_PREFIXES = ("", "model.", "module.")
TASK_ALIASES = {"cars": "stanford-cars", "flowers102": "oxford_flowers102", "flowers": "oxford_flowers102"}
TASK_ALIASES |= {"pets": "oxford-iiit-pet", "emnist": "emnist_letters", "food": "food101"}


def task_for(stem: str) -> str | None:
    """The paper task a file or folder name stands for (`SUN397`, `Cars`, `oxford_flowers102`)."""
    return match_task(stem, list(clip_task_specs()), TASK_ALIASES)


def _weights_in(folder: Path) -> Path | None:
    preferred = [folder / f"finetuned{suffix}" for suffix in WEIGHT_SUFFIXES]
    found = [p for p in preferred if p.is_file()] or sorted(
        p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file()
    )
    return found[0] if len(found) >= 1 else None


def discover(root: Path) -> tuple[Path, dict[str, Path]]:
    """(pre-trained file, {task: fine-tuned file}) in an open_clip checkpoint folder."""
    pretrained = next(
        (root / f"{stem}{s}" for stem in PRETRAINED_STEMS for s in WEIGHT_SUFFIXES if (root / f"{stem}{s}").is_file()),
        None,
    )
    if pretrained is None:
        raise FileNotFoundError(
            f"{root}: no pre-trained checkpoint (expected one of {', '.join(PRETRAINED_STEMS)} "
            f"with suffix {', '.join(WEIGHT_SUFFIXES)})"
        )
    finetuned: dict[str, Path] = {}
    for entry in sorted(root.iterdir()):
        stem = entry.name[: -len(entry.suffix)] if entry.is_file() else entry.name
        task = task_for(stem)
        if task is None or entry == pretrained or task in finetuned:
            continue
        if entry.is_file() and entry.suffix in WEIGHT_SUFFIXES:
            finetuned[task] = entry
        elif entry.is_dir() and (weights := _weights_in(entry)) is not None:
            finetuned[task] = weights
    if not finetuned:
        raise FileNotFoundError(f"{root}: no fine-tuned checkpoint named after a known task")
    return pretrained, finetuned


def _clip_from_config(model_cfg: Mapping) -> nn.Module:
    import open_clip

    cfg = dict(model_cfg)
    custom = cfg.pop("custom_text", False) or "hf_model_name" in cfg.get("text_cfg", {})
    return (open_clip.CustomTextCLIP if custom else open_clip.CLIP)(**cfg)


class OpenClipBackbone(ClipBackbone):
    """open_clip CLIP vision towers from a local checkpoint folder (see the module docstring)."""

    family = "openclip"

    def __init__(self, root: str | os.PathLike, *, model_name: str | None = None, **kwargs):
        self.root = Path(os.path.expanduser(str(root)))
        if not self.root.is_dir():
            raise FileNotFoundError(f"open_clip checkpoint folder not found: {self.root}")
        self.model_name = model_name
        self.pretrained_file, found = discover(self.root)
        kwargs["tasks"] = available_tasks([t for t in clip_task_specs() if t in found], kwargs.get("tasks"))
        super().__init__(f"openclip:{self.root}", model_id=str(self.root), finetuned=found, **kwargs)

    @functools.cached_property
    def pretrained_dir(self) -> Path:
        return self.root

    @functools.cached_property
    def open_clip_config(self) -> dict:
        """{"model_cfg": ..., "preprocess_cfg": ...} from the folder or a built-in architecture."""
        import open_clip

        path = self.root / "open_clip_config.json"
        if path.is_file() and self.model_name is None:
            config = read_json(path, "open_clip config")
            if not isinstance(config, dict):
                raise ValueError(f"{path}: expected a JSON object")
            return {"model_cfg": config.get("model_cfg", config), "preprocess_cfg": config.get("preprocess_cfg", {})}
        name = self.model_name or "ViT-B-32-quickgelu"
        model_cfg = open_clip.get_model_config(name)
        if model_cfg is None:
            raise ValueError(f"unknown open_clip architecture {name!r}; see open_clip.list_models()")
        return {"model_cfg": model_cfg, "preprocess_cfg": {}}

    @functools.cached_property
    def vision_keys(self) -> list[str]:
        with torch.device("meta"):
            return list(_clip_from_config(self.open_clip_config["model_cfg"]).visual.state_dict())

    def pretrained_state(self) -> LazyStateDict:
        return pick_keys(open_checkpoint(self.pretrained_file), self.vision_keys, VISUAL_PREFIXES)

    def finetuned_state(self, task: str) -> LazyStateDict:
        return pick_keys(open_checkpoint(self.finetuned_id(task)), self.vision_keys, VISUAL_PREFIXES)

    def build_encoder(self, state: StateDict) -> nn.Module:
        with torch.device("meta"):
            visual = _clip_from_config(self.open_clip_config["model_cfg"]).visual
        visual.load_state_dict({k: v.clone() for k, v in state.items()}, strict=True, assign=True)
        return visual.eval()

    def _full_state(self) -> LazyStateDict | None:
        """The whole pre-trained CLIP (text tower included), or None for a vision-only file."""
        with torch.device("meta"):
            keys = list(_clip_from_config(self.open_clip_config["model_cfg"]).state_dict())
        try:
            return pick_keys(open_checkpoint(self.pretrained_file), keys, FULL_PREFIXES)
        except KeyError:
            return None

    @functools.cached_property
    def _text_side(self) -> dict:
        import open_clip

        full = self._full_state()
        if full is None:
            return {"model": None, "logit_scale": 100.0}
        model = _clip_from_config(self.open_clip_config["model_cfg"])
        model.load_state_dict(full.materialize(), strict=True)
        path = self.root / "open_clip_config.json"
        tokenizer_name = f"local-dir:{self.root}" if path.is_file() and self.model_name is None else self.model_name
        with quiet_transformers():
            tokenizer = open_clip.get_tokenizer(tokenizer_name or "ViT-B-32-quickgelu")
        return {
            "model": model.eval().to(self.device),
            "tokenizer": tokenizer,
            "logit_scale": float(model.logit_scale.detach().exp()),
        }

    @torch.no_grad()
    def _embed_text(self, prompts: list[str]) -> torch.Tensor:
        side = self._text_side
        return side["model"].encode_text(side["tokenizer"](prompts).to(self.device))

    def head(self, task: str) -> torch.Tensor:
        if task not in self._heads:
            stored = [self.root / "heads" / f"{name}.safetensors" for name in (task, *self._aliases(task))]
            path = next((p for p in stored if p.is_file()), None)
            if path is not None:
                head = nn.functional.normalize(open_checkpoint(path)["weight"].float(), dim=-1)
            elif self._text_side["model"] is None:
                raise FileNotFoundError(
                    f"{self.pretrained_file} has no text tower, so task {task!r} needs a stored head: "
                    f"{self.root / 'heads' / (task + '.safetensors')} with a (classes, dim) 'weight'"
                )
            else:
                spec = self.specs[task]
                head = zero_shot_head(self._embed_text, spec["classes"], spec["templates"])
            self._heads[task] = head.to(self.device)
        return self._heads[task]

    def _aliases(self, task: str) -> list[str]:
        return [alias for alias, name in TASK_ALIASES.items() if name == task]

    @functools.cached_property
    def _transform(self):
        import open_clip

        model_cfg, preprocess = self.open_clip_config["model_cfg"], self.open_clip_config["preprocess_cfg"]
        size = preprocess.get("size", model_cfg["vision_cfg"].get("image_size", 224))
        return open_clip.image_transform(
            size,
            is_train=False,
            mean=preprocess.get("mean"),
            std=preprocess.get("std"),
            resize_mode=preprocess.get("resize_mode"),
            interpolation=preprocess.get("interpolation"),
        )

    def _preprocess(self, images: list) -> torch.Tensor:
        return torch.stack([self._transform(image) for image in images])

    def _image_features(self, encoder: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
        return encoder(pixels)

    def save_pretrained(self, state: StateDict, out_dir: str | os.PathLike) -> Path:
        """An open_clip folder (`open_clip_config.json` + `open_clip_model.safetensors`) with the
        merged vision tower, loadable by `open_clip.create_model("local-dir:DIR")`."""
        out = Path(out_dir)
        full = self._full_state()
        weights = {k: full[k] for k in full if not k.startswith("visual.")} if full is not None else {}
        weights.update({f"visual.{k}": v for k, v in state.items()})
        save_safetensors(weights, out / "open_clip_model.safetensors")
        (out / "open_clip_config.json").write_text(json.dumps(self.open_clip_config, indent=2) + "\n")
        return out


def make_backbone(argument: str, **kwargs) -> OpenClipBackbone:
    """`openclip:<dir>`: `argument` is the checkpoint folder."""
    return OpenClipBackbone(argument, **kwargs)
