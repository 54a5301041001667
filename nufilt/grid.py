"""Grids of independent runs (methods x orders, rank-sweep points), in this process or on Ray workers.

A grid is a list of `Cell`s; a cell is `fn(backbone, spec, order)` with `fn` a module-level
function (`evaluation.run_order`, `analysis.sweeps.sweep_point`), so it pickles by name. Every
cell is seeded by its spec and runs single-threaded, so where it runs does not change its result.

`run_grid(cells, backbone=...)` runs the cells one after another here. `run_grid(cells,
Workers(recipe, count))` runs them on `count` Ray actors: Ray is started in this process
(`count` CPUs, no dashboard) unless a session is already open or `Workers.address` names a
cluster. Each actor builds the backbone once with `recipe()` and keeps it (pre-trained state
included) for all its cells; a free actor takes the next cell in grid order. Values come back
in grid order. A cell that raises, or whose worker dies (a replacement worker is started), is
logged with its error and retried once; the others complete; then `GridError` lists the cells
that failed twice. Ctrl-C (KeyboardInterrupt) kills the actors and propagates.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .backbones.base import Backbone
from .memory import peak_rss_mb

if TYPE_CHECKING:
    from .evaluation import MethodSpec

ProgressFn = Callable[[str, float], None]
FAULT_ENV = "NUFILT_GRID_FAULT"  # "exit": worker 0 kills its process on its first cell (tests the retry)
ATTEMPTS = 2  # a failed cell is retried once
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Cell:
    """One independent run: `fn(backbone, spec, list(order))`; `name` labels progress and errors."""

    fn: Callable[[Backbone, MethodSpec, list[str]], Any]
    spec: MethodSpec
    order: tuple[str, ...]
    name: str


@dataclass(frozen=True)
class Workers:
    """Where a grid runs: `count` Ray workers, each holding `recipe()` (a picklable callable that
    builds the backbone: a module-level function or a `functools.partial` of one)."""

    recipe: Callable[[], Backbone]
    count: int | None = None  # None: one worker per CPU of the cluster at `address`
    address: str | None = None  # an existing cluster ("HOST:PORT", "auto", "ray://HOST:PORT"); None: start Ray here
    threads: int = 1  # torch CPU threads per worker
    keep_session: bool = False  # leave a Ray session this call started open (the app reuses it)

    def __post_init__(self) -> None:
        if self.count is not None and (isinstance(self.count, bool) or not isinstance(self.count, int)
                                       or self.count < 1):
            raise ValueError(f"the number of workers must be a positive integer, got {self.count!r}")
        if self.count is None and self.address is None:
            raise ValueError("give a number of workers, or the address of a Ray cluster")


@dataclass
class GridResult:
    values: list[Any]  # one per cell, in grid order
    workers: list[dict[str, Any]] = field(default_factory=list)  # one record per Ray worker (none in-process)
    seconds: float = 0.0  # the whole grid, Ray's start included
    startup_seconds: float = 0.0  # Ray's start and the workers' backbone loading

    def record(self) -> dict[str, Any]:
        """The `workers` entry of a results document."""
        return {"count": len([worker for worker in self.workers if "died" not in worker]), "seconds": self.seconds,
                "startup_seconds": self.startup_seconds, "per_worker": self.workers}


class GridError(RuntimeError):
    """Cells that failed on both attempts; `failures` maps cell index -> (name, last error),
    `values` cell index -> value for the cells that completed."""

    def __init__(self, failures: dict[int, tuple[str, str]], values: dict[int, Any] | None = None) -> None:
        self.failures = failures
        self.values = values or {}
        names = "; ".join(f"{name}: {error}" for name, error in failures.values())
        super().__init__(f"{len(failures)} cell(s) failed twice: {names}")


def without_timings(document: Any) -> Any:
    """A result document (JSON-like) without its timing fields (keys containing "seconds") and
    without the `workers` record: what a grid on workers and the same grid in one process share."""
    if isinstance(document, dict):
        return {key: without_timings(item) for key, item in document.items()
                if "seconds" not in key and key != "workers"}
    if isinstance(document, list):
        return [without_timings(item) for item in document]
    return document


def ray_available() -> bool:
    """Whether `ray` can be imported (the app uses workers only then)."""
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def check_address(address: str, timeout: float = 3.0) -> None:
    """ValueError unless something answers at a "HOST:PORT" address (schemes such as ray:// are
    allowed; "auto" is left to Ray, which finds the cluster started on this machine)."""
    if address == "auto":
        return
    location = address.split("://", 1)[-1]
    host, colon, port = location.rpartition(":")
    if not colon or not host or not port.isdigit():
        raise ValueError(f"--ray-address takes HOST:PORT (e.g. 127.0.0.1:6379) or 'auto', got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as error:
        raise ValueError(f"no Ray cluster answers at {address} ({error.strerror or error}); start one with "
                         "`ray start --head` (docs/benchmark.md)") from None


def run_grid(cells: Sequence[Cell], workers: Workers | None = None, backbone: Backbone | None = None,
             progress: ProgressFn | None = None) -> GridResult:
    """Run `cells` here on `backbone` (workers None) or on Ray workers; values in grid order."""
    if not cells:
        raise ValueError("the grid has no cells")
    start = time.perf_counter()
    if workers is None:
        if backbone is None:
            raise ValueError("an in-process grid needs the backbone")
        values = []
        for done, cell in enumerate(cells, start=1):
            values.append(cell.fn(backbone, cell.spec, list(cell.order)))
            if progress:
                progress(_progress_line(done, len(cells), cell.name, start), done / len(cells))
        return GridResult(values, [], time.perf_counter() - start)
    result = _run_on_ray(list(cells), workers, progress, start)
    result.seconds = time.perf_counter() - start
    return result


# ---------------------------------------------------------------- the Ray side


class GridWorker:
    """A Ray actor: builds the backbone once, then runs the cells it is given."""

    def __init__(self, recipe: Callable[[], Backbone], threads: int, crash: bool = False) -> None:
        import torch

        torch.set_num_threads(threads)
        started = time.perf_counter()
        self.backbone = recipe()
        self.load_seconds = time.perf_counter() - started
        self.crash = crash
        self.cells = 0
        self.busy_seconds = 0.0

    def ready(self) -> int:
        return os.getpid()

    def run(self, cell: Cell) -> Any:
        if self.crash:
            os._exit(1)  # fault injection (FAULT_ENV): the process dies like an OOM kill would
        started = time.perf_counter()
        value = cell.fn(self.backbone, cell.spec, list(cell.order))
        self.busy_seconds += time.perf_counter() - started
        self.cells += 1
        return value

    def stats(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "host": socket.gethostname(), "cells": self.cells,
                "load_seconds": self.load_seconds, "busy_seconds": self.busy_seconds, "peak_rss_mb": peak_rss_mb()}


def _connect(workers: Workers) -> bool:
    """Open a Ray session unless one is open; True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # offline: no usage-report prompt or upload
    # workers import nufilt from where this process found it, whatever folder they start in
    source = str(Path(__file__).resolve().parents[1])
    path = os.pathsep.join(filter(None, [source, os.environ.get("PYTHONPATH")]))
    common = {"logging_level": logging.WARNING, "log_to_driver": False,
              "runtime_env": {"env_vars": {"PYTHONPATH": path}}}
    if workers.address is not None:
        check_address(workers.address)
        try:
            ray.init(address=workers.address, **common)
        except (ConnectionError, RuntimeError) as error:
            raise ValueError(f"cannot join the Ray cluster at {workers.address}: {error}") from None
    else:
        ray.init(num_cpus=workers.count, include_dashboard=False, **common)
    return True


def _error_text(error: BaseException) -> str:
    cause = getattr(error, "cause", None)  # RayTaskError wraps the cell's own exception
    if isinstance(cause, BaseException):
        error = cause
    text = " ".join(str(error).split())
    if len(text) > 300:  # Ray's reports of a dead worker run to paragraphs
        text = text[:297] + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _progress_line(done: int, total: int, name: str, start: float) -> str:
    elapsed = time.perf_counter() - start
    left = elapsed / done * (total - done)
    return f"{done}/{total} cells done ({name}), {elapsed:.0f} s so far, about {left:.0f} s left"


def _run_on_ray(cells: list[Cell], workers: Workers, progress: ProgressFn | None, start: float) -> GridResult:
    import ray
    from ray.exceptions import RayActorError, RayTaskError

    started = _connect(workers)
    actor_class = ray.remote(num_cpus=1, max_restarts=0)(GridWorker)
    actors: dict[int, Any] = {}  # worker id -> live actor
    records: dict[int, dict[str, Any]] = {}  # worker id -> its record
    try:
        cpus = int(ray.cluster_resources().get("CPU", 0))
        count = workers.count or max(1, cpus)
        if count > cpus:  # the workers would wait for CPUs forever
            raise ValueError(f"{count} workers need {count} CPUs; the Ray cluster has {cpus}")
        crash = os.environ.get(FAULT_ENV) == "exit"

        def spawn(worker: int, crash: bool = False) -> None:
            actors[worker] = actor_class.remote(workers.recipe, workers.threads, crash)
            records[worker] = {"worker": worker, "cells": 0}

        for worker in range(min(count, len(cells))):
            spawn(worker, crash and worker == 0)
        try:
            ray.get([actor.ready.remote() for actor in actors.values()])
        except RayActorError as error:
            raise RuntimeError(f"a Ray worker could not load the backbone: {_error_text(error)}") from None
        startup = time.perf_counter() - start
        start = time.perf_counter()  # the time left is estimated from the cells' pace, not Ray's start
        pending = deque(range(len(cells)))
        idle = deque(actors)
        running: dict[Any, tuple[int, int]] = {}  # object ref -> (worker, cell index)
        values: dict[int, Any] = {}
        attempts: Counter[int] = Counter()
        failures: dict[int, tuple[str, str]] = {}
        while pending or running:
            while idle and pending:
                worker, index = idle.popleft(), pending.popleft()
                running[actors[worker].run.remote(cells[index])] = (worker, index)
            [ref], _ = ray.wait(list(running), num_returns=1)
            worker, index = running.pop(ref)
            try:
                values[index] = ray.get(ref)
                records[worker]["cells"] += 1
                idle.append(worker)
            except (RayTaskError, RayActorError) as error:
                attempts[index] += 1
                if isinstance(error, RayActorError):  # the process died: replace it
                    records[worker]["died"] = _error_text(error)
                    del actors[worker]
                    spawn(len(records))
                    worker = len(records) - 1
                idle.append(worker)
                text = _error_text(error)
                if attempts[index] < ATTEMPTS:
                    log.warning("cell %s failed (%s); retrying it", cells[index].name, text)
                    pending.appendleft(index)
                else:
                    log.warning("cell %s failed again (%s); the rest of the grid goes on", cells[index].name, text)
                    failures[index] = (cells[index].name, text)
                continue
            if progress:
                done = len(values) + len(failures)
                progress(_progress_line(done, len(cells), cells[index].name, start), done / len(cells))
        if failures:
            raise GridError(failures, values)
        stats = ray.get([actor.stats.remote() for actor in actors.values()])
        for worker, record in zip(actors, stats, strict=True):
            records[worker].update(record)
        return GridResult([values[i] for i in range(len(cells))], list(records.values()), startup_seconds=startup)
    finally:  # also on Ctrl-C: no worker outlives the grid
        for actor in actors.values():
            ray.kill(actor)
        if started and not workers.keep_session:
            ray.shutdown()
