"""Peak memory of this process, for the CLI's run report."""

from __future__ import annotations

import resource
import sys
from pathlib import Path

import torch


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux: VmHWM, else getrusage)."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**10
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


def peak_gpu_mb() -> float | None:
    """Peak CUDA memory allocated by torch so far, in MiB; None without CUDA."""
    if not torch.cuda.is_available():
        return None
    return torch.cuda.max_memory_allocated() / 2**20


def memory_report() -> str:
    """One line: `peak memory: 1234 MiB RSS (GPU 567 MiB)`."""
    gpu = peak_gpu_mb()
    return f"peak memory: {peak_rss_mb():.0f} MiB RSS" + ("" if gpu is None else f" (GPU {gpu:.0f} MiB)")
