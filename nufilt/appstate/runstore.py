"""Runs on disk: a `MultiRun` saved after every step, keyed by its `RunConfig`, restored on reload.

A reload of the app page or a restart of the server opens the run of the same configuration at
the step it had reached. One file per configuration under `<cache>/runs/` (`$NUFILT_RUNS_DIR`
to put them elsewhere), written atomically: a crash mid-write leaves the previous step's file.
The file holds the merged models, the mergers' O(1) statistics and the run's tables; it is read
with `torch.load(weights_only=True)` (tensors, numbers, strings and containers only).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..cache import atomic_write_bytes, default_cache_dir

if TYPE_CHECKING:
    from .session import MultiRun, RunConfig

ENV_RUNS_DIR = "NUFILT_RUNS_DIR"
FORMAT = 1  # bumped when the snapshot layout changes; older files are ignored


def runs_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """`$NUFILT_RUNS_DIR`, else `<cache_dir or the default cache>/runs`."""
    configured = os.environ.get(ENV_RUNS_DIR, "").strip()
    if configured:
        return Path(configured)
    return Path(cache_dir) / "runs" if cache_dir else default_cache_dir() / "runs"


def config_text(config: RunConfig) -> str:
    """The run's identity: its configuration as text (every field, in order)."""
    return repr(config)


def run_path(config: RunConfig, folder: str | os.PathLike | None = None) -> Path:
    """The file of `config`'s run: `run-<sha256 of the configuration>.pt` in `folder` or `runs_dir`."""
    digest = hashlib.sha256(config_text(config).encode()).hexdigest()[:20]
    root = Path(folder) if folder is not None else runs_dir(config.cache_dir)
    return root / f"run-{digest}.pt"


def _plain(value: Any) -> Any:
    """Rows as JSON-like Python values (NumPy scalars and 0-d tensors become floats or ints)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    if isinstance(value, float):
        return value
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if hasattr(value, "item"):  # NumPy scalars
        return value.item()
    return float(value)


def save_run(run: MultiRun, config: RunConfig, target: int | None = None,
             folder: str | os.PathLike | None = None) -> Path:
    """Write `run`'s committed steps for `config` (atomically); `target`: the step a background
    run was heading for, so a restart can say where it stopped. Returns the file."""
    snapshot = run.snapshot()
    payload = {
        "format": FORMAT,
        "config": config_text(config),
        "target": int(target) if target is not None else snapshot["steps_done"],
        "methods": snapshot["methods"],
        "rows": json.dumps(_plain(snapshot["rows"])),  # NaN stays NaN (json allows it)
        "messages": list(snapshot["messages"]),
        "steps_done": snapshot["steps_done"],
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    path = run_path(config, folder)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def load_run(run: MultiRun, config: RunConfig, folder: str | os.PathLike | None = None) -> dict[str, int] | None:
    """Restore `run` (fresh, at step 0) from the saved file of `config`.

    Returns {"steps": restored steps, "target": the step a background run was heading for},
    or None when there is no usable file (none, another format or configuration, models that
    changed since: then the run stays at step 0 and a warning says why for a damaged file).
    """
    path = run_path(config, folder)
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if payload.get("format") != FORMAT or payload.get("config") != config_text(config):
            return None
        rows = json.loads(payload["rows"])
        if not run.restore({"methods": payload["methods"], "rows": rows, "messages": payload["messages"]}):
            return None  # the pre-trained model differs from the one the run was merged on
    except Exception as error:  # a damaged or foreign file: start again rather than fail the page
        warnings.warn(f"ignoring the saved run {path.name}: {type(error).__name__}: {error}", stacklevel=2)
        run.reset()
        return None
    return {"steps": run.steps_done, "target": int(payload.get("target", run.steps_done))}


def forget_run(config: RunConfig, folder: str | os.PathLike | None = None) -> None:
    """Delete the saved file of `config` (after a reset to step 0)."""
    run_path(config, folder).unlink(missing_ok=True)
