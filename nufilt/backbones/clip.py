"""CLIP (transformers) backbones: ViT-B/32, B/16, L/14 and their fine-tuned vision encoders.

Pre-trained `openai/clip-vit-*`; fine-tuned `tanganke/clip-vit-<arch>_<task>` (CLIPVisionModel)
for the paper's 20 tasks. Only the vision encoder is merged. Each task's zero-shot head comes from
the pre-trained text tower: every prompt template per class name is embedded and L2-normalised,
the templates are averaged and the mean renormalised; logits = logit_scale.exp() x cosine between
projected image features and the head rows. Class names, templates and test-set ids are data
(`nufilt/data/clip_tasks.json`); `data_dir=` replaces the Hub test sets by local image folders.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from ..io import LazyStateDict, open_checkpoint, pick_keys
from .base import Backbone, StateDict, TaskInfo
from .hub import (
    load_hf_dataset,
    pick_device,
    quiet_transformers,
    require_tokenizer,
    resolve_model_dir,
    resolve_weights,
    seeded_subset,
)

ARCHITECTURES = {  # spec -> (pre-trained hub id, arch in the fine-tuned ids, paper column prefix)
    "clip-vit-b32": ("openai/clip-vit-base-patch32", "base-patch32", "ViT-B/32"),
    "clip-vit-b16": ("openai/clip-vit-base-patch16", "base-patch16", "ViT-B/16"),
    "clip-vit-l14": ("openai/clip-vit-large-patch14", "large-patch14", "ViT-L/14"),
}
FINETUNED_PATTERN = "tanganke/clip-vit-{arch}_{task}"
VISION_PREFIXES = ("", "vision_model.")  # CLIPVisionModel (transformers 5) / CLIPModel, v4 files
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_IMAGE_COLUMNS = ("image", "img", "jpg", "png", "pixel_values")
_LABEL_COLUMNS = ("label", "labels", "fine_label", "cls")


@functools.cache
def clip_task_specs() -> dict[str, dict]:
    """name -> {paper_id, dataset, config?, split, classes, templates} for the 20 paper tasks."""
    text = resources.files("nufilt.data").joinpath("clip_tasks.json").read_text(encoding="utf-8")
    return {spec["name"]: spec for spec in json.loads(text)["tasks"]}


def select_tasks(specs: Mapping[str, dict], tasks: Sequence[str] | int | str | None) -> list[str]:
    """Task names: all (None), the first n in paper order (8, 14, 20), or a list of names."""
    ordered = sorted(specs, key=lambda name: (specs[name].get("paper_id") or 1e9, name))
    if tasks is None:
        return ordered
    if isinstance(tasks, int) or (isinstance(tasks, str) and tasks.isdigit()):
        n = int(tasks)
        if not 1 <= n <= len(ordered):
            raise ValueError(f"tasks={tasks!r}: this backbone has {len(ordered)} tasks")
        return ordered[:n]
    names = [tasks] if isinstance(tasks, str) else list(tasks)
    unknown = [name for name in names if name not in specs]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; known: {', '.join(ordered)}")
    return names


def available_tasks(found: Sequence[str], tasks: Sequence[str] | int | str | None) -> list[str]:
    """`tasks` (None: all, n: the first n, or names) among the tasks a folder holds, in order."""
    return select_tasks({name: {"paper_id": i} for i, name in enumerate(found, start=1)}, tasks)


def match_task(stem: str, names: Sequence[str], aliases: Mapping[str, str] | None = None) -> str | None:
    """The task a file or folder is named after: `SUN397`, `Cars`, `clip-vit-base-patch32_kmnist`.

    Names are compared lower-case without punctuation; the longest task name (or alias) the stem
    ends with wins, so `..._kmnist` is KMNIST, not MNIST.
    """
    candidates = {_norm(name): name for name in names}
    candidates |= {_norm(alias): name for alias, name in (aliases or {}).items() if name in names}
    key = _norm(stem)
    matches = [k for k in candidates if key.endswith(k)]
    return candidates[max(matches, key=len)] if matches else None


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


# ---------------------------------------------------------------------------- image test sets


class ImageFolderSplit:
    """`<root>/<label index>/<image>` -> (PIL image, label); the offline stand-in for a Hub set."""

    def __init__(self, root: Path):
        self.items: list[tuple[Path, int]] = []
        for folder in sorted(root.iterdir(), key=lambda p: p.name):
            if not folder.is_dir():
                continue
            if not folder.name.isdigit():
                raise ValueError(f"{root}: class folders must be label indices (0, 1, ...), got {folder.name!r}")
            for image in sorted(folder.iterdir()):
                if image.suffix.lower() in IMAGE_SUFFIXES:
                    self.items.append((image, int(folder.name)))
        if not self.items:
            raise ValueError(f"no images under {root}")

    def __len__(self) -> int:
        return len(self.items)

    def get(self, index: int):
        from PIL import Image

        path, label = self.items[index]
        with Image.open(path) as image:
            return image.convert("RGB"), label


class HubImageSplit:
    """A Hugging Face `datasets` split with an image and a label column."""

    def __init__(self, spec: Mapping, split: str, cache_dir: str | None):
        self.data = load_hf_dataset(spec["dataset"], spec.get("config"), split, cache_dir)
        columns = self.data.column_names
        self.image_column = spec.get("image_column") or next((c for c in _IMAGE_COLUMNS if c in columns), None)
        self.label_column = spec.get("label_column") or next((c for c in _LABEL_COLUMNS if c in columns), None)
        if self.image_column not in columns or self.label_column not in columns:
            raise ValueError(f"{spec['dataset']}: no image/label columns among {columns}")

    def __len__(self) -> int:
        return len(self.data)

    def get(self, index: int):
        row = self.data[index]
        return row[self.image_column].convert("RGB"), int(row[self.label_column])


def open_image_split(spec: Mapping, split: str, data_dir: str | os.PathLike | None, cache_dir: str | None):
    """The local folder `<data_dir>/<task>/<split>` when given, else the Hub dataset."""
    if data_dir is not None:
        root = Path(data_dir) / spec["name"] / split
        if not root.is_dir():
            raise FileNotFoundError(f"no local {split!r} split for task {spec['name']!r}: {root} is missing")
        return ImageFolderSplit(root)
    return HubImageSplit(spec, spec.get("split", "test") if split == "test" else split, cache_dir)


def image_batches(
    data, preprocess, batch_size: int, max_samples: int | None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(pixels (B, 3, H, W), labels (B,)) over a fixed seeded subset of `data`."""
    indices = seeded_subset(len(data), max_samples)
    for start in range(0, len(indices), batch_size):
        images, labels = zip(*(data.get(i) for i in indices[start : start + batch_size]), strict=True)
        yield preprocess(list(images)), torch.tensor(labels)


def zero_shot_head(embed_text, classes: Sequence[str], templates: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """(C, D) head: per class, the renormalised mean of the normalised template embeddings."""
    prompts = [template.replace("{}", name) for name in classes for template in templates]
    chunks = [embed_text(prompts[i : i + batch_size]) for i in range(0, len(prompts), batch_size)]
    embeddings = nn.functional.normalize(torch.cat(chunks).float(), dim=-1)
    per_class = embeddings.reshape(len(classes), len(templates), -1).mean(dim=1)
    return nn.functional.normalize(per_class, dim=-1)


def classification_accuracy(logit_batches: Iterator[tuple[torch.Tensor, torch.Tensor]]) -> float:
    correct = total = 0
    for logits, labels in logit_batches:
        correct += int((logits.argmax(dim=-1).cpu() == labels).sum())
        total += len(labels)
    return 100.0 * correct / max(total, 1)


# ---------------------------------------------------------------------------- the backbone


class ClipBackbone(Backbone):
    """CLIP ViT vision encoders from the Hub or local `save_pretrained` folders."""

    family = "clip"

    def __init__(
        self,
        name: str,
        *,
        model_id: str,
        finetuned_pattern: str = FINETUNED_PATTERN,
        finetuned: Mapping[str, str] | None = None,
        arch: str = "",
        paper_column: str | None = None,
        tasks: Sequence[str] | int | str | None = None,
        task_specs: Sequence[Mapping] = (),
        data_dir: str | os.PathLike | None = None,
        cache_dir: str | os.PathLike | None = None,
        device: str = "auto",
        batch_size: int | None = None,
        max_samples: int | None = None,
    ):
        self.name = name
        self.model_id = str(model_id)
        self.finetuned_pattern = finetuned_pattern
        self.finetuned_paths = dict(finetuned or {})
        self.arch = arch
        self.paper_column = paper_column
        self.specs = {**clip_task_specs(), **{spec["name"]: dict(spec) for spec in task_specs}}
        self.task_names = select_tasks(self.specs, tasks)
        self.data_dir = data_dir
        self.cache_dir = None if cache_dir is None else str(cache_dir)
        self.device = pick_device(device)
        self.batch_size = batch_size or (256 if self.device.type == "cuda" else 32)
        self.max_samples = max_samples
        self._heads: dict[str, torch.Tensor] = {}
        self._splits: dict[tuple[str, str, str], object] = {}  # opened once: evaluation repeats per step

    # -- loading
    @functools.cached_property
    def pretrained_dir(self) -> Path:
        return resolve_model_dir(self.model_id, cache_dir=self.cache_dir, what="pre-trained CLIP model")

    @functools.cached_property
    def config(self):
        from transformers import CLIPConfig

        return CLIPConfig.from_pretrained(self.pretrained_dir)

    @functools.cached_property
    def vision_keys(self) -> list[str]:
        """The state-dict keys of a CLIPVisionModel under the installed transformers."""
        from transformers import CLIPVisionModel

        with torch.device("meta"), quiet_transformers():
            return list(CLIPVisionModel(self.config.vision_config).state_dict())

    def _finetuned_path(self, task: str) -> Path:
        return resolve_weights(self.finetuned_id(task), cache_dir=self.cache_dir, what=f"fine-tuned model for {task!r}")

    def prepare(self) -> None:
        """Find (or fetch) every model and check its weight names up front, so a run fails early."""
        self.pretrained_state()
        for task in self.task_names:
            self.finetuned_state(task)

    def pretrained_state(self) -> LazyStateDict:
        return pick_keys(open_checkpoint(self.pretrained_dir), self.vision_keys, VISION_PREFIXES)

    def finetuned_id(self, task: str) -> str:
        if task not in self.task_names:
            known = ", ".join(self.task_names)
            raise ValueError(f"unknown task {task!r} for backbone {self.name!r}; known tasks: {known}")
        if task in self.finetuned_paths:
            return str(self.finetuned_paths[task])
        return self.finetuned_pattern.format(task=task, arch=self.arch)

    def finetuned_state(self, task: str) -> LazyStateDict:
        return pick_keys(open_checkpoint(self._finetuned_path(task)), self.vision_keys, VISION_PREFIXES)

    @property
    def tasks(self) -> list[TaskInfo]:
        return [
            TaskInfo(
                name=name,
                classes=tuple(self.specs[name]["classes"]),
                paper_id=self.specs[name].get("paper_id"),
                extra={"dataset": self.specs[name].get("dataset"), "finetuned": self.finetuned_id(name)},
            )
            for name in self.task_names
        ]

    def build_encoder(self, state: StateDict) -> nn.Module:
        from transformers import CLIPVisionModel

        with _no_init(), quiet_transformers():
            model = CLIPVisionModel(self.config.vision_config)
        model.load_state_dict(dict(state), strict=True)
        return model.eval()

    # -- evaluation
    @functools.cached_property
    def _text_side(self) -> dict:
        """Tokenizer, text tower + projection, visual projection and logit scale (pre-trained)."""
        from transformers import AutoTokenizer, CLIPModel

        with quiet_transformers():
            model = CLIPModel.from_pretrained(self.pretrained_dir)
            tokenizer = AutoTokenizer.from_pretrained(require_tokenizer(self.pretrained_dir))
        return {
            "tokenizer": tokenizer,
            "text_model": model.text_model.eval().to(self.device),
            "text_projection": model.text_projection.eval().to(self.device),
            "visual_projection": model.visual_projection.eval().to(self.device),
            "logit_scale": float(model.logit_scale.detach().exp()),
            "max_length": int(self.config.text_config.max_position_embeddings),
        }

    @torch.no_grad()
    def _embed_text(self, prompts: list[str]) -> torch.Tensor:
        side = self._text_side
        tokens = side["tokenizer"](
            prompts, padding=True, truncation=True, max_length=side["max_length"], return_tensors="pt"
        ).to(self.device)
        pooled = side["text_model"](**tokens).pooler_output
        return side["text_projection"](pooled)

    def head(self, task: str) -> torch.Tensor:
        """The (C, D) zero-shot head of `task`, on the evaluation device."""
        if task not in self._heads:
            spec = self.specs[task]
            self._heads[task] = zero_shot_head(self._embed_text, spec["classes"], spec["templates"]).to(self.device)
        return self._heads[task]

    @functools.cached_property
    def image_processor(self):
        from transformers import CLIPImageProcessor

        with quiet_transformers():
            return CLIPImageProcessor.from_pretrained(self.pretrained_dir)

    def _preprocess(self, images: list) -> torch.Tensor:
        return self.image_processor(images=images, return_tensors="pt")["pixel_values"]

    def _split(self, task: str, split: str):
        key = (task, split, str(self.data_dir))
        if key not in self._splits:
            self._splits[key] = open_image_split(self.specs[task], split, self.data_dir, self.cache_dir)
        return self._splits[key]

    def _logits(self, encoder: nn.Module, task: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        head, scale = self.head(task), self._text_side["logit_scale"]
        batches = image_batches(self._split(task, "test"), self._preprocess, self.batch_size, self.max_samples)
        for pixels, labels in batches:
            features = nn.functional.normalize(self._image_features(encoder, pixels.to(self.device)), dim=-1)
            yield scale * features @ head.T, labels

    def _image_features(self, encoder: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
        """Projected image embeddings (B, D), before normalisation."""
        return self._text_side["visual_projection"](encoder(pixel_values=pixels).pooler_output)

    @torch.no_grad()
    def evaluate(self, state: StateDict, tasks: Sequence[str]) -> dict[str, float]:
        encoder = self.build_encoder(state).to(self.device)
        return {task: classification_accuracy(self._logits(encoder, task)) for task in tasks}

    def activation_batches(self, task: str, n_samples: int, split: str = "test") -> Iterator[dict[str, torch.Tensor]]:
        self.task(task)
        seen = 0
        for pixels, _ in image_batches(self._split(task, split), self._preprocess, self.batch_size, n_samples):
            yield {"pixel_values": pixels}
            seen += len(pixels)
            if seen >= n_samples:
                return

    # -- export
    def save_pretrained(self, state: StateDict, out_dir: str | os.PathLike) -> Path:
        """A CLIPVisionModel folder (config, safetensors weights, image processor config)."""
        out = Path(out_dir)
        with quiet_transformers():
            self.build_encoder(state).save_pretrained(out, safe_serialization=True)
            self.image_processor.save_pretrained(out)
        return out


@contextlib.contextmanager
def _no_init() -> Iterator[None]:
    """transformers' `no_init_weights` where it exists: skip a random init we overwrite anyway."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:
        from transformers.modeling_utils import no_init_weights
    with no_init_weights():
        yield


def make_backbone(argument: str, **kwargs) -> ClipBackbone:
    """`clip-vit-b32|b16|l14`; `model_id=` / `finetuned_pattern=` may name local folders."""
    if argument not in ARCHITECTURES:
        raise ValueError(f"unknown CLIP backbone {argument!r}; known: {', '.join(ARCHITECTURES)}")
    model_id, arch, column = ARCHITECTURES[argument]
    kwargs.setdefault("model_id", model_id)
    kwargs.setdefault("arch", arch)
    kwargs.setdefault("paper_column", column)
    return ClipBackbone(argument, **kwargs)
