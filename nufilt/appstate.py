"""The app's logic without Streamlit: choices, run configuration, a step-by-step multi-method run.

The Streamlit pages stay thin: they turn widget values into a `RunConfig` (names and numbers
only), ask for a `MultiRun` keyed by it, call `step()` / `run_to_end()` / `reset()`, and plot the
tidy tables the run exposes with `nufilt.figures`. Everything here is testable without a browser.
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import os
import random
import re
import tempfile
import threading
import time
import warnings
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from .analysis.activations import activation_statistics, clamp_samples, selected_layers
from .analysis.affinity import affinity_ecdf, vector_bases
from .analysis.layers import layer_info
from .analysis.runs import CachedBackbone
from .analysis.stability import LOSS_COLUMNS, step_losses, summarize_losses
from .analysis.step_geometry import ANGLE_COLUMNS, SPECTRUM_COLUMNS, STEP_GEOMETRY_COLUMNS, step_geometry
from .backbones import EMBEDDED, get_backbone
from .backbones.base import Backbone, DelegatingBackbone, StateDict
from .engine import RunEngine, StepRecord
from .evaluation import MethodSpec, acc_bwt, check_order, method_spec, paper_orders, parse_order_indices
from .merge import resolve_device
from .methods import ABLATIONS, COMMON_OPTIONS, METHODS, get_method
from .methods.base import option_help
from .threads import ENV_THREADS, default_threads
from .zoo.config import default_preset

ProgressFn = Callable[[str, float], None]
PAPER_GROUPS = (8, 14, 20)

# ---------------------------------------------------------------- backbones


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
                   "first time from the shipped pre-trained encoder (about 1.5 minutes for 8 tasks, 3 for all 20, "
                   "on 2 idle CPU cores; progress shown) and cached", offline=True),
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
    """A backbone as the app uses it: evaluation serialised and optionally on fewer test inputs.

    The app shares one backbone between sessions and the background build, and the embedded
    backbone reuses one encoder module, so two evaluations must never load weights at once.
    `max_eval` scores the embedded zoo on the first `max_eval` test images of each task (a
    merge step scores every task seen so far, which dominates its time); hub backbones get it
    as their own `max_samples`. Everything else is delegated.
    """

    def __init__(self, inner: Backbone, max_eval: int | None = None) -> None:
        super().__init__(inner)
        n_test = inner.config.n_test if inner.name == EMBEDDED else None  # (a hub config loads files)
        self.max_eval = max_eval if n_test and max_eval and max_eval < n_test else None
        self._lock = threading.RLock()
        self._data = None
        self._encoder: torch.nn.Module | None = None

    def evaluate(self, state: StateDict, tasks: Sequence[str]) -> dict[str, float]:
        with self._lock:
            if self.max_eval is None:
                return self.inner.evaluate(state, tasks)
            return self._evaluate_first(state, list(tasks))

    @torch.inference_mode()
    def _evaluate_first(self, state: StateDict, names: list[str]) -> dict[str, float]:
        """The embedded backbone's `evaluate` on the first `max_eval` test images of each task."""
        from .zoo.build import TaskData, accuracy, features, head_logits

        for name in names:
            self.inner.task(name)
        if not names:
            return {}
        if self._data is None:
            self._data = TaskData(self.inner.config)
        if self._encoder is None:
            self._encoder = self.inner.build_encoder(state)
        else:
            self._encoder.load_state_dict(dict(state))
        splits = [tuple(part[: self.max_eval] for part in self._data.get(name, "test")) for name in names]
        feats = features(self._encoder, torch.cat([images for images, _ in splits]), self.inner.eval_batch)
        heads, scores, start = self.inner.heads(), {}, 0
        for name, (_, labels) in zip(names, splits, strict=True):
            scores[name] = accuracy(head_logits(feats[start : start + len(labels)], heads[name]), labels)
            start += len(labels)
        return scores

    def reference(self) -> dict[str, dict[str, float]]:
        """The inner reference rows; may build or load models, so it waits for (and holds) the
        preparation lock like a `PrepareJob`, and never runs a second build beside one."""
        with _PREPARE_LOCK, self._lock:
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
        from .zoo.config import resolve_config

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
    from .cache import check_integrity
    from .zoo.build import finetuned_root, heads_folder, pretrained_folder

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


# ---------------------------------------------------------------- building / loading in the background

_PREPARE_LOCK = threading.RLock()  # one build at a time: they compete for the same cores


class PrepareJob:
    """`backbone.prepare()` (zoo build, downloads, checks) in a background thread.

    The page polls `state`, `message` and `fraction`, so it never freezes, and navigating away
    does not interrupt the build. `error` holds the reason when it failed.
    """

    def __init__(self, backbone: Backbone) -> None:
        self.backbone = backbone
        self.state = "ready" if zoo_ready(backbone) else "idle"  # idle | running | ready | failed
        self.message = "models on disk" if self.state == "ready" else "not started"
        self.fraction = 1.0 if self.state == "ready" else 0.0
        self.error: str | None = None
        self.seconds = 0.0
        self._thread: threading.Thread | None = None
        self._started: float | None = None
        self._guard = threading.Lock()

    def start(self) -> None:
        """Start the build, or start it again after a failure; a no-op while it runs or when it
        is done. Safe to call from several sessions at once: one thread is started."""
        with self._guard:
            if self.state in ("running", "ready"):
                return
            self.state, self.error, self.fraction, self.message = "running", None, 0.0, "waiting to start"
            self._thread = threading.Thread(target=self._run, name="nufilt-prepare", daemon=True)
            self._thread.start()

    def wait(self, timeout: float | None = None) -> str:
        if self._thread is not None:
            self._thread.join(timeout)
        return self.state

    def _progress(self, message: str, fraction: float) -> None:
        self.message, self.fraction = message, min(max(float(fraction), 0.0), 1.0)

    def eta_seconds(self) -> float | None:
        """Seconds left at the rate so far (the build weights its stages by measured cost); None
        before 3% is done or when not running."""
        if self.state != "running" or self._started is None or not 0.03 <= self.fraction < 1.0:
            return None
        elapsed = time.perf_counter() - self._started
        return elapsed * (1.0 - self.fraction) / self.fraction

    def _finish(self, state: str, error: str | None = None) -> None:
        with self._guard:
            self.state, self.error = state, error
            if state == "ready":
                self.message, self.fraction = "ready", 1.0

    def _run(self) -> None:
        start = self._started = time.perf_counter()
        try:
            with _PREPARE_LOCK:
                prepare = getattr(self.backbone, "prepare", None)
                if prepare is None:
                    self.backbone.pretrained_state()
                elif "progress" in inspect.signature(prepare).parameters:
                    prepare(progress=self._progress)
                else:
                    self._progress("loading and checking every model", 0.05)
                    prepare()
            self.seconds = time.perf_counter() - start
            self._finish("ready")
        except Exception as error:  # shown to the user as st.error; the app keeps working
            self.seconds = time.perf_counter() - start
            self._finish("failed", f"{type(error).__name__}: {error}")


# ---------------------------------------------------------------- task orders

ORDER_MODES = {
    "paper": "the paper's order",
    "random": "random, with a seed",
    "custom": "custom (typed)",
    "pool": "the pool's own order",
}


def order_modes(n_tasks: int) -> list[str]:
    """Order modes that apply to a task count (the paper has orders for 8, 14 and 20 tasks)."""
    return [m for m in ORDER_MODES if m != "paper" or n_tasks in PAPER_GROUPS]


def parse_custom_order(text: str, tasks: Sequence[str]) -> list[str]:
    """Task names or 1-based positions separated by commas, spaces, arrows or new lines."""
    parts = [p for p in re.split(r"[,\s;>→]+", text.replace("->", ",")) if p]
    if not parts:
        raise ValueError("the custom order is empty: type the task names (or 1-based numbers) in merge order")
    order = []
    for part in parts:
        if part.isdigit():
            index = int(part)
            if not 1 <= index <= len(tasks):
                raise ValueError(f"task number {index} is out of range 1..{len(tasks)}")
            order.append(tasks[index - 1])
        else:
            order.append(part)
    return check_order(order, list(tasks), len(tasks))


def resolve_order(tasks: Sequence[str], mode: str, paper_index: int = 1, seed: int = 0, custom: str = "") -> list[str]:
    """The merge order for `mode` (see `ORDER_MODES`); ValueError with the reason for bad input."""
    tasks = list(tasks)
    if mode == "paper":
        if len(tasks) not in PAPER_GROUPS:
            raise ValueError(f"the paper has task orders for {', '.join(map(str, PAPER_GROUPS))} tasks, "
                             f"not {len(tasks)}")
        return paper_orders(tasks, [paper_index])[0]
    if mode == "random":
        order = list(tasks)
        random.Random(seed).shuffle(order)
        return order
    if mode == "custom":
        return parse_custom_order(custom, tasks)
    if mode == "pool":
        return tasks
    raise ValueError(f"unknown order mode {mode!r}; known: {', '.join(ORDER_MODES)}")


# ---------------------------------------------------------------- method options


@dataclass(frozen=True)
class OptionField:
    """One option of a method, for building a widget: name, kind, value, choices, help."""

    name: str
    kind: str  # "int", "float", "bool", "choice", "text"
    value: Any
    choices: tuple[str, ...] = ()
    help: str = ""


def method_labels() -> list[str]:
    return [*METHODS, *ABLATIONS]


def base_method(label: str) -> str:
    return label if label in METHODS else "nufilt"


def option_fields(
    label: str, n_tasks: int, recommended: Mapping[str, Mapping[str, Any]] | None = None
) -> list[OptionField]:
    """The options of a method or ablation, with the values it would use by default.

    Values: the dataclass defaults < the paper's Table 9 for `n_tasks` < the backbone's
    recommendation (tiny-vit: zoo-scaled NUFILT ranks) < the ablation's settings.
    """
    options_cls = get_method(base_method(label)).Options
    values = method_spec(label, n_tasks, recommended).options
    described = option_help(options_cls)  # metadata on the dataclass fields, never parsed source
    fields = []
    for item in dataclasses.fields(options_cls):
        value = values.get(item.name, item.default)
        if isinstance(value, bool):
            kind, choices = "bool", ()
        elif isinstance(value, int):
            kind, choices = "int", ()
        elif isinstance(value, float):
            kind, choices = "float", ()
        else:
            choices = described[item.name][1]
            kind = "choice" if choices else "text"
        fields.append(OptionField(item.name, kind, value, choices, described[item.name][0]))
    return fields


def changed_options(fields: Sequence[OptionField], values: Mapping[str, Any]) -> dict[str, Any]:
    """The widget values that differ from the defaults shown (what the run overrides)."""
    return {f.name: values[f.name] for f in fields if f.name in values and values[f.name] != f.value}


# ---------------------------------------------------------------- run configuration


def _freeze(mapping: Mapping[str, Mapping[str, Any]]) -> tuple:
    return tuple(sorted((label, tuple(sorted(options.items()))) for label, options in mapping.items() if options))


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a run, as names and numbers (hashable: the run's cache key)."""

    backbone: str = EMBEDDED
    n_tasks: int = 8
    order: tuple[str, ...] = ()
    methods: tuple[str, ...] = ("nufilt",)
    overrides: tuple = ()  # ((label, ((option, value), ...)), ...): see `make_config`
    preset: str = "default"
    cache_dir: str | None = None
    device: str = "auto"
    seed: int = 0
    track_losses: bool = True
    n_samples: int = 256  # inputs per task for the stability/plasticity statistics
    max_eval: int | None = 200  # test inputs per task when scoring (None: all; see `AppBackbone`)
    data_dir: str | None = None  # local test sets of a hub/folder backbone

    def options_for(self, label: str) -> dict[str, Any]:
        return dict(dict(self.overrides).get(label, ()))

    def backbone_key(self) -> tuple:
        return (self.backbone, self.n_tasks, self.preset, self.cache_dir, self.device, self.max_eval, self.data_dir)

    def specs(self, backbone: Backbone) -> list[MethodSpec]:
        """Method specs (validated: ValueError/TypeError with the reason)."""
        recommended = getattr(backbone, "recommended_options", {}) or {}
        common = {"device": self.device, "seed": self.seed}
        return [
            method_spec(label, len(self.order), recommended, {label: self.options_for(label)}, **common)
            for label in self.methods
        ]


def make_config(
    backbone: str,
    n_tasks: int,
    order: Sequence[str],
    methods: Sequence[str],
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    **settings: Any,
) -> RunConfig:
    """A `RunConfig`; ValueError for an empty method list or unknown labels."""
    methods = list(dict.fromkeys(methods))
    if not methods:
        raise ValueError("choose at least one merge method")
    unknown = [m for m in methods if m not in METHODS and m not in ABLATIONS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; known: {', '.join(method_labels())}")
    return RunConfig(backbone, int(n_tasks), tuple(order), tuple(methods), _freeze(overrides or {}), **settings)


# ---------------------------------------------------------------- the step-by-step run


@dataclass
class _MethodState:
    spec: MethodSpec
    engine: RunEngine  # the merger and θ̄ of the last committed step
    matrix: list[list[float]] = field(default_factory=list)

    @property
    def merged(self) -> StateDict | None:
        return self.engine.merged

    @property
    def steps(self) -> int:
        return len(self.matrix)


_TABLES = ("accuracy", "metrics", "layers", "curves", "losses", "geometry", "angles", "spectra")
GEOMETRY_RANK = 8  # r_v = r_d of the live step geometry (the Geometry page's Fig. 2 defaults)
LAYER_TABLE = ["method", "step", "task", "layer", "block", "kind", "removed_energy", "r_p", "r_l", "r_v"]


@dataclass(frozen=True)
class _Covariance:
    covariance: torch.Tensor  # what `stability.step_losses` reads from old-task statistics


class MultiRun:
    """Several methods merging the same task order one step at a time, with everything the pages plot.

    Holds per method a merger (θ0, θ̄_{t−1} and O(1) statistics) and small tables: the accuracy
    matrix, ACC/BWT so far, NUFILT's filter per layer (removed energy, clamped ranks) and LoRA
    loss curves (both from its merge report) and, when `track_losses`, stability/plasticity
    losses (from input statistics of each task's own data, computed when the task is merged and
    cached on disk).
    Each method steps its own `engine.RunEngine`, so a step is atomic per method: a failed merge,
    evaluation or loss computation leaves that method as before and a retry merges the same task;
    an interrupted step (a Streamlit rerun) is finished by the next `step()`; methods are never
    more than one step apart.
    """

    def __init__(self, backbone: Backbone, order: Sequence[str], specs: Sequence[MethodSpec],
                 track_losses: bool = True, n_samples: int = 256) -> None:
        if not specs:
            raise ValueError("a run needs at least one method")
        self.backbone = backbone if isinstance(backbone, CachedBackbone) else CachedBackbone(backbone)
        self.order = check_order(order, [t.name for t in self.backbone.tasks])
        self.specs = {spec.label: spec for spec in specs}
        self.track_losses = track_losses
        self.n_samples = clamp_samples(self.backbone, n_samples)
        # the angle and spectrum tables of the step geometry: about as costly again as the rest of
        # it (a rank-r_p basis of τ̄_{t−1} and τ̄t's spectrum per layer), so the Geometry page turns them on
        self.track_spectra = False
        # V(τi) per task and layer for the geometry: fixed by the checkpoints, so kept across `reset()`
        self._task_bases: dict[str, dict[str, torch.Tensor]] = {}
        self._lock = threading.RLock()
        self.pretrained = self.backbone.pretrained_state()
        self.keys = selected_layers(self.pretrained)
        self.reset()

    # -- state

    def reset(self) -> None:
        """Back to step 0 with fresh mergers (options and order kept)."""
        with self._lock:
            self._methods = {
                label: _MethodState(spec, RunEngine(self.backbone, spec, self.order, analyze=self._analyze,
                                                    pretrained=self.pretrained))
                for label, spec in self.specs.items()
            }
            self._rows: dict[str, list[dict]] = {name: [] for name in _TABLES}
            self._covariance_sums: dict[int, dict[str, torch.Tensor]] = {}
            self.messages: list[str] = []
            self.last_step_seconds = self.last_step_cpu_seconds = 0.0

    @property
    def labels(self) -> list[str]:
        return list(self.specs)

    @property
    def steps_done(self) -> int:
        return min(state.steps for state in self._methods.values())

    @property
    def finished(self) -> bool:
        return self.steps_done >= len(self.order)

    def next_task(self) -> str | None:
        return None if self.finished else self.order[self.steps_done]

    def merged_state(self, label: str) -> dict[str, torch.Tensor] | None:
        return self._methods[label].merged

    def matrix(self, label: str) -> list[list[float]]:
        return [list(row) for row in self._methods[label].matrix]

    # -- stepping

    def step(self, progress: ProgressFn | None = None) -> int:
        """Merge the next task with every method (finishing an interrupted step first)."""
        with self._lock:
            if self.finished:
                return self.steps_done
            start, cpu_start = time.perf_counter(), time.thread_time()
            target = self.steps_done + 1
            behind = [label for label, state in self._methods.items() if state.steps < target]
            for i, label in enumerate(behind):
                if progress:
                    progress(f"step {target}/{len(self.order)}: {label} merges {self.order[target - 1]}",
                             i / len(behind))
                self._advance(label)
            self.last_step_seconds = time.perf_counter() - start
            self.last_step_cpu_seconds = time.thread_time() - cpu_start  # = wall time on an idle core (1 thread)
            if progress:
                progress(f"step {target} done", 1.0)
            return self.steps_done

    def run_to_end(self, progress: ProgressFn | None = None) -> int:
        total = len(self.order)
        while not self.finished:
            done = self.steps_done

            def report(message: str, fraction: float, done: int = done) -> None:
                if progress:
                    progress(message, (done + fraction) / total)

            self.step(report)
        return self.steps_done

    def _advance(self, label: str) -> None:
        """One atomic engine step for `label`, then its rows; a failed step changes nothing."""
        state = self._methods[label]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            record = state.engine.step()  # merge, score the seen tasks, `_analyze`
        for warning in caught:
            text = str(warning.message)  # (NUFILT's own warnings already start with "nufilt: ")
            self._note(text if text.startswith(f"{label}: ") or text.startswith(f"{state.spec.method}: ")
                       else f"{label}: {text}")
        step, task, report = record.step, record.task, record.report
        row = [record.scores[name] for name in self.order[:step]]
        losses, geometry = record.analysis
        eval_seconds, analysis_seconds = record.eval_seconds, record.analysis_seconds
        # commit (nothing above changed this run's tables)
        tag = {"method": label, "step": step, "task": task}
        # NUFILT reports its filter per layer at no extra cost (`analysis.trace.step_trace` recomputes it
        # for any method, with full spectra: over a second per step on the width-256 zoo)
        filtered = report.info.get("layers", {}) if state.spec.method == "nufilt" else {}
        acc, bwt = acc_bwt([*state.matrix, row])
        self._rows["accuracy"].extend({**tag, "task": name, "accuracy": value}
                                      for name, value in zip(self.order[:step], row, strict=True))
        self._rows["metrics"].append({**tag, "acc": acc, "bwt": bwt, "merge_seconds": report.seconds,
                                      "eval_seconds": eval_seconds, "analysis_seconds": analysis_seconds,
                                      "task_norm": report.task_norm, "merged_norm": report.merged_norm})
        self._rows["layers"].extend({**tag, **layer_info(key), "removed_energy": facts["removed_energy"],
                                     **facts["ranks"]} for key, facts in filtered.items())
        self._rows["curves"].extend({**tag, "layer": key, "iteration": i, "loss": value}
                                    for key, facts in filtered.items() for i, value in enumerate(facts["loss_curve"]))
        self._rows["losses"].extend({**tag, **loss} for loss in losses)
        self._rows["geometry"].extend(geometry["step_geometry"])
        self._rows["angles"].extend(geometry["step_angles"])
        self._rows["spectra"].extend(geometry["step_spectra"])
        state.matrix.append(row)

    def _analyze(self, record: StepRecord) -> tuple[list[dict], dict[str, list[dict]]]:
        """Stability/plasticity losses and the step geometry rows (inside the engine's atomic step)."""
        losses = self._losses(record.step, record.previous, record.merged, record.task_state)
        return losses, self._geometry(record)

    def _geometry(self, record: StepRecord) -> dict[str, list[dict]]:
        """`analysis.step_geometry` tables for one step: with the tasks' activation statistics when
        losses are tracked (the same cached statistics), else the data-free column only."""
        seen = list(self.order[: record.step])
        for task in seen:
            if task not in self._task_bases:
                state = record.task_state if task == record.task else self.backbone.finetuned_state(task)
                self._task_bases.update(vector_bases(self.pretrained, {task: state}, self.keys, GEOMETRY_RANK,
                                                     solver="auto"))
        data = None
        if self.track_losses:
            stats = {task: self._statistics(task) for task in seen}
            data = None if any(value is None for value in stats.values()) else stats
        r_p = self.specs[record.spec.label].options.get("r_p", 128) if record.spec.method == "nufilt" else 128
        return step_geometry(record.spec.label, record.step, seen, record.pretrained, record.previous,
                             record.merged, self._task_bases, self.keys, data, GEOMETRY_RANK, GEOMETRY_RANK,
                             max(int(r_p), 1), solver="auto", spectra=self.track_spectra)

    # -- saving and restoring (the files themselves: `nufilt.runstore`)

    def snapshot(self) -> dict[str, Any]:
        """The committed steps as plain data: per method its merged model, the merger's step,
        task fingerprints and O(1) statistics, and the accuracy rows; the run's tables."""
        with self._lock:
            methods = {}
            for label, state in self._methods.items():
                merger = state.engine.merger
                methods[label] = {
                    "merged": None if state.merged is None else {k: v.detach().cpu() for k, v in state.merged.items()},
                    "step": merger.step,
                    "fingerprints": [[float(k[0]), str(k[1]), int(v)] for k, v in merger._fingerprints.items()],
                    "statistics": {k: v for k, v in vars(merger.method).items() if k != "options"},
                    "matrix": [list(map(float, row)) for row in state.matrix],
                }
            return {"methods": methods, "rows": {name: list(rows) for name, rows in self._rows.items()},
                    "messages": list(self.messages), "steps_done": self.steps_done}

    def restore(self, snapshot: Mapping[str, Any]) -> bool:
        """Back to the steps of a `snapshot()` of a run with the same order and methods; False (and
        the run unchanged at step 0) when its pre-trained model or methods differ from this run's."""
        with self._lock:
            self.reset()
            methods = snapshot["methods"]
            if set(methods) != set(self._methods):
                return False
            for label, saved in methods.items():
                fingerprints = {(f[0], f[1]): f[2] for f in saved["fingerprints"]}
                base = [k for k, v in self._methods[label].engine.merger._fingerprints.items() if v == 0]
                if base and fingerprints.get(base[0]) != 0:
                    return False
            for label, saved in methods.items():
                state, merger = self._methods[label], self._methods[label].engine.merger
                merger.merged = state.engine.merged = saved["merged"]
                merger.step = int(saved["step"])
                merger._fingerprints = {(f[0], f[1]): int(f[2]) for f in saved["fingerprints"]}
                vars(merger.method).update(saved["statistics"])
                state.matrix = [list(row) for row in saved["matrix"]]
            self._rows = {name: list(snapshot["rows"].get(name, [])) for name in _TABLES}
            self.messages = list(snapshot.get("messages", []))
            return True

    def _note(self, message: str) -> None:
        if message not in self.messages:
            self.messages.append(message)

    def _statistics(self, task: str) -> dict | None:
        try:
            return activation_statistics(self.backbone, task, keys=self.keys, n_samples=self.n_samples)
        except Exception as error:  # e.g. no test data for a hub backbone: the merge goes on
            self.track_losses = False
            self._note(f"stability/plasticity tracking turned off: {type(error).__name__}: {error}")
            return None

    def _old_covariance(self, step: int) -> list[_Covariance] | None:
        """Mean input covariance of the tasks merged before `step` (a running sum, not every task)."""
        count = step - 1
        if count == 0:
            return []
        if count not in self._covariance_sums:
            before = self._old_covariance(step - 1)
            if before is None:
                return None
            stats = self._statistics(self.order[count - 1])
            if stats is None:
                return None
            previous_sums = self._covariance_sums.get(count - 1, {})
            self._covariance_sums[count] = {
                key: previous_sums.get(key, 0) + stats[key].covariance.double() for key in self.keys
            }
            for old in [k for k in self._covariance_sums if k < count - 1]:
                del self._covariance_sums[old]
        sums = self._covariance_sums[count]
        return [{key: _Covariance(value / count) for key, value in sums.items()}]

    def _losses(self, step: int, previous: StateDict, merged: StateDict, task_state: StateDict) -> list[dict]:
        if not self.track_losses:
            return []
        old = self._old_covariance(step)
        new = self._statistics(self.order[step - 1])
        if old is None or new is None:
            return []
        return step_losses(previous, merged, task_state, old, new, self.keys)

    # -- tables (new DataFrames each call)

    def accuracy(self) -> pd.DataFrame:
        """method, step, task, accuracy: every seen task after every step."""
        return pd.DataFrame(self._rows["accuracy"], columns=["method", "step", "task", "accuracy"])

    def metrics(self) -> pd.DataFrame:
        """method, step, task (merged), acc, bwt (so far), timings and whole-model norms."""
        columns = ["method", "step", "task", "acc", "bwt", "merge_seconds", "eval_seconds", "analysis_seconds",
                   "task_norm", "merged_norm"]
        return pd.DataFrame(self._rows["metrics"], columns=columns)

    def layers(self) -> pd.DataFrame:
        """NUFILT's filter per step and layer: method, step, task, layer, block, kind, removed_energy
        (share of ‖τt‖² in the top-r_p right singular subspace of τ̄_{t−1}), r_p, r_l, r_v (as clamped)."""
        return pd.DataFrame(self._rows["layers"], columns=LAYER_TABLE)

    def loss_curves(self) -> pd.DataFrame:
        """NUFILT's LoRA loss per Adam iteration: method, step, task, layer, iteration, loss."""
        return pd.DataFrame(self._rows["curves"], columns=["method", "step", "task", "layer", "iteration", "loss"])

    def geometry(self) -> pd.DataFrame:
        """Per-step geometry per method, step, seen task and layer (`STEP_GEOMETRY_COLUMNS`); the two
        data affinities are NaN without data (then only `update_vector_affinity` is meaningful)."""
        return pd.DataFrame(self._rows["geometry"], columns=list(STEP_GEOMETRY_COLUMNS))

    def geometry_angles(self) -> pd.DataFrame:
        """Principal angles between V(τt) and the top-r_p subspace of τ̄_{t−1} per method, step (≥ 2),
        layer and index (`analysis.step_geometry.ANGLE_COLUMNS`)."""
        return pd.DataFrame(self._rows["angles"], columns=list(ANGLE_COLUMNS))

    def geometry_spectra(self) -> pd.DataFrame:
        """Top singular values of τ̄t per method, step, layer and index (`SPECTRUM_COLUMNS`)."""
        return pd.DataFrame(self._rows["spectra"], columns=list(SPECTRUM_COLUMNS))

    @property
    def geometry_has_data(self) -> bool:
        table = self.geometry()
        return bool(len(table)) and bool(table["update_affinity"].notna().any())

    def losses(self) -> pd.DataFrame:
        """Stability/plasticity per step and layer (`analysis.stability.LOSS_COLUMNS`)."""
        return pd.DataFrame(self._rows["losses"], columns=list(LOSS_COLUMNS))

    def loss_summary(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(per step, per method): see `analysis.stability.summarize_losses`."""
        return summarize_losses(self.losses())

    def summary(self) -> pd.DataFrame:
        """method, steps, acc, bwt of the latest merged model of each method."""
        rows = []
        for label, state in self._methods.items():
            acc, bwt = acc_bwt(state.matrix) if state.matrix else (float("nan"), float("nan"))
            rows.append({"method": label, "steps": state.steps, "acc": acc, "bwt": bwt})
        return pd.DataFrame(rows, columns=["method", "steps", "acc", "bwt"])

    def card_info(self, label: str) -> dict[str, Any]:
        """Model-card facts of a method's current merged model (for `export.save_merged`)."""
        state = self._methods[label]
        seen = self.order[: state.steps]
        acc, bwt = acc_bwt(state.matrix) if state.matrix else (None, None)
        return {"method": label, "options": dict(state.spec.options), "order": seen,
                "scores": dict(zip(seen, state.matrix[-1], strict=True)) if state.matrix else {},
                "acc": acc, "bwt": bwt}


# ---------------------------------------------------------------- geometry adapters


def ecdf_with_layers(table: pd.DataFrame, pairs: Sequence[tuple[str, str]], kind: str = "all") -> pd.DataFrame:
    """`analysis.affinity_ecdf` plus the layer and random baseline of each point (for hover text).

    Columns: data_task, vector_task, pair, layer, kind, affinity, ecdf, baseline.
    """
    columns = ["data_task", "vector_task", "pair", "layer", "kind", "affinity", "ecdf", "baseline"]
    if not pairs:
        return pd.DataFrame(columns=columns)
    ecdf = affinity_ecdf(table, pairs, kind)  # validates kind and pairs
    rows = table if kind == "all" else table[table["kind"] == kind]
    parts = []
    for data_task, vector_task in pairs:
        mine = rows[(rows["data_task"] == data_task) & (rows["vector_task"] == vector_task)]
        mine = mine.sort_values("affinity", kind="stable").reset_index(drop=True)
        part = ecdf[(ecdf["data_task"] == data_task) & (ecdf["vector_task"] == vector_task)].reset_index(drop=True)
        part = part.assign(layer=mine["layer"], kind=mine["kind"], baseline=mine["baseline"])
        parts.append(part)
    return pd.concat(parts, ignore_index=True)[columns]


def default_pairs(tasks: Sequence[str]) -> list[tuple[str, str]]:
    """Two matched pairs and one mismatched pair (Fig. 2c)."""
    tasks = list(tasks)
    if len(tasks) < 2:
        return [(tasks[0], tasks[0])] if tasks else []
    return [(tasks[0], tasks[0]), (tasks[1], tasks[1]), (tasks[0], tasks[1])]


# ---------------------------------------------------------------- ranks


MAX_SWEEP_POINTS = 24  # each point merges every task of the order once and scores it


def parse_values(text: str, limit: int = MAX_SWEEP_POINTS) -> list[int]:
    """ "0, 8, 16" or "0-32:8" -> sorted distinct non-negative integers, at most `limit` of them
    (ValueError otherwise, before any range is expanded)."""
    values: set[int] = set()
    for part in filter(None, (p.strip() for p in re.split(r"[,\s]+", text))):
        match = re.fullmatch(r"(\d+)-(\d+):(\d+)", part)
        if match:
            low, high, stride = map(int, match.groups())
            if stride < 1 or high < low:
                raise ValueError(f"bad range {part!r}: use LOW-HIGH:STEP with LOW <= HIGH and STEP >= 1")
            if (high - low) // stride + 1 > limit:
                raise ValueError(f"{part!r} is {(high - low) // stride + 1} points; a sweep takes at most {limit} "
                                 "(each point merges every task): use a larger STEP")
            values.update(range(low, high + 1, stride))
        elif part.isdigit():
            values.add(int(part))
        else:
            raise ValueError(f"ranks must be non-negative integers (or LOW-HIGH:STEP ranges), got {part!r}")
    if not values:
        raise ValueError("no rank values given")
    if len(values) > limit:
        raise ValueError(f"{len(values)} points; a sweep takes at most {limit} (each point merges every task)")
    return sorted(values)


def layer_widths(backbone: Backbone) -> tuple[int, int]:
    """(smallest, largest) input width among NUFILT's layers: ranks above the smallest get clamped."""
    state = backbone.pretrained_state()
    widths = [state[key].shape[1] for key in selected_layers(state)]
    return min(widths), max(widths)


def rank_limit(backbone: Backbone) -> int:
    """The largest subspace rank every one of NUFILT's layers has: min(d_out, d_in) over them."""
    state = backbone.pretrained_state()
    return min(min(state[key].shape[:2]) for key in selected_layers(state))


# ---------------------------------------------------------------- paper comparison

# Claims of the paper's Table 1 that a run on any backbone can be checked against.
QUALITATIVE_CLAIMS = (
    "NUFILT has the highest ACC of the continual methods",
    "NUFILT forgets least (BWT closest to zero)",
    "every continual method forgets (BWT < 0)",
    "the ACC ranking of the methods agrees with the paper's (Kendall τ > 0)",
)


def _kendall_tau(first: Sequence[float], second: Sequence[float]) -> float:
    pairs = concordant = 0
    for i in range(len(first)):
        for j in range(i + 1, len(first)):
            product = (first[i] - first[j]) * (second[i] - second[j])
            if product != 0:
                pairs += 1
                concordant += 1 if product > 0 else -1
    return concordant / pairs if pairs else float("nan")


def qualitative_checks(run: Mapping[str, Mapping[str, float]], paper_rows: Sequence[Mapping]) -> pd.DataFrame:
    """Each claim of `QUALITATIVE_CLAIMS`: does it hold in the paper's column, and in this run?

    `run`: {method label: {"acc": ..., "bwt": ...}}; `paper_rows`: `paper.paper_reference` rows.
    Only methods present in both are compared. Columns: claim, paper, run (True/False/None),
    note (why a claim cannot be checked, else empty).
    """
    paper = {row["label"]: row for row in paper_rows if row.get("label") and row.get("acc") is not None}
    common = [label for label in run if label in paper]

    def facts(table: Mapping[str, Mapping[str, float]]) -> list[bool | None]:
        if not common:
            return [None] * len(QUALITATIVE_CLAIMS)
        acc = {m: table[m]["acc"] for m in common}
        bwt = {m: table[m]["bwt"] for m in common}
        has_nufilt = "nufilt" in common and len(common) > 1
        return [
            max(acc, key=acc.get) == "nufilt" if has_nufilt else None,
            min(bwt, key=lambda m: abs(bwt[m])) == "nufilt" if has_nufilt else None,
            all(value < 0 for value in bwt.values()),
            None,
        ]

    paper_facts = facts(paper)
    run_facts = facts(run)
    notes = [""] * len(QUALITATIVE_CLAIMS)
    named = ", ".join(common) or "none"
    if not ("nufilt" in common and len(common) > 1):
        notes[0] = notes[1] = f"needs nufilt and another method the paper reports (compared: {named})"
    if not common:
        notes[2] = "no method of this run is in the paper's table"
    if len(common) >= 3:
        tau = _kendall_tau([paper[m]["acc"] for m in common], [run[m]["acc"] for m in common])
        paper_facts[3], run_facts[3] = True, bool(tau > 0)
        notes[3] = f"τ = {tau:.2f} over {len(common)} methods"
    else:
        notes[3] = f"a ranking needs at least 3 methods the paper reports (compared: {named})"
    return pd.DataFrame({"claim": QUALITATIVE_CLAIMS, "paper": paper_facts, "run": run_facts, "note": notes})


def comparison_table(run: Mapping[str, Mapping[str, float]], paper_rows: Sequence[Mapping]) -> pd.DataFrame:
    """Long table for `figures.paper_comparison_bars`: method, source, acc, acc_std, bwt, bwt_std."""
    rows = []
    for row in paper_rows:
        if row.get("label") in run and row.get("acc") is not None:
            rows.append({"method": row["label"], "source": "paper", "acc": row["acc"], "acc_std": row.get("acc_std"),
                         "bwt": row.get("bwt"), "bwt_std": row.get("bwt_std")})
    for label, values in run.items():
        rows.append({"method": label, "source": "this run", "acc": values["acc"],
                     "acc_std": values.get("acc_std"), "bwt": values["bwt"], "bwt_std": values.get("bwt_std")})
    return pd.DataFrame(rows, columns=["method", "source", "acc", "acc_std", "bwt", "bwt_std"]).astype(
        {"acc_std": float, "bwt_std": float, "bwt": float})


def reference_column(backbone: str, n_tasks: int) -> tuple[str, int]:
    """The paper column a run is compared against: its own for CLIP/T5, ViT-B/32 for the rest."""
    from .paper import CLIP_COLUMNS, T5_BACKBONES

    if backbone in CLIP_COLUMNS or backbone in T5_BACKBONES:
        return backbone, n_tasks
    return "clip-vit-b32", n_tasks if n_tasks in PAPER_GROUPS else 8


# ---------------------------------------------------------------- export


def export_zip(backbone: Backbone, state: StateDict, card_info: Mapping[str, Any]) -> bytes:
    """The merged model as a zipped `save_pretrained` folder with its model card (`export.save_merged`)."""
    from .export import save_merged

    with tempfile.TemporaryDirectory(prefix="nufilt-export-") as tmp:
        folder = save_merged(backbone, state, Path(tmp) / "merged", card_info)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(folder.rglob("*")):
                if path.is_file():
                    archive.write(path, Path("merged") / path.relative_to(folder))
        return buffer.getvalue()


def export_safetensors(state: StateDict, card_info: Mapping[str, Any]) -> bytes:
    """The merged encoder weights as one safetensors file (metadata: method and order)."""
    from .io import save_safetensors

    metadata = {"method": str(card_info.get("method", "")), "order": ",".join(card_info.get("order", []))}
    with tempfile.TemporaryDirectory(prefix="nufilt-export-") as tmp:
        path = save_safetensors(dict(state), Path(tmp) / "model.safetensors", metadata)
        return path.read_bytes()


def save_to_folder(backbone: Backbone, state: StateDict, folder: str, card_info: Mapping[str, Any],
                   roots: Sequence[Path] | None = None) -> Path:
    """`export.save_merged` to a folder the user typed (FileExistsError if it is not empty),
    which must lie inside `roots` when they are given (`nufilt.roots`)."""
    from .export import save_merged
    from .roots import check_allowed

    if not folder.strip():
        raise ValueError("type a folder to save the merged model to")
    target = Path(os.path.expanduser(folder.strip()))
    if roots is not None:
        target = check_allowed(folder, roots, "folder to save to")
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise FileExistsError(f"{target} exists and is not empty; type a new or empty folder")
    return save_merged(backbone, state, target, card_info)


APP_WORKERS_ENV = "NUFILT_APP_WORKERS"  # Ray workers of the app's long jobs; 0 or 1: in the server process


def grid_workers(config: RunConfig):
    """`grid.Workers` for the app's long jobs (the Ranks page's points, Compare's runs over the
    paper's orders): `$NUFILT_APP_WORKERS` (default 2, the machine's two cores) Ray workers that
    each open this run's backbone, the Ray session kept for the next job; None (run here) when
    Ray is not installed or the count is 0 or 1."""
    from functools import partial

    from .grid import Workers, ray_available

    text = os.environ.get(APP_WORKERS_ENV, "").strip() or "2"
    if not text.isdigit():
        raise ValueError(f"{APP_WORKERS_ENV} must be a whole number, got {text!r}")
    if int(text) < 2 or not ray_available():
        return None
    spec, n_tasks, preset, cache_dir, device, max_eval, data_dir = config.backbone_key()
    if cache_dir is not None:
        cache_dir = str(Path(cache_dir).expanduser().resolve())
    recipe = partial(open_backbone, spec, n_tasks, preset, cache_dir, device, max_eval, data_dir)
    return Workers(recipe, int(text), threads=default_threads(), keep_session=True)

__all__ = [
    "BACKBONE_CHOICES",
    "COMMON_OPTIONS",
    "ORDER_MODES",
    "BackboneChoice",
    "MultiRun",
    "OptionField",
    "PrepareJob",
    "RunConfig",
    "comparison_table",
    "default_pairs",
    "ecdf_with_layers",
    "export_safetensors",
    "export_zip",
    "grid_workers",
    "make_config",
    "open_backbone",
    "option_fields",
    "parse_custom_order",
    "parse_order_indices",
    "parse_values",
    "qualitative_checks",
    "resolve_order",
    "zoo_preset",
    "zoo_ready",
]
