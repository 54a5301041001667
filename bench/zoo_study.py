"""Zoo variants side by side: does a change to the embedded zoo make it tell the paper's story?

Each variant is the default `ZooConfig` (or `--preset`) with field overrides (`name=value,name=value`), built into
a scratch cache (stages shared between variants are reused: a variant that changes only the
fine-tuning reuses the pre-trained encoder and heads). One row per variant: build time, mean
pre-trained and individual accuracy, ACC / BWT of task arithmetic, OPCM, NUFILT and the four
Table 4 ablations over the paper's orders, NUFILT's recovered share of the pre-trained to
individual gap, and the Fig. 2 affinity (mean over NUFILT's layers: matched data/vector pairs,
mismatched pairs). "(c)": the pre-trained encoder came from the cache (an earlier variant), so the
build time is that of the later stages only.

    python bench/zoo_study.py --cache /tmp/zoo-study --variant default --variant pretrain_steps=1600
    python bench/zoo_study.py --cache /tmp/zoo-study --tasks 8 --orders 1,2 \\
        --variant finetune_lr=1e-4,finetune_steps=400 --out study.jsonl
    python bench/zoo_study.py --quick --cache /tmp/zoo-study-micro --variant default --variant head_scale=15

The pre-training stage is run here (never copied from a shipped encoder), so the build time is
that of a cache without one. Rows are appended to --out as JSON lines as they finish.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ["NUFILT_ZOO_SHIPPED"] = "0"  # measure pre-training; set before nufilt reads it

from nufilt.analysis.affinity import backbone_affinity, diagonal_dominance  # noqa: E402
from nufilt.backbones.tiny_vit import make_backbone  # noqa: E402
from nufilt.evaluation import (  # noqa: E402
    method_spec,
    paper_orders,
    parse_order_indices,
    reference_summary,
    run_benchmark,
)
from nufilt.zoo.build import pretrained_folder  # noqa: E402
from nufilt.zoo.config import ZooConfig, resolve_config  # noqa: E402

METHODS = ("task_arithmetic", "opcm", "nufilt", "naive", "null_space_only", "no_filter", "lora_only")
SHORT = {"task_arithmetic": "TA", "opcm": "OPCM", "nufilt": "NUFILT", "naive": "naive",
         "null_space_only": "null", "no_filter": "nofilt", "lora_only": "lora"}


def parse_value(field: dataclasses.Field, text: str) -> object:
    """A ZooConfig field value from text: ints, floats, strings, and tuples as a|b|c."""
    default = field.default
    if isinstance(default, tuple):
        return tuple(part for part in text.split("|") if part)
    if isinstance(default, bool):
        raise ValueError(f"field {field.name} is not supported")
    if isinstance(default, int):
        return int(text)
    if isinstance(default, float):
        return float(text)
    return text


def parse_variant(text: str) -> dict:
    """`name=value,name=value` (or "default") to ZooConfig overrides; ValueError on unknown names."""
    if text.strip() == "default":
        return {}
    fields = {f.name: f for f in dataclasses.fields(ZooConfig)}
    overrides = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or name not in fields:
            raise ValueError(f"variant item {item!r}: expected name=value with a ZooConfig field name")
        overrides[name] = parse_value(fields[name], value.strip())
    return overrides


def study_variant(label: str, preset: str, overrides: dict, n_tasks: int, order_indices: list[int],
                  cache: Path, workers: int | None) -> dict:
    config = resolve_config(preset, **overrides)
    backbone = make_backbone(preset=config, n_tasks=n_tasks, cache_dir=cache, build_workers=workers)
    pretrained_cached = pretrained_folder(config, cache).exists()  # shared with an earlier variant
    start = time.perf_counter()
    backbone.prepare()
    build_seconds = time.perf_counter() - start
    pretrain_seconds = json.loads((pretrained_folder(config, cache) / "pretrained.json").read_text())["seconds"]
    names = [t.name for t in backbone.tasks]
    reference = reference_summary(backbone.reference(), names)
    specs = [method_spec(m, n_tasks, backbone.recommended_options) for m in METHODS]
    start = time.perf_counter()
    result = run_benchmark(backbone, specs, paper_orders(names, order_indices))
    merge_seconds = time.perf_counter() - start
    summary = result["summary"]
    gap = reference["individual"] - reference["pretrained"]
    recovered = (summary["nufilt"]["acc_mean"] - reference["pretrained"]) / gap if gap > 0 else float("nan")
    table = backbone_affinity(backbone, names, n_samples=min(256, config.n_test), cache_dir=cache)
    dominance = diagonal_dominance(table)
    row = dominance[(dominance["kind"] == "all") & (dominance["stat"] == "mean")].iloc[0]
    return {
        "variant": label,
        "overrides": overrides,
        "tasks": n_tasks,
        "orders": order_indices,
        "build_seconds": build_seconds,  # this run's: without pre-training when it was cached
        "pretrain_cached": pretrained_cached,
        "pretrain_seconds": pretrain_seconds,  # when the encoder was pre-trained
        "load_average": os.getloadavg()[0],
        "merge_seconds": merge_seconds,
        "pretrained": reference["pretrained"],
        "individual": reference["individual"],
        "acc": {m: summary[m]["acc_mean"] for m in METHODS},
        "bwt": {m: summary[m]["bwt_mean"] for m in METHODS},
        "recovered": recovered,
        "affinity_diagonal": float(row["diagonal"]),
        "affinity_off_diagonal": float(row["off_diagonal"]),
    }


def header() -> str:
    methods = " ".join(f"{SHORT[m]:>13}" for m in METHODS)
    return (f"{'variant':<40} {'build s':>7} {'pre-train s':>11} {'load':>4} {'pre':>5} {'indiv':>5} {methods} "
            f"{'recov':>5} {'diag/off':>9}")


def format_row(row: dict) -> str:
    methods = " ".join(f"{row['acc'][m]:>6.1f}/{row['bwt'][m]:>+6.1f}" for m in METHODS)
    pretrain = f"{row['pretrain_seconds']:.0f}{' (c)' if row['pretrain_cached'] else ''}"
    return (f"{row['variant'][:40]:<40} {row['build_seconds']:>7.0f} {pretrain:>11} {row['load_average']:>4.1f} "
            f"{row['pretrained']:>5.1f} "
            f"{row['individual']:>5.1f} {methods} {100 * row['recovered']:>4.0f}% "
            f"{row['affinity_diagonal']:.2f}/{row['affinity_off_diagonal']:.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variant", action="append", metavar="NAME=VALUE,...",
                        help='ZooConfig overrides, or "default" (the default); repeat for more rows (tuples: a|b|c)')
    parser.add_argument("--tasks", type=int, default=8, help="the first N tasks (default: 8)")
    parser.add_argument("--orders", default="1,2", help="paper orders, e.g. 1,2 or all (default: 1,2)")
    parser.add_argument("--preset", default="default", help="the zoo preset the variants change (default: default)")
    parser.add_argument("--quick", action="store_true", help="the micro zoo of the tests (3 tasks)")
    parser.add_argument("--cache", type=Path, required=True, metavar="DIR", help="scratch cache folder")
    parser.add_argument("--workers", type=int, default=None, help="fine-tuning processes (default: as the CLI)")
    parser.add_argument("--out", type=Path, metavar="PATH", help="append each row as a JSON line here")
    args = parser.parse_args(argv)
    if args.quick:
        args.preset, args.tasks = "micro", 3
    try:
        variants = [(text, parse_variant(text)) for text in args.variant or ["default"]]
        for _, overrides in variants:
            resolve_config(args.preset, **overrides)  # validate every variant before building any
        orders = parse_order_indices(args.orders)
    except (ValueError, TypeError) as error:
        parser.error(str(error))
    print(f"{args.tasks} tasks, orders {args.orders}; ACC/BWT per method", flush=True)
    print(header(), flush=True)
    for label, overrides in variants:
        row = study_variant(label, args.preset, overrides, args.tasks, orders, args.cache, args.workers)
        print(format_row(row), flush=True)
        if args.out is not None:
            with args.out.open("a") as stream:
                stream.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
