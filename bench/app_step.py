"""Server time of one app step ("Merge next task") on the embedded zoo, split into its parts.

Runs the app's `MultiRun` (the Merge and Geometry pages' run) with the app's default methods on
the first paper order, one step at a time, and prints per step the wall and CPU time of the whole
step (all methods) and the CPU time of its parts: scoring the seen tasks, the live step geometry,
the stability/plasticity losses, and the rest (merging and bookkeeping). The methods of a step run
side by side in up to `--workers` threads (the app's default: one per method, at most the CPUs), so
the wall time can be below the CPU time; CPU time is the process's (all threads): on a loaded
machine it is much closer to the work than the wall time.
Statistics and models are loaded before the first timed step, as the app's background
preparation does. Scoring uses the app's default of 200 test images per task (`--max-eval`).

    NUFILT_CACHE_DIR=/work/zoo-cache OMP_NUM_THREADS=1 python bench/app_step.py --threads 1
    python bench/app_step.py --threads 1 --spectra     # with the Geometry page's angles and spectra on
    python bench/app_step.py --threads 1 --workers 1   # the methods one after another (before v0.7)
    python bench/app_step.py --quick     # the micro zoo (3 tasks), built if missing: seconds
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nufilt import appstate  # noqa: E402
from nufilt.evaluation import paper_orders  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the micro zoo (3 tasks) instead of the default (8)")
    parser.add_argument("--methods", default="nufilt,opcm", help="comma-separated (default: the app's)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as the app)")
    parser.add_argument("--steps", type=int, default=0, help="steps to time (default: the whole order)")
    parser.add_argument("--max-eval", type=int, default=200,
                        help="test images per task when scoring (default 200, the app's Setup default; 0 = all)")
    parser.add_argument("--spectra", action="store_true",
                        help="also the principal angles and spectra (the Geometry page's toggle)")
    parser.add_argument("--workers", type=int, default=0,
                        help="threads stepping the methods side by side (default 0: the app's, one per method "
                             "up to the CPUs)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    preset, n_tasks = ("micro", 3) if args.quick else ("default", 8)
    backbone = appstate.open_backbone("tiny-vit", n_tasks, preset=preset, max_eval=args.max_eval or None)
    backbone.prepare()
    order = paper_orders([t.name for t in backbone.tasks], [1])[0]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    config = appstate.make_config("tiny-vit", n_tasks, order, methods, {})
    run = appstate.MultiRun(backbone, order, config.specs(backbone))
    run.track_spectra = args.spectra
    run.workers = args.workers or None
    for task in order:  # warm the model and statistics caches (the app's preparation)
        backbone.finetuned_state(task)
        run._statistics(task)

    # CPU seconds per part, summed over the step's threads (each call timed on its own thread)
    parts = {"eval": 0.0, "geometry": 0.0, "losses": 0.0}
    lock = threading.Lock()

    def timed(part, function):
        def call(*args, **kwargs):
            start = time.thread_time()
            try:
                return function(*args, **kwargs)
            finally:
                with lock:
                    parts[part] += time.thread_time() - start
        return call

    run.backbone.evaluate = timed("eval", run.backbone.evaluate)  # what the engines call
    run._geometry = timed("geometry", run._geometry)
    run._losses = timed("losses", run._losses)
    steps = len(order) if args.steps <= 0 else min(args.steps, len(order))
    print(f"tiny-vit {preset} zoo, {n_tasks} tasks, methods {', '.join(methods)}, {args.threads} thread(s), "
          f"scoring up to {args.max_eval or 'all'} test images per task, "
          f"angles and spectra {'on' if args.spectra else 'off'}, "
          f"{run._worker_count(len(methods))} step thread(s); load average {os.getloadavg()[0]:.1f}")
    print(f"{'step':>4} {'wall s':>7} {'cpu s':>6} | cpu s: {'eval':>6} {'geometry':>8} {'losses':>6} "
          f"{'merge+rest':>10}")
    totals, cpu, shares = [], [], dict.fromkeys(parts, 0.0)
    for _ in range(steps):
        parts.update(dict.fromkeys(parts, 0.0))
        run.step()
        totals.append(run.last_step_seconds)
        cpu.append(run.last_step_cpu_seconds)
        rest = run.last_step_cpu_seconds - sum(parts.values())
        for name, value in parts.items():
            shares[name] += value
        print(f"{run.steps_done:>4} {run.last_step_seconds:>7.2f} {run.last_step_cpu_seconds:>6.2f} |        "
              f"{parts['eval']:>6.2f} {parts['geometry']:>8.2f} {parts['losses']:>6.2f} {rest:>10.2f}")
    mean = {name: value / len(cpu) for name, value in shares.items()}
    print(f"mean step {sum(totals) / len(totals):.2f} s wall, {sum(cpu) / len(cpu):.2f} s cpu "
          f"(eval {mean['eval']:.2f}, geometry {mean['geometry']:.2f}, losses {mean['losses']:.2f}); "
          f"slowest {max(totals):.2f} s wall, {max(cpu):.2f} s cpu; load average {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
