"""`ZooConfig`: everything that determines the embedded zoo (and therefore its cache keys)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .tasks import PRETRAIN_TASKS, TASKS

HEAD_KINDS = ("prototype", "logistic")
NEUTRAL_FIELDS = {"channels": 1}  # left out of the stage keys at this value (see `stage_fields`)


@dataclass(frozen=True)
class ZooConfig:
    """Model, data and training settings of the tiny CLIP-style zoo, in three stages.

    Fields up to `pretrain_lr` fix the pre-trained encoder; up to `head_scale` also the frozen
    heads; all fields fix the fine-tuned models. Each stage is cached under a hash of its fields
    (`stage_fields`), so changing e.g. the fine-tuning lr reuses the pre-trained encoder.
    """

    seed: int = 0
    version: int = 4  # bump when a generator or training loop changes behaviour
    # encoder: a transformers.CLIPVisionModel on 16x16 grey images
    width: int = 256  # hidden size; attention/MLP linears are (width, width) and (4 width, width)
    layers: int = 4
    attention_heads: int = 4
    patch_size: int = 8  # 2x2 patches + CLS token: a wide, cheap encoder (see README)
    # input channels: 1 = grey; C > 1 renders each evaluation task in its own mix of C channels and
    # each pre-training image in a random mix (a study lever: tasks with different input statistics)
    channels: int = 1
    # pre-training on PRETRAIN_TASKS (never on an evaluation task), one discarded head each
    pretrain_tasks: tuple[str, ...] = tuple(spec.name for spec in PRETRAIN_TASKS)
    pretrain_samples: int = 4000  # per pre-training task
    pretrain_steps: int = 800
    pretrain_batch: int = 128  # images per step, mixed over the pre-training tasks
    pretrain_lr: float = 1e-3  # AdamW, linear warm-up then cosine decay
    # evaluation tasks and their frozen heads (the analog of CLIP's zero-shot text heads)
    tasks: tuple[str, ...] = tuple(spec.name for spec in TASKS)  # the pool, in zoo numbering
    n_train: int = 2000  # generated training images per task
    n_test: int = 250  # test images per task (evaluation cost is linear in it)
    head_kind: str = "prototype"  # "prototype": class means; "logistic": a regularised probe
    head_shots: int = 4  # labelled examples per class the head is fitted on
    head_scale: float = 15.0  # logit scale on L2-normalised features (CLIP: 100; see README)
    # fine-tuning: encoder only, heads frozen, Adam with cosine decay
    # gentle and twice as long as the first default (3e-4 x 200): the models forget less when merged
    # and NUFILT leads OPCM by more, at 1.4 points of individual accuracy (docs/benchmark.md)
    finetune_steps: int = 400
    finetune_batch: int = 32
    finetune_lr: float = 1e-4

    def __post_init__(self) -> None:
        positive = ("width", "layers", "attention_heads", "patch_size", "channels", "n_train", "n_test")
        for name in (*positive, "pretrain_steps", "pretrain_batch", "head_shots", "finetune_batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"ZooConfig.{name} must be a positive integer, got {value!r}")
        if self.width % self.attention_heads:
            raise ValueError(f"width {self.width} is not divisible by attention_heads {self.attention_heads}")
        if 16 % self.patch_size:
            raise ValueError(f"patch_size must divide the image size 16, got {self.patch_size}")
        if self.finetune_steps < 0:
            raise ValueError(f"finetune_steps must be >= 0, got {self.finetune_steps}")
        if self.head_kind not in HEAD_KINDS:
            raise ValueError(f"head_kind must be one of {HEAD_KINDS}, got {self.head_kind!r}")
        for name in ("tasks", "pretrain_tasks"):
            names = getattr(self, name)
            if not names or len(set(names)) != len(names):
                raise ValueError(f"ZooConfig.{name} must be distinct and non-empty, got {names}")
        if set(self.tasks) & set(self.pretrain_tasks):
            raise ValueError("pre-training tasks must differ from the evaluation tasks")

    def stage_fields(self, stage: str) -> dict:
        """The fields a stage depends on: "pretrain" (encoder), "heads" or "finetune" (all)."""
        names = [f.name for f in dataclasses.fields(self)]
        ends = {"pretrain": "tasks", "heads": "finetune_steps", "finetune": None}
        if stage not in ends:
            raise ValueError(f"stage must be one of {tuple(ends)}, got {stage!r}")
        end = ends[stage]
        kept = names if end is None else names[: names.index(end)]
        # fields added after caches and shipped encoders were made leave the key unchanged at
        # their neutral value, so those stay valid
        return {name: getattr(self, name) for name in kept
                if not (name in NEUTRAL_FIELDS and getattr(self, name) == NEUTRAL_FIELDS[name])}

    def replace(self, **changes) -> ZooConfig:
        return dataclasses.replace(self, **changes)


PRESETS: dict[str, ZooConfig] = {
    "default": ZooConfig(),
    # seconds to build: for tests and smoke runs only (accuracies are not meaningful)
    "micro": ZooConfig(
        width=32,
        layers=2,
        attention_heads=2,
        patch_size=4,
        pretrain_tasks=("position", "blob-size"),
        pretrain_samples=256,
        pretrain_steps=80,
        pretrain_batch=64,
        pretrain_lr=3e-3,
        tasks=("bar-position", "blob-quadrant", "ring-count"),
        n_train=256,
        n_test=128,
        head_scale=30.0,
        finetune_steps=40,
        finetune_batch=32,
        finetune_lr=3e-3,
    ),
}
# the micro settings over the whole 20-task pool: every documented command runs on it in seconds
# to minutes (tests/test_docs.py); a smoke-test zoo, not a benchmark
PRESETS["quick"] = PRESETS["micro"].replace(tasks=ZooConfig().tasks, n_test=48)

ENV_PRESET = "NUFILT_ZOO_PRESET"


def default_preset() -> str:
    """`$NUFILT_ZOO_PRESET` if set, else "default": the preset the CLI, the app and
    `get_backbone("tiny-vit")` use when none is named."""
    import os

    return os.environ.get(ENV_PRESET, "").strip() or "default"


def resolve_config(preset: str | ZooConfig | None = "default", **overrides) -> ZooConfig:
    """A preset name or a ZooConfig, with field overrides; ValueError for unknown names."""
    if preset is None:
        preset = default_preset()
    if isinstance(preset, ZooConfig):
        config = preset
    elif isinstance(preset, str) and preset in PRESETS:
        config = PRESETS[preset]
    else:
        raise ValueError(f"unknown zoo preset {preset!r}; known: {', '.join(PRESETS)}")
    unknown = set(overrides) - {f.name for f in dataclasses.fields(ZooConfig)}
    if unknown:
        raise ValueError(f"unknown ZooConfig fields: {', '.join(sorted(unknown))}")
    return config.replace(**overrides) if overrides else config
