"""The run's configuration and the step-by-step multi-method run the pages draw."""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch

from ..analysis.activations import activation_statistics, clamp_samples, selected_layers
from ..analysis.affinity import vector_bases
from ..analysis.layers import layer_info
from ..analysis.runs import CachedBackbone
from ..analysis.stability import LOSS_COLUMNS, step_losses, summarize_losses
from ..analysis.step_geometry import ANGLE_COLUMNS, SPECTRUM_COLUMNS, STEP_GEOMETRY_COLUMNS, step_geometry
from ..backbones import EMBEDDED
from ..backbones.base import Backbone, StateDict
from ..engine import RunEngine, StepRecord
from ..evaluation import MethodSpec, acc_bwt, check_order, method_spec
from ..methods import ABLATIONS, METHODS
from ..threads import available_cpus
from .backbones import ProgressFn
from .options import method_labels


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


_current = threading.local()  # the method a step thread is merging (for its warnings)


@contextmanager
def _warnings_by_method() -> Iterator[dict[str, list[str]]]:
    """Record every warning raised while the block runs, by the method of the thread that raised
    it (`_current.label`): `warnings.catch_warnings` is process-wide, so one block records for
    all the step's threads. Warnings of other threads are shown as usual."""
    caught: dict[str, list[str]] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        shown = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None) -> None:
            label = getattr(_current, "label", None)
            if label is None:
                shown(message, category, filename, lineno, file, line)
            else:
                caught.setdefault(label, []).append(str(message))

        warnings.showwarning = show
        yield caught


_TABLES = ("accuracy", "metrics", "layers", "curves", "losses", "geometry", "angles", "spectra")
GEOMETRY_RANK = 8  # r_v = r_d of the live step geometry (the Geometry page's Fig. 2 defaults)
# the live geometry's bases: float32 halves their cost against float64 (bench/app_step.py);
# the affinities move by ~1e-6 (Fig. 2 and `nufilt analyze` keep float64)
GEOMETRY_DTYPE = torch.float32
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
        # threads stepping the methods of a step side by side (None: one per method, at most the CPUs)
        self.workers: int | None = None
        self._lock = threading.RLock()
        self.pretrained = self.backbone.pretrained_state()
        self.keys = selected_layers(self.pretrained)
        self.reset()
        # the order's test inputs, made while the visitor looks at the page, not inside a step
        # (the zoo's "digits" generator alone takes ~0.8 s); a step needing one first waits for it
        threading.Thread(target=self._warm_evaluation, name="nufilt-warm", daemon=True).start()

    def _warm_evaluation(self) -> None:
        try:
            self.backbone.warm_evaluation(self.order)
        except Exception as error:  # noqa: BLE001 (the step that needs it reports the same error)
            with self._lock:  # not in the middle of a step, a reset or a restore
                self._note(f"preparing the test inputs failed: {type(error).__name__}: {error}")

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
        """Merge the next task with every method (finishing an interrupted step first).

        The methods step side by side in up to `workers` threads (each method's engine, merger
        and evaluation encoder are its own; what they share is computed first, `_prepare`), and
        their rows are committed in method order, so the tables do not depend on `workers`. When
        a method fails, the others still commit and the first error is raised afterwards."""
        with self._lock:
            if self.finished:
                return self.steps_done
            start, cpu_start = time.perf_counter(), time.process_time()
            target = self.steps_done + 1
            behind = [label for label, state in self._methods.items() if state.steps < target]
            task = self.order[target - 1]
            if progress:
                progress(f"step {target}/{len(self.order)}: {', '.join(behind)} "
                         f"merge{'s' if len(behind) == 1 else ''} {task}", 0.0)
            self._prepare(target)
            done: list[str] = []

            def finished(label: str) -> None:
                done.append(label)
                if progress and len(done) < len(behind):
                    progress(f"step {target}/{len(self.order)}: {', '.join(done)} done, "
                             f"{', '.join(x for x in behind if x not in done)} merging {task}", len(done) / len(behind))

            outcomes = self._run_engines(behind, finished)
            errors = []
            for label in behind:  # commit in method order
                outcome = outcomes[label]
                if isinstance(outcome, BaseException):
                    errors.append(outcome)
                else:
                    self._commit(label, *outcome)
            self.last_step_seconds = time.perf_counter() - start
            # CPU seconds of the whole process while the step ran (all its threads): the work, on an idle machine
            self.last_step_cpu_seconds = time.process_time() - cpu_start
            if errors:
                raise errors[0]
            if progress:
                progress(f"step {target} done", 1.0)
            return self.steps_done

    def _worker_count(self, jobs: int) -> int:
        if self.workers is not None:
            return max(1, min(int(self.workers), jobs))
        return max(1, min(jobs, available_cpus()))

    def _run_engines(self, labels: Sequence[str], finished) -> dict[str, Any]:
        """Each label's engine step (in threads when more than one worker): label -> (record,
        warnings) or the exception it raised."""
        outcomes: dict[str, Any] = {}
        threads = torch.get_num_threads()
        with _warnings_by_method() as caught:

            def one(label: str) -> None:
                _current.label = label
                # the caller's torch thread count, set in this thread too (OpenMP's and MKL's counts are
                # per thread; a different count changes float sums), so the methods merge as serially
                torch.set_num_threads(threads)
                try:
                    outcomes[label] = self._methods[label].engine.step()
                except Exception as error:  # noqa: BLE001 (re-raised by `step` after the others commit)
                    outcomes[label] = error
                finally:
                    _current.label = None
                    finished(label)

            workers = self._worker_count(len(labels))
            if workers == 1:
                for label in labels:
                    one(label)
            else:
                with ThreadPoolExecutor(workers, thread_name_prefix="nufilt-step") as pool:
                    list(pool.map(one, labels))
        return {label: (outcome if isinstance(outcome, BaseException) else (outcome, caught.get(label, [])))
                for label, outcome in outcomes.items()}

    def _prepare(self, step: int) -> None:
        """What the methods of a step share, computed once before they run (side by side they
        only read it): the new task's model and test inputs, the seen tasks' vector bases and
        statistics, and the old tasks' mean covariance."""
        task = self.order[step - 1]
        self.backbone.finetuned_state(task)
        self.backbone.warm_evaluation([task])
        self._ensure_task_bases(list(self.order[:step]))
        if self.track_losses:
            for name in self.order[:step]:
                if self._statistics(name) is None:
                    return
            self._old_covariance(step)

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
        """One atomic engine step for `label` alone, then its rows; a failed step changes nothing."""
        target = self._methods[label].steps + 1
        self._prepare(target)
        outcome = self._run_engines([label], lambda label: None)[label]
        if isinstance(outcome, BaseException):
            raise outcome
        self._commit(label, *outcome)

    def _commit(self, label: str, record: StepRecord, caught: Sequence[str]) -> None:
        """A committed engine step's rows and warnings into the run's tables."""
        state = self._methods[label]
        for text in caught:  # (NUFILT's own warnings already start with "nufilt: ")
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

    def _ensure_task_bases(self, tasks: Sequence[str]) -> None:
        """V(τi) of each task in `tasks` (computed once per task; kept across `reset()`)."""
        for task in tasks:
            if task not in self._task_bases:
                self._task_bases.update(vector_bases(self.pretrained, {task: self.backbone.finetuned_state(task)},
                                                     self.keys, GEOMETRY_RANK, solver="auto", dtype=GEOMETRY_DTYPE))

    def _geometry(self, record: StepRecord) -> dict[str, list[dict]]:
        """`analysis.step_geometry` tables for one step: with the tasks' activation statistics when
        losses are tracked (the same cached statistics), else the data-free column only."""
        seen = list(self.order[: record.step])
        self._ensure_task_bases(seen)
        data = None
        if self.track_losses:
            stats = {task: self._statistics(task) for task in seen}
            data = None if any(value is None for value in stats.values()) else stats
        r_p = self.specs[record.spec.label].options.get("r_p", 128) if record.spec.method == "nufilt" else 128
        return step_geometry(record.spec.label, record.step, seen, record.pretrained, record.previous,
                             record.merged, self._task_bases, self.keys, data, GEOMETRY_RANK, GEOMETRY_RANK,
                             max(int(r_p), 1), solver="auto", spectra=self.track_spectra,
                             dtype=GEOMETRY_DTYPE)

    # -- saving and restoring (the files themselves: `nufilt.appstate.runstore`)

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
