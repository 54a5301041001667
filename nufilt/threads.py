"""Torch CPU threads: the default every entry point uses, and a safe temporary change.

One thread is the default (`$NUFILT_THREADS` overrides it; `--threads` on the CLI). Measured on
the 2-core machine (docs/performance.md): with torch's default of one thread per core, a
documented command took 5 min 55 s while another process kept the second core busy and 32 s with one
thread; on an idle machine two threads gained little on this project's small and mid-sized
matrices. A busy second core makes every multi-threaded kernel wait for its slowest thread.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

ENV_THREADS = "NUFILT_THREADS"
_change_lock = threading.Lock()  # torch's thread count is process-wide
_active = {"blocks": 0, "before": 0}  # open torch_threads blocks, and the count before the first


def default_threads() -> int:
    """`$NUFILT_THREADS` if set (a positive integer), else 1."""
    value = os.environ.get(ENV_THREADS, "").strip()
    if not value:
        return 1
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{ENV_THREADS} must be a positive integer, got {value!r}")
    return int(value)


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run the block with `count` torch CPU threads (None or the current count: no change), then
    restore. The count is process-wide: blocks that overlap in several threads share it, and
    the last one to leave restores what was set before the first one entered."""
    if count is None:
        yield
        return
    with _change_lock:
        if _active["blocks"] == 0:
            _active["before"] = torch.get_num_threads()
        _active["blocks"] += 1
        if torch.get_num_threads() != count:
            torch.set_num_threads(count)
    try:
        yield
    finally:
        with _change_lock:
            _active["blocks"] -= 1
            if _active["blocks"] == 0 and torch.get_num_threads() != _active["before"]:
                torch.set_num_threads(_active["before"])
