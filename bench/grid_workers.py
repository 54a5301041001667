"""A benchmark grid (methods x orders) in one process vs on Ray workers: seconds, ratio, memory.

Runs `evaluation.run_benchmark` twice on the same backbone, once in this process (as
`python -m nufilt run` without `--workers`) and once on `--workers` Ray workers started here (as
`--workers N`), checks that the two JSON documents agree run by run (timings aside), and prints
the wall-clock seconds of each, their ratio (the ceiling is the number of free cores), Ray's
start-up (Ray itself and each worker loading the backbone), the peak RSS of each worker, and the
load average before and after. Every run uses one torch thread (`--threads`).

    python bench/grid_workers.py                     # 8 tasks x 10 orders x all methods (tens of minutes)
    python bench/grid_workers.py --orders 1-3        # a smaller grid on a busy machine
    python bench/grid_workers.py --quick             # micro zoo, 3 methods x 2 orders: about a minute
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nufilt.backbones import get_backbone  # noqa: E402
from nufilt.cache import default_cache_dir  # noqa: E402
from nufilt.evaluation import method_spec, paper_orders, parse_order_indices, run_benchmark  # noqa: E402
from nufilt.grid import Workers, without_timings  # noqa: E402
from nufilt.methods import METHODS  # noqa: E402


def _load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())




def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="micro zoo (3 tasks), 3 methods x 2 orders")
    parser.add_argument("--tasks", type=int, default=8, help="tasks (default 8)")
    parser.add_argument("--orders", default="all", help="order indices, e.g. 1-3 (default: all ten)")
    parser.add_argument("--methods", default="all", help="comma-separated methods (default: all)")
    parser.add_argument("--workers", type=int, default=2, help="Ray workers (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1)")
    parser.add_argument("--preset", default=None, help="zoo preset (default: $NUFILT_ZOO_PRESET, else default)")
    args = parser.parse_args()
    if args.quick:
        args.preset, args.tasks, args.orders, args.methods = "micro", 3, "1,2", "task_arithmetic,opcm,nufilt"
    torch.set_num_threads(args.threads)
    recipe = partial(get_backbone, "tiny-vit", n_tasks=args.tasks, preset=args.preset,
                     cache_dir=default_cache_dir().resolve(), threads=args.threads)
    backbone = recipe()
    backbone.prepare()
    names = [task.name for task in backbone.tasks]
    orders = paper_orders(names, parse_order_indices(args.orders))
    labels = list(METHODS) if args.methods == "all" else [m.strip() for m in args.methods.split(",") if m.strip()]
    specs = [method_spec(label, len(names), backbone.recommended_options, device="cpu") for label in labels]
    print(f"tiny-vit {args.preset or 'default'} zoo, "
          f"{len(names)} tasks x {len(orders)} orders x {len(specs)} methods = {len(specs) * len(orders)} runs, "
          f"{args.threads} torch thread(s) per process, {os.cpu_count()} CPUs", flush=True)

    load_before = _load()
    start = time.perf_counter()
    serial = run_benchmark(backbone, specs, orders)
    serial_seconds = time.perf_counter() - start
    load_middle = _load()
    start = time.perf_counter()
    parallel = run_benchmark(backbone, specs, orders, workers=Workers(recipe, args.workers, threads=args.threads))
    parallel_seconds = time.perf_counter() - start
    load_after = _load()

    same = without_timings(serial) == without_timings(parallel)
    record = parallel["workers"]
    startup = record["startup_seconds"]
    print(f"{'mode':<22} {'seconds':>8} {'ratio':>6}  load average (1, 5, 15 min) at its start")
    print(f"{'in-process':<22} {serial_seconds:>8.1f} {1.0:>6.2f}  {load_before}")
    print(f"{f'{args.workers} Ray workers':<22} {parallel_seconds:>8.1f} {serial_seconds / parallel_seconds:>6.2f}"
          f"  {load_middle}")
    print(f"{'  without start-up':<22} {parallel_seconds - startup:>8.1f} "
          f"{serial_seconds / (parallel_seconds - startup):>6.2f}  (Ray start + backbone loads: {startup:.1f} s)")
    print(f"load average at the end: {load_after}")
    for worker in record["per_worker"]:
        nan = float("nan")
        print(f"worker {worker['worker']}: {worker['cells']} runs, loaded the backbone in "
              f"{worker.get('load_seconds', nan):.1f} s, busy {worker.get('busy_seconds', nan):.1f} s, "
              f"peak {worker.get('peak_rss_mb', nan):.0f} MiB RSS")
    print(f"results identical run by run (timings aside): {'yes' if same else 'NO'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
