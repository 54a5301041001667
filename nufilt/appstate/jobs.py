"""The app's long jobs on Ray workers, when they outlast the workers' start-up."""

from __future__ import annotations

import os
from pathlib import Path

from ..backbones import EMBEDDED
from ..threads import default_threads
from .backbones import open_backbone
from .session import RunConfig

APP_WORKERS_ENV = "NUFILT_APP_WORKERS"  # Ray workers of the app's long jobs; 0 or 1: in the server process


RAY_WORTH_SECONDS = 60.0  # Ray's start-up took 20-65 s on the 2-core machine: shorter jobs run here
CHEAP_PRESETS = ("micro", "quick")  # embedded zoos whose runs take about a second


def grid_workers(config: RunConfig, cells: int, seconds_per_cell: float | None = None):
    """`grid.Workers` for the app's long jobs (the Ranks page's points, Compare's runs over the
    paper's orders): `$NUFILT_APP_WORKERS` (default 2, the machine's two cores) Ray workers that
    each open this run's backbone, the Ray session kept for the next job. None (run here) when
    Ray is not installed, the count is 0 or 1, there is one cell, or (unless the variable asks
    for workers explicitly) the job is too short to pay for starting them: `cells *
    seconds_per_cell` (measured by the page) under `RAY_WORTH_SECONDS`, or, before any
    measurement, a micro/quick embedded zoo."""
    from functools import partial

    from ..grid import Workers, ray_available

    asked = os.environ.get(APP_WORKERS_ENV, "").strip()
    text = asked or "2"
    if not text.isdigit():
        raise ValueError(f"{APP_WORKERS_ENV} must be a whole number, got {text!r}")
    count = int(text)
    if count < 2 or cells < 2 or not ray_available():
        return None
    if not asked:  # the default: only a job that outlasts the workers' start-up
        if seconds_per_cell is None:
            short = config.backbone == EMBEDDED and config.preset in CHEAP_PRESETS
        else:
            short = cells * seconds_per_cell < RAY_WORTH_SECONDS
        if short:
            return None
    spec, n_tasks, preset, cache_dir, device, max_eval, data_dir = config.backbone_key()
    if cache_dir is not None:
        cache_dir = str(Path(cache_dir).expanduser().resolve())
    recipe = partial(open_backbone, spec, n_tasks, preset, cache_dir, device, max_eval, data_dir)
    return Workers(recipe, min(count, cells), threads=default_threads(), keep_session=True)
