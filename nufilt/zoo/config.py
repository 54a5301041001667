"""`ZooConfig`: everything that determines the embedded zoo (and therefore its cache key)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .tasks import PRETRAIN_TASKS, TASKS


@dataclass(frozen=True)
class ZooConfig:
    """Model, data and training settings of the tiny CLIP-style zoo.

    The fields before `finetune_steps` fix the pre-trained model and the heads of `tasks`; all
    fields fix the fine-tuned models. Changing any field changes the cache key
    (`pretrain_fields` / `finetune_fields`), so an old entry is never reused for a new setting.
    """

    seed: int = 0
    version: int = 1  # bump when a generator or training loop changes behaviour
    tasks: tuple[str, ...] = tuple(spec.name for spec in TASKS)  # the pool, in zoo numbering
    # encoder: a transformers.CLIPVisionModel
    width: int = 128  # hidden size; attention/MLP linears are (width, width) and (4 width, width)
    layers: int = 4
    heads: int = 4
    patch_size: int = 4  # 16x16 images -> 16 patches + CLS token
    # data per task (generated, so sizes are free)
    n_train: int = 2000
    n_test: int = 500
    # pre-training on PRETRAIN_TASKS (never on an evaluation task)
    pretrain_tasks: tuple[str, ...] = tuple(spec.name for spec in PRETRAIN_TASKS)
    pretrain_samples: int = 4000  # per pre-training task
    pretrain_steps: int = 1500
    pretrain_batch: int = 128  # images per step, mixed over the pre-training tasks
    pretrain_lr: float = 1e-3  # AdamW, linear warm-up then cosine decay
    # heads: a few-shot linear probe on pre-trained features, then frozen (zero-shot analog)
    head_shots: int = 4  # labelled examples per class
    head_l2: float = 1.0  # inverse L2 strength of the logistic-regression probe (sklearn's C)
    # fine-tuning: encoder only, heads frozen
    finetune_steps: int = 200
    finetune_batch: int = 64
    finetune_lr: float = 1e-4  # Adam; small steps keep the task vectors "linear", like CLIP's

    def __post_init__(self) -> None:
        positive = ("width", "layers", "heads", "patch_size", "n_train", "n_test", "pretrain_steps")
        for name in positive:
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"ZooConfig.{name} must be positive, got {getattr(self, name)}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        if 16 % self.patch_size:
            raise ValueError(f"patch_size must divide the image size 16, got {self.patch_size}")
        if self.finetune_steps < 0 or self.head_shots < 1:
            raise ValueError("finetune_steps must be >= 0 and head_shots >= 1")
        if not self.tasks or len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"ZooConfig.tasks must be distinct and non-empty, got {self.tasks}")

    def pretrain_fields(self) -> dict:
        """The settings the pre-trained encoder and heads depend on (their cache key)."""
        names = [f.name for f in dataclasses.fields(self)]
        return {name: getattr(self, name) for name in names[: names.index("finetune_steps")]}

    def finetune_fields(self) -> dict:
        """All settings: the key of the fine-tuned models (one folder per task under it)."""
        return dataclasses.asdict(self)

    def replace(self, **changes) -> ZooConfig:
        return dataclasses.replace(self, **changes)


PRESETS: dict[str, ZooConfig] = {
    "default": ZooConfig(),
    # seconds to build: for tests and smoke runs only (accuracies are not meaningful)
    "micro": ZooConfig(
        width=32,
        layers=2,
        heads=2,
        n_train=256,
        n_test=128,
        pretrain_tasks=("position", "blob-size"),
        pretrain_samples=256,
        pretrain_steps=40,
        pretrain_batch=64,
        pretrain_lr=3e-3,
        finetune_steps=30,
        finetune_batch=32,
        finetune_lr=3e-3,
        tasks=("bar-position", "blob-quadrant", "ring-count"),
    ),
}


def resolve_config(preset: str | ZooConfig = "default", **overrides) -> ZooConfig:
    """A preset name or a ZooConfig, with field overrides; ValueError for unknown names."""
    if isinstance(preset, ZooConfig):
        config = preset
    elif preset in PRESETS:
        config = PRESETS[preset]
    else:
        raise ValueError(f"unknown zoo preset {preset!r}; known: {', '.join(PRESETS)}")
    unknown = set(overrides) - {f.name for f in dataclasses.fields(ZooConfig)}
    if unknown:
        raise ValueError(f"unknown ZooConfig fields: {', '.join(sorted(unknown))}")
    return config.replace(**overrides) if overrides else config
