"""Time to build the embedded zoo from an empty cache, stage by stage, and to load it again.

Builds into a fresh temporary cache folder (deleted afterwards unless --keep), so the machine's
./cache is neither used nor touched. Stages: generating the task data, pre-training the encoder,
fitting the frozen heads, fine-tuning the task models (in worker processes as the CLI and the app
do), then a second `build_zoo` call (integrity check with sha256 of every file) and loading every
task model, which is what a second run pays. A shipped pre-trained encoder that matches the config
(`nufilt/zoo/pretrained/`) is copied instead of pre-training, as on a user's first run;
--no-shipped pre-trains anyway, and --ship then writes the result as the shipped encoder.

    python bench/zoo_build.py                 # the default zoo, all 20 tasks (about 6 minutes on 2 cores)
    python bench/zoo_build.py --tasks 8       # the app's default group
    python bench/zoo_build.py --quick         # the micro zoo of the tests, seconds
    python bench/zoo_build.py --tasks 8 --no-shipped --ship   # re-make the shipped encoder
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nufilt.zoo.build import (  # noqa: E402
    ENV_SHIPPED,
    TaskData,
    build_workers,
    build_zoo,
    ensure_heads,
    ensure_pretrained,
    finetuned_root,
    load_state,
    ship_pretrained,
    shipped_encoder,
)
from nufilt.zoo.config import resolve_config  # noqa: E402


def cpu_seconds() -> float:
    """CPU time of this process and its finished worker processes (user + system)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(rows: list, stage: str, function, *args, **kwargs):
    start, cpu = time.perf_counter(), cpu_seconds()
    result = function(*args, **kwargs)
    rows.append((stage, time.perf_counter() - start, cpu_seconds() - cpu))
    return result


def generate_data(config, data: TaskData, pretraining: bool) -> None:
    for task in (*(config.pretrain_tasks if pretraining else ()), *config.tasks):
        data.get(task, "train")
        data.get(task, "test")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=None, help="build the first N tasks (default: all 20)")
    parser.add_argument("--quick", action="store_true", help="the micro zoo (3 tasks, seconds)")
    parser.add_argument("--workers", type=int, default=None,
                        help="fine-tuning processes (default: as the CLI, $NUFILT_BUILD_WORKERS or up to 2)")
    parser.add_argument("--no-shipped", action="store_true",
                        help="pre-train even when a shipped encoder matches the config")
    parser.add_argument("--ship", action="store_true",
                        help="write the pre-trained encoder to nufilt/zoo/pretrained/ (needs --no-shipped)")
    parser.add_argument("--keep", metavar="DIR", default=None, help="build into DIR and keep it")
    args = parser.parse_args(argv)
    if args.ship and not args.no_shipped:
        parser.error("--ship needs --no-shipped: only an encoder pre-trained by this run is shipped")
    if args.no_shipped:
        os.environ[ENV_SHIPPED] = "0"
    config = resolve_config("micro" if args.quick else "default")
    if args.tasks is not None:
        if not 1 <= args.tasks <= len(config.tasks):
            parser.error(f"--tasks must be in 1..{len(config.tasks)}")
        config = config.replace(tasks=config.tasks[: args.tasks])
    cache = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="nufilt-zoo-bench-"))
    cache.mkdir(parents=True, exist_ok=True)
    try:
        if any(cache.iterdir()):
            parser.error(f"{cache} is not empty: the benchmark needs an empty cache")
        workers = args.workers or build_workers(config, len(config.tasks))
        print(f"zoo: {len(config.tasks)} tasks, width {config.width}, {config.layers} blocks, "
              f"{config.pretrain_steps} pre-training steps; {os.cpu_count()} CPUs, {workers} fine-tuning "
              f"process(es); load average {os.getloadavg()[0]:.1f}; cache {cache}", flush=True)
        rows: list[tuple[str, float]] = []
        data = TaskData(config)
        shipped = shipped_encoder(config)  # then the pre-training tasks' data is never made
        timed(rows, "task data (generated)", generate_data, config, data, shipped is None)
        stage = "pre-trained (shipped file)" if shipped else "pre-training"
        timed(rows, stage, ensure_pretrained, config, cache, data)
        timed(rows, "heads", ensure_heads, config, cache, data)
        timed(rows, f"fine-tuning {len(config.tasks)} tasks", build_zoo, config, None, cache, workers=workers)
        build_total = sum(seconds for _, seconds, _ in rows)
        build_cpu = sum(cpu for _, _, cpu in rows)
        start = time.perf_counter()
        manifest = build_zoo(config, None, cache, workers=1)
        for task in config.tasks:
            load_state(finetuned_root(config, cache) / task / "encoder")
        reload = time.perf_counter() - start

        # on a busy machine wall time grows with the load; CPU time much less
        print(f"\n{'stage':<28} {'seconds':>9} {'CPU s':>9}")
        for stage, seconds, cpu in rows:
            print(f"{stage:<28} {seconds:>9.1f} {cpu:>9.1f}")
        if args.ship:
            print(f"shipped encoder written to {ship_pretrained(config, cache)}")
        print(f"{'build from empty (sum)':<28} {build_total:>9.1f} {build_cpu:>9.1f}   = {build_total / 60:.1f} min")
        print(f"{'second run: verify + load':<28} {reload:>9.1f}")
        print(f"load average at the end: {' / '.join(f'{x:.1f}' for x in os.getloadavg())} (1 / 5 / 15 min)")
        pretrained = [task["pretrained_accuracy"] for task in manifest["tasks"]]
        individual = [task["individual_accuracy"] for task in manifest["tasks"]]
        print(f"\nmean test accuracy: pre-trained {sum(pretrained) / len(pretrained):.1f}, "
              f"individual {sum(individual) / len(individual):.1f}")
    finally:
        if not args.keep:
            shutil.rmtree(cache, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
