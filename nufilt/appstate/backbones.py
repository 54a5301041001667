"""Backbone choices for the app: the embedded zoo or a hub/local backbone, opened and described."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..analysis.runs import CachedBackbone
from ..backbones import EMBEDDED, get_backbone
from ..backbones.base import Backbone, DelegatingBackbone, StateDict
from ..merge import resolve_device
from ..paper import PAPER_GROUPS
from ..threads import ENV_THREADS, default_threads
from ..zoo.config import default_preset

ProgressFn = Callable[[str, float], None]
BUILD_LOCK = threading.RLock()  # one build at a time: they compete for the same cores
ProgressFn = Callable[[str, float], None]


@dataclass(frozen=True)
class BackboneChoice:
    """A backbone the Setup page lists, with what it needs to run."""

    spec: str  # registry spec; "openclip:" / "local:" take a folder after the colon
    label: str
    needs: str
    offline: bool = False

    @property
    def takes_path(self) -> bool:
        return self.spec.endswith(":")


BACKBONE_CHOICES: tuple[BackboneChoice, ...] = (
    BackboneChoice(EMBEDDED, "tiny-vit (embedded, offline)",
                   "nothing: a tiny CLIP-style ViT zoo on generated 16x16 tasks, built on this machine the "
                   "first time from the shipped pre-trained encoder (about 1.5 minutes for 8 tasks, 3.5 for all 20, "
                   "measured on 2 idle CPU cores; progress shown) and cached", offline=True),
    BackboneChoice("clip-vit-b32", "CLIP ViT-B/32 (Hugging Face Hub)",
                   "Hub access (or the local HF cache) for openai/clip-vit-base-patch32, the 20 fine-tuned "
                   "tanganke/clip-vit-base-patch32_<task> models, and the test sets through `pip install datasets` "
                   "(or a local data folder)"),
    BackboneChoice("clip-vit-b16", "CLIP ViT-B/16 (Hugging Face Hub)",
                   "Hub access (or the local HF cache) for openai/clip-vit-base-patch16 and "
                   "tanganke/clip-vit-base-patch16_<task> models, and the test sets (`pip install datasets`)"),
    BackboneChoice("clip-vit-l14", "CLIP ViT-L/14 (Hugging Face Hub)",
                   "Hub access (or the local HF cache) for openai/clip-vit-large-patch14 and "
                   "tanganke/clip-vit-large-patch14_<task> models (~1.2 GB each), and the test sets "
                   "(`pip install datasets`)"),
    BackboneChoice("flan-t5-base", "Flan-T5-base, 8 GLUE tasks (Hugging Face Hub)",
                   "Hub access (or the local HF cache) for google/flan-t5-base, the tanganke/flan-t5-base_glue-<task> "
                   "models, and the GLUE validation sets (`pip install datasets`)"),
    BackboneChoice("openclip:", "open_clip checkpoint folder",
                   "a local folder with the pre-trained open_clip checkpoint and one checkpoint per task "
                   "(see docs/real-backbones.md); test sets from the Hub or a data folder"),
    BackboneChoice("local:", "local save_pretrained folder",
                   "a local folder with pretrained/ (save_pretrained) and one fine-tuned folder per task "
                   "(see docs/real-backbones.md); test sets from the Hub or a data folder"),
)


def backbone_choice(spec: str) -> BackboneChoice:
    for choice in BACKBONE_CHOICES:
        if spec == choice.spec or (choice.takes_path and spec.startswith(choice.spec)):
            return choice
    raise ValueError(f"unknown backbone {spec!r}; known: {', '.join(c.spec for c in BACKBONE_CHOICES)}")


def zoo_preset() -> str:
    """The embedded zoo preset the app uses: `$NUFILT_ZOO_PRESET` or "default"."""
    return default_preset()


class AppBackbone(DelegatingBackbone):
    """A backbone as the app uses it: evaluation thread-safe and optionally on fewer test inputs.

    The app shares one backbone between sessions, the background build and the methods of a
    step (stepped in parallel threads, `MultiRun.workers`). The embedded backbone's own
    `evaluate` reuses one encoder module, so here each evaluation borrows an encoder of its own
    from a small pool (one per evaluation running at once, built on first need); other backbones
    evaluate one at a time. `max_eval` scores the embedded zoo on the first `max_eval` test
    images of each task (a merge step scores every task seen so far, which dominates its time);
    hub backbones get it as their own `max_samples`. Everything else is delegated.
    """

    def __init__(self, inner: Backbone, max_eval: int | None = None) -> None:
        super().__init__(inner)
        n_test = inner.config.n_test if inner.name == EMBEDDED else None  # (a hub config loads files)
        self.max_eval = max_eval if n_test and max_eval and max_eval < n_test else None
        self._lock = threading.RLock()
        self._encoders: list[torch.nn.Module] = []  # idle encoders of `_evaluate_first`

    def evaluate(self, state: StateDict, tasks: Sequence[str]) -> dict[str, float]:
        if self.max_eval is None:
            with self._lock:
                return self.inner.evaluate(state, tasks)
        return self._evaluate_first(state, list(tasks))

    @torch.inference_mode()
    def _evaluate_first(self, state: StateDict, names: list[str]) -> dict[str, float]:
        """The embedded backbone's `evaluate` on the first `max_eval` test images of each task."""
        from ..zoo.build import accuracy, features, head_logits

        with self._lock:  # the shared parts: names checked, heads loaded once, an encoder taken
            for name in names:
                self.inner.task(name)
            if not names:
                return {}
            heads = self.inner.heads()
            encoder = self._encoders.pop() if self._encoders else self.inner.build_encoder(state)
        try:  # the test inputs are the inner backbone's (generated once, `warm_evaluation` ahead of a step)
            splits = [tuple(part[: self.max_eval] for part in self.inner.test_split(name)) for name in names]
            encoder.load_state_dict(dict(state))
            feats = features(encoder, torch.cat([images for images, _ in splits]), self.inner.eval_batch)
        finally:
            with self._lock:
                self._encoders.append(encoder)
        scores, start = {}, 0
        for name, (_, labels) in zip(names, splits, strict=True):
            scores[name] = accuracy(head_logits(feats[start : start + len(labels)], heads[name]), labels)
            start += len(labels)
        return scores

    def reference(self) -> dict[str, dict[str, float]]:
        """The inner reference rows; may build or load models, so it waits for (and holds) the
        preparation lock like a `PrepareJob`, and never runs a second build beside one."""
        with BUILD_LOCK, self._lock:
            return self.inner.reference()


EVAL_BATCH = 512  # images per forward pass: faster than larger batches on small CPUs (cache-friendly)


def open_backbone(spec: str, n_tasks: int, preset: str = "default", cache_dir: str | None = None,
                  device: str = "auto", max_eval: int | None = None, data_dir: str | None = None) -> CachedBackbone:
    """The backbone for the app: models kept in memory once loaded, evaluation serialised.

    Construction is cheap (nothing is built or downloaded); `PrepareJob` does the slow part.
    `max_eval`: test inputs per task when scoring (None: all); `data_dir`: local test sets of a
    hub or folder backbone (docs/real-backbones.md).
    """
    backbone_choice(spec)
    if spec == EMBEDDED:
        inner = get_backbone(EMBEDDED, n_tasks=n_tasks, preset=preset, cache_dir=cache_dir, build_workers=None)
        inner.eval_batch = EVAL_BATCH
    else:
        kwargs: dict[str, Any] = {"tasks": n_tasks, "device": device}
        if cache_dir is not None:
            kwargs["cache_dir"] = cache_dir
        if max_eval:
            kwargs["max_samples"] = max_eval
        if data_dir:
            kwargs["data_dir"] = os.path.expanduser(data_dir)
        inner = get_backbone(spec, **kwargs)
    return CachedBackbone(AppBackbone(inner, max_eval))


def pool_size(spec: str, preset: str = "default") -> int:
    """How many tasks a backbone offers (without loading any model)."""
    if spec == EMBEDDED:
        from ..zoo.config import resolve_config

        return len(resolve_config(preset).tasks)
    if spec == "flan-t5-base":
        return 8
    return 20


def task_groups(pool: int) -> list[int]:
    """The paper's groups (8/14/20) that fit a pool of `pool` tasks; the whole pool otherwise."""
    groups = [n for n in PAPER_GROUPS if n <= pool]
    return groups or [pool]


def zoo_ready(backbone: Backbone) -> bool:
    """True when the embedded zoo's models are on disk (a fast size check, no hashing)."""
    from ..cache import check_integrity
    from ..zoo.build import finetuned_root, heads_folder, pretrained_folder

    if backbone.name != EMBEDDED:  # (reading a hub backbone's config would fetch files)
        return False
    config = backbone.config
    cache_dir = getattr(backbone, "cache_dir", None)
    folders = [pretrained_folder(config, cache_dir), heads_folder(config, cache_dir)]
    folders += [finetuned_root(config, cache_dir) / task.name for task in backbone.tasks]
    return all(check_integrity(folder, deep=False) is None for folder in folders)


def app_threads() -> int:
    """Torch CPU threads for the app: `$NUFILT_THREADS`, default 1 (`nufilt.threads`).

    The app runs several things at once (sessions, the background build); one thread keeps
    steps predictable on a shared machine.
    """
    return default_threads()


def device_summary(device: str = "auto") -> str:
    """One line: the merge device, and what the machine has."""
    resolved = resolve_device(device)
    if torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(0)
        return f"{resolved.type.upper()} (CUDA available: {gpu}); torch {torch.__version__}"
    threads = torch.get_num_threads()
    return (f"{resolved.type.upper()} (no CUDA GPU), {threads} torch thread{'s' if threads > 1 else ''} "
            f"(`{ENV_THREADS}`); torch {torch.__version__}")
