"""`tiny-vit`: the embedded offline zoo (see `nufilt.zoo`) behind the `Backbone` interface.

The zoo is built on first use (minutes for 20 tasks on 2 CPU cores, seconds for the `micro`
preset) and cached under `cache_dir`; later runs load it in seconds.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import nn

from ..zoo.build import (
    ProgressFn,
    TaskData,
    accuracy,
    build_zoo,
    encoder_from_state,
    ensure_heads,
    ensure_pretrained,
    ensure_task,
    features,
    head_logits,
    load_heads,
    load_state,
    torch_threads,
)
from ..zoo.config import ZooConfig, resolve_config
from ..zoo.tasks import task_spec
from .base import Backbone, StateDict, TaskInfo


def recommended_options(width: int) -> dict[str, dict]:
    """Zoo-scaled method options, merged over `paper_options` by the CLI and the app.

    NUFILT's paper ranks (r_p=128, r_l=64) are sized for ViT-B's d_in=768; at the zoo's width
    they would filter most of the input space (r_p = d_in makes P = 0). They are scaled to the
    same share of d_in (1/6 and 1/12): r_p = width/6, r_l = width/12; r_v stays 8.
    """
    return {"nufilt": {"r_p": max(1, width // 6), "r_l": max(1, width // 12), "r_v": 8}}


class TinyViTBackbone(Backbone):
    """A tiny `transformers.CLIPVisionModel` zoo on generated 16x16 tasks."""

    name = "tiny-vit"
    family = "clip"

    def __init__(
        self,
        config: ZooConfig,
        n_tasks: int | None = None,
        cache_dir: str | Path | None = None,
        progress: ProgressFn | None = None,
        threads: int | None = None,
        eval_batch: int = 2048,
        build_workers: int | None = 1,
    ) -> None:
        pool = config.tasks
        if n_tasks is None:
            n_tasks = len(pool)
        if isinstance(n_tasks, bool) or not isinstance(n_tasks, int) or not 1 <= n_tasks <= len(pool):
            raise ValueError(f"n_tasks must be an integer in 1..{len(pool)} for this zoo, got {n_tasks!r}")
        self.config = config
        self.cache_dir = cache_dir
        self.threads = threads
        self.eval_batch = eval_batch
        self.build_workers = build_workers  # processes for fine-tuning missing tasks (None: automatic)
        self.recommended_options = recommended_options(config.width)
        self._progress = progress or (lambda message, fraction: None)
        self._names = list(pool[:n_tasks])
        self._data = TaskData(config)
        self._pretrained: dict[str, torch.Tensor] | None = None
        self._heads: dict | None = None
        self._encoder: nn.Module | None = None
        self._tasks = [
            TaskInfo(
                name=name,
                classes=task_spec(name).classes,
                paper_id=position,
                extra={"description": task_spec(name).description},
            )
            for position, name in enumerate(self._names, start=1)
        ]

    # ------------------------------------------------------------ building and loading

    def prepare(self, progress: ProgressFn | None = None) -> dict:
        """Build (or verify) every model of this backbone's tasks; returns the zoo manifest."""
        with torch_threads(self.threads):
            return build_zoo(self.config, self._names, self.cache_dir, progress or self._progress, self.build_workers)

    def _pretrained_folder(self) -> Path:
        with torch_threads(self.threads):
            return ensure_pretrained(self.config, self.cache_dir, self._data, self._progress)

    @property
    def tasks(self) -> list[TaskInfo]:
        return list(self._tasks)

    def pretrained_state(self) -> dict[str, torch.Tensor]:
        if self._pretrained is None:
            self._pretrained = load_state(self._pretrained_folder() / "encoder")
        return dict(self._pretrained)

    def finetuned_state(self, task: str) -> dict[str, torch.Tensor]:
        self.task(task)  # ValueError for unknown names
        with torch_threads(self.threads):
            folder = ensure_task(self.config, task, self.cache_dir, self._data, self._progress)
        return load_state(folder / "encoder")

    def heads(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """The frozen head of each task: (weight (classes, width), bias), on normalised features."""
        if self._heads is None:
            with torch_threads(self.threads):
                folder = ensure_heads(self.config, self.cache_dir, self._data, self._progress)
            self._heads = load_heads(folder)
        return self._heads

    # ------------------------------------------------------------ evaluation

    def build_encoder(self, state: StateDict) -> nn.Module:
        return encoder_from_state(self.config, state)

    @torch.inference_mode()
    def evaluate(self, state: StateDict, tasks: Sequence[str]) -> dict[str, float]:
        """Test accuracy (percent) of `state` with each task's frozen head, one batched pass."""
        names = list(tasks)
        for name in names:
            self.task(name)
        if not names:
            return {}
        if self._encoder is None:
            self._encoder = encoder_from_state(self.config, state)
        else:
            self._encoder.load_state_dict(dict(state))
        splits = [self.test_split(name) for name in names]
        images = torch.cat([x for x, _ in splits])
        with torch_threads(self.threads):
            feats = features(self._encoder, images, self.eval_batch)
        heads, scores, start = self.heads(), {}, 0
        for name, (_, labels) in zip(names, splits, strict=True):
            part = feats[start : start + len(labels)]
            scores[name] = accuracy(head_logits(part, heads[name]), labels)
            start += len(labels)
        return scores

    def test_split(self, task: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, labels) of `task`'s test split, generated on first use and kept."""
        self.task(task)
        return self._data.get(task, "test")

    def warm_evaluation(self, tasks: Sequence[str]) -> None:
        """Generate the test splits of `tasks` now (one task's generator takes ~0.8 s)."""
        for name in tasks:
            self.test_split(name)

    def reference(self) -> dict[str, dict[str, float]]:
        """Pre-trained and individual test accuracies, as recorded when the zoo was built."""
        manifest = self.prepare()
        return {
            "pretrained": {t["name"]: t["pretrained_accuracy"] for t in manifest["tasks"]},
            "individual": {t["name"]: t["individual_accuracy"] for t in manifest["tasks"]},
        }

    def activation_batches(self, task: str, n_samples: int, split: str = "test") -> Iterator[dict[str, torch.Tensor]]:
        self.task(task)
        images, _ = self._data.get(task, split)
        if not 1 <= n_samples <= len(images):
            raise ValueError(f"n_samples must be in 1..{len(images)} for task {task!r}, got {n_samples}")
        for start in range(0, n_samples, self.eval_batch):
            yield {"pixel_values": images[start : min(n_samples, start + self.eval_batch)]}


def make_backbone(
    argument: str = "tiny-vit",
    *,
    n_tasks: int | None = None,
    preset: str | ZooConfig | None = None,
    cache_dir: str | Path | None = None,
    progress: ProgressFn | None = None,
    threads: int | None = None,
    build_workers: int | None = 1,
    **config_overrides,
) -> TinyViTBackbone:
    """The embedded zoo with its first `n_tasks` tasks (8, 14 or 20: the paper's groups; all if None).

    `preset` is "default", "micro", "quick" or a `ZooConfig` (None: `$NUFILT_ZOO_PRESET`, else
    "default"); other keyword arguments override its fields.
    `build_workers`: processes that fine-tune missing task models in `prepare()` (None: up to two
    CPUs, `$NUFILT_BUILD_WORKERS`; the CLI and the app use None).
    """
    config = resolve_config(preset, **config_overrides)
    return TinyViTBackbone(config, n_tasks, cache_dir, progress, threads, build_workers=build_workers)
