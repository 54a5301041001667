"""The embedded offline benchmark: generated tasks and a tiny CLIP-style model zoo."""

from .build import build_zoo, ensure_heads, ensure_pretrained, ensure_task
from .config import PRESETS, ZooConfig, resolve_config
from .tasks import PRETRAIN_TASKS, TASK_GROUPS, TASKS, TaskSpec, make_split, stable_seed, task_spec

__all__ = [
    "PRESETS",
    "PRETRAIN_TASKS",
    "TASKS",
    "TASK_GROUPS",
    "TaskSpec",
    "ZooConfig",
    "build_zoo",
    "ensure_heads",
    "ensure_pretrained",
    "ensure_task",
    "make_split",
    "resolve_config",
    "stable_seed",
    "task_spec",
]
