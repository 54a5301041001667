"""Headless command line: `python -m nufilt <command> ...`.

`build_parser()` returns the top-level parser with one sub-parser per command; each command is
`add_<command>_parser(subparsers)` + a `<command>_command(args) -> int` handler stored as the
sub-parser's `handler` default. To add a command, write both and register the first in
`COMMANDS`. Bad arguments exit with status 2 and a one-line reason on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from .methods import ABLATIONS, METHODS

PRESET_HELP = "tiny-vit zoo preset: default, micro or quick (default: $NUFILT_ZOO_PRESET, else default)"
THREADS_HELP = "torch CPU threads (default: $NUFILT_THREADS, else 1: the fast choice on a shared machine)"
DEFAULT_METHODS = ("weight_average", "task_arithmetic", "ties", "magmax", "opcm", "wudi", "nufilt")


class UsageError(Exception):
    """A bad argument found after parsing; reported like argparse's own errors (exit 2)."""


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line ("nufilt run: error: ...") and exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


# ---------------------------------------------------------------- option parsing helpers


def parse_value(text: str) -> Any:
    """'3' -> 3, '0.5' -> 0.5, 'true'/'false' -> bool, 'none' -> None, JSON lists, else str."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_options(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    """["nufilt.r_p=32", "opcm.alpha=0.6"] -> {"nufilt": {"r_p": 32}, "opcm": {"alpha": 0.6}}."""
    options: dict[str, dict[str, Any]] = {}
    for item in items:
        target, eq, value = item.partition("=")
        method, dot, key = target.partition(".")
        if not eq or not dot or not method or not key:
            raise UsageError(f"--option expects METHOD.KEY=VALUE, got {item!r}")
        if method not in METHODS and method not in ABLATIONS:
            raise UsageError(f"--option names unknown method {method!r}")
        options.setdefault(method, {})[key] = parse_value(value)
    return options


def _split_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


# ---------------------------------------------------------------- `run`


def add_run_parser(subparsers: argparse._SubParsersAction) -> None:
    methods = ", ".join(METHODS)
    ablations = ", ".join(ABLATIONS)
    parser = subparsers.add_parser(
        "run",
        help="continual merging benchmark: ACC/BWT table + JSON",
        description=(
            "Merge the backbone's task models one at a time in each task order, score every "
            "seen task after each step, and report ACC and BWT (mean ± std over orders) with "
            "pre-trained and individual reference rows."
        ),
        epilog=(
            f"methods: {methods}; NUFILT ablations (Table 4): {ablations}; 'all' = every method, "
            "'ablations' = every ablation. Options: Table 9 defaults for the task count, "
            "then the backbone's recommended options (tiny-vit: zoo-scaled NUFILT ranks), then "
            "--option. Example: python -m nufilt run --tasks 8 --orders 1,2,3 "
            "--methods weight_average,task_arithmetic,opcm,nufilt --out results.json"
        ),
    )
    parser.add_argument("--backbone", default="tiny-vit", help="backbone spec (default: tiny-vit, the offline zoo)")
    parser.add_argument("--tasks", type=int, default=8, metavar="N",
                        help="number of tasks (default: 8); 8, 14 and 20 have the paper's orders, others seeded ones")
    order_group = parser.add_mutually_exclusive_group()
    order_group.add_argument(
        "--orders",
        default="1,2,3",
        metavar="LIST",
        help="task orders by 1-based index: '1,2,3', '1-10' or 'all' (default: 1,2,3); the paper's "
        "ten for 8, 14, 20 tasks, else order 1 = the backbone's task order and 2-10 seeded permutations",
    )
    order_group.add_argument(
        "--order",
        action="append",
        metavar="TASK,TASK,...",
        help="a custom order of task names (repeat for several orders)",
    )
    parser.add_argument(
        "--methods",
        default=",".join(DEFAULT_METHODS),
        metavar="LIST",
        help="comma-separated methods and ablations (default: all seven methods)",
    )
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="METHOD.KEY=VALUE",
        help="override a method option, e.g. nufilt.r_p=32 (repeatable; an option given for "
        "nufilt also reaches its ablations)",
    )
    parser.add_argument("--out", type=Path, metavar="PATH", help="write the results as JSON here")
    parser.add_argument("--preset", default=None, help=PRESET_HELP)
    parser.add_argument("--cache-dir", type=Path, metavar="DIR", help="cache folder (default: ./cache)")
    parser.add_argument("--threads", type=int, metavar="N", help=THREADS_HELP)
    parser.add_argument("--device", default="auto", help="merge device: auto, cpu or cuda (default: auto)")
    parser.add_argument("--quiet", action="store_true", help="no progress output on stderr")
    parser.add_argument(
        "--save",
        type=Path,
        metavar="DIR",
        help="write the final merged model of the first method and order as a save_pretrained folder",
    )
    parser.add_argument("--data-dir", type=Path, metavar="DIR",
                        help="hub backbones: local test sets (docs/real-backbones.md)")
    parser.add_argument("--max-samples", type=int, metavar="N", help="hub backbones: test examples per task")
    add_worker_arguments(parser, "the grid's runs (method x order)")
    parser.set_defaults(handler=run_command)


def _resolve_methods(text: str) -> list[str]:
    labels: list[str] = []
    for name in _split_list(text):
        expanded = {"all": list(METHODS), "ablations": list(ABLATIONS)}.get(name, [name])
        for label in expanded:
            if label not in METHODS and label not in ABLATIONS:
                known = ", ".join([*METHODS, *ABLATIONS])
                raise UsageError(f"unknown method {label!r}; known: {known}")
            if label not in labels:
                labels.append(label)
    if not labels:
        raise UsageError("--methods is empty")
    return labels


def _check_option_targets(overrides: dict[str, dict], labels: Sequence[str]) -> None:
    """Every --option must reach a selected row ("nufilt" options also reach the ablations)."""
    reached = set(labels) | ({"nufilt"} if any(label in ABLATIONS for label in labels) else set())
    for target in overrides:
        if target not in reached:
            raise UsageError(f"--option for {target!r}, which is not in --methods")


def _backbone_arguments(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """(spec, keyword arguments) of `backbones.get_backbone` for the command's flags."""
    if args.backbone == "tiny-vit":
        return "tiny-vit", {"n_tasks": args.tasks, "preset": args.preset, "cache_dir": args.cache_dir,
                            "threads": args.threads}
    if args.preset is not None:
        raise UsageError("--preset applies to the tiny-vit backbone only")
    kwargs: dict[str, Any] = {"tasks": args.tasks, "device": args.device}
    for key in ("cache_dir", "data_dir", "max_samples"):
        if getattr(args, key) is not None:
            kwargs[key] = getattr(args, key)
    return args.backbone, kwargs


def _make_backbone(args: argparse.Namespace, progress: Callable[[str, float], None] | None):
    from .backbones import get_backbone

    spec, kwargs = _backbone_arguments(args)
    if spec == "tiny-vit":  # missing task models fine-tuned in up to two processes
        kwargs.update(progress=progress, build_workers=None)
    return get_backbone(spec, **kwargs)


def add_worker_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--workers", type=int, metavar="N",
                        help=f"run {what} on N Ray workers (Ray started here; default: one after another in this "
                        "process); with --ray-address: N workers on that cluster (default: one per CPU)")
    parser.add_argument("--ray-address", metavar="ADDRESS",
                        help="an existing Ray cluster (`ray start --head` prints it; HOST:PORT or auto)")


def _workers(args: argparse.Namespace):
    """`grid.Workers` for --workers / --ray-address (None: in-process); each worker rebuilds the
    backbone from the same flags, with paths made absolute (workers may start elsewhere)."""
    from functools import partial

    if args.workers is None and args.ray_address is None:
        return None
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers must be positive, got {args.workers}")
    from .grid import Workers, check_address, ray_available

    if not ray_available():
        raise UsageError("--workers and --ray-address need Ray: pip install ray")
    if args.ray_address is not None:
        try:
            check_address(args.ray_address)
        except ValueError as error:
            raise UsageError(str(error)) from None
    from .backbones import get_backbone

    spec, kwargs = _backbone_arguments(args)
    if spec == "tiny-vit" and kwargs["cache_dir"] is None:
        from .cache import default_cache_dir

        kwargs["cache_dir"] = default_cache_dir()
    for key in ("cache_dir", "data_dir"):
        if kwargs.get(key) is not None:
            kwargs[key] = Path(kwargs[key]).expanduser().resolve()
    return Workers(partial(get_backbone, spec, **kwargs), args.workers, args.ray_address, args.threads)


def _stderr_progress(quiet: bool) -> Callable[[str, float], None] | None:
    if quiet:
        return None
    last = [0.0]

    def report(message: str, fraction: float) -> None:
        now = time.monotonic()
        if now - last[0] > 2.0 or fraction >= 1.0:
            last[0] = now
            print(f"[{100 * fraction:5.1f}%] {message}", file=sys.stderr, flush=True)

    return report


def run_command(args: argparse.Namespace) -> int:

    from .evaluation import (
        check_order,
        format_table,
        method_spec,
        paper_orders,
        parse_order_indices,
        run_benchmark,
        task_orders,
    )

    if args.tasks < 1:
        raise UsageError(f"--tasks must be positive, got {args.tasks}")
    labels = _resolve_methods(args.methods)
    overrides = parse_options(args.option)
    if args.out is not None and args.out.is_dir():
        raise UsageError(f"--out {args.out} is a directory")
    if args.save is not None and args.save.exists() and (not args.save.is_dir() or any(args.save.iterdir())):
        raise UsageError(f"--save {args.save} exists and is not an empty folder")
    progress = _stderr_progress(args.quiet)
    workers = _workers(args)
    try:
        # in a terminal tqdm shows the zoo build; elsewhere (logs, the app) the callback does
        backbone = _make_backbone(args, None if sys.stderr.isatty() else progress)
        names = [task.name for task in backbone.tasks]
        if len(names) != args.tasks:
            raise UsageError(f"backbone {args.backbone!r} has {len(names)} tasks, not {args.tasks}")
        if args.order:
            orders = [check_order(_split_list(text), names, len(names)) for text in args.order]
        else:
            orders = paper_orders(names, parse_order_indices(args.orders, len(task_orders(names))))
        _check_option_targets(overrides, labels)
        recommended = getattr(backbone, "recommended_options", {})
        specs = [method_spec(label, len(names), recommended, overrides, device=args.device) for label in labels]
    except (ValueError, TypeError) as error:
        raise UsageError(str(error)) from None
    if hasattr(backbone, "prepare"):
        backbone.prepare()
    result = run_benchmark(backbone, specs, orders, progress, workers)
    print(format_table(result))
    _print_paper_reference(backbone, len(names), result)
    if args.out is not None:
        from .cache import atomic_write_json

        atomic_write_json(args.out, result)
        print(f"wrote {args.out}", file=sys.stderr)
    if args.save is not None:
        _save_first_run(backbone, specs[0], result["runs"][0], args.save)
    from .memory import memory_report

    print(memory_report(), file=sys.stderr)
    _print_workers(result)
    return 0


def _print_workers(result: dict) -> None:
    for record in result.get("workers", {}).get("per_worker", []):
        state = f"died ({record['died']})" if "died" in record else f"peak memory {record['peak_rss_mb']:.0f} MiB RSS"
        print(f"worker {record['worker']}: {record['cells']} cell(s), {state}", file=sys.stderr)


def _print_paper_reference(backbone, n_tasks: int, result: dict) -> None:
    from .paper import comparison_table, paper_reference

    rows = paper_reference(backbone.name, n_tasks, getattr(backbone, "paper_column", None))
    if rows:
        print(f"\nThe paper's numbers ({n_tasks} tasks, mean ± std over its ten orders) beside this run:")
        print(comparison_table(result["summary"], rows))


def _save_first_run(backbone, spec, run: dict, out: Path) -> None:
    """Merge the first method along the first order again (merging is cheap next to scoring)."""
    from .engine import RunEngine, score_none
    from .export import save_merged

    engine = RunEngine(backbone, spec, run["order"], score=score_none)
    for _ in engine:
        pass
    merged = engine.merged
    scores = dict(zip(run["order"], run["accuracy_matrix"][-1], strict=True))
    card = {"method": spec.label, "options": spec.options, "order": run["order"], "scores": scores}
    save_merged(backbone, merged, out, {**card, "acc": run["acc"], "bwt": run["bwt"]})
    print(f"saved the merged model ({spec.label}, order 1) to {out}", file=sys.stderr)


# ---------------------------------------------------------------- `analyze`


def add_analyze_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "analyze",
        help="subspace geometry and stability/plasticity analysis (Fig. 2, 4, 5) as JSON",
        description=(
            "Activation statistics of NUFILT's layers, data x vector subspace affinity (Eq. 5), "
            "stability/plasticity losses (Eq. 3-4) and the Corollary 1 check (Eq. 11) per merge "
            "step, a per-step trace of each run and, with --sweep, NUFILT rank sweeps (ACC/BWT). "
            "The JSON has the tables of nufilt.analysis as lists of records."
        ),
        epilog="Example: python -m nufilt analyze --backbone tiny-vit --tasks 8 --out analysis.json",
    )
    parser.add_argument("--backbone", default="tiny-vit", help="backbone spec (default: tiny-vit, the offline zoo)")
    parser.add_argument("--tasks", type=int, default=8, metavar="N", help="number of tasks (default: 8)")
    parser.add_argument("--order", metavar="TASK,TASK,...", help="task order (default: the paper's first order)")
    parser.add_argument("--methods", default="nufilt,task_arithmetic,opcm", metavar="LIST",
                        help="methods and ablations to analyse (default: nufilt,task_arithmetic,opcm)")
    parser.add_argument("--samples", type=int, metavar="N",
                        help="inputs per task (default: 256, or all of the embedded zoo's test images when fewer)")
    parser.add_argument("--source", default="finetuned", choices=["pretrained", "finetuned"],
                        help="model whose activations are measured: each task's own or θ0 (default: finetuned)")
    parser.add_argument("--r-d", type=int, default=8, metavar="R", help="data subspace rank (default: 8)")
    parser.add_argument("--r-v", type=int, default=8, metavar="R", help="task-vector subspace rank (default: 8)")
    parser.add_argument("--sweep", default="", metavar="LIST", help="rank sweeps to run: any of r_p,r_l,r_v")
    parser.add_argument("--out", type=Path, metavar="PATH", help="write the analysis as JSON here")
    parser.add_argument("--preset", default=None, help=PRESET_HELP)
    parser.add_argument("--cache-dir", type=Path, metavar="DIR", help="cache folder (default: ./cache)")
    parser.add_argument("--threads", type=int, metavar="N", help=THREADS_HELP)
    parser.add_argument("--device", default="auto", help="merge device: auto, cpu or cuda (default: auto)")
    parser.add_argument("--quiet", action="store_true", help="no progress output on stderr")
    add_worker_arguments(parser, "the --sweep points")
    parser.set_defaults(handler=analyze_command, data_dir=None, max_samples=None)


def analyze_command(args: argparse.Namespace) -> int:

    from .analysis import analyze
    from .analysis.activations import clamp_samples
    from .analysis.report import format_summary

    sweeps = _split_list(args.sweep)
    if any(name not in ("r_p", "r_l", "r_v") for name in sweeps):
        raise UsageError(f"--sweep takes r_p, r_l and/or r_v, got {args.sweep!r}")
    progress = _stderr_progress(args.quiet)
    if not sweeps and (args.workers is not None or args.ray_address is not None):
        raise UsageError("--workers and --ray-address run the --sweep points; give --sweep")
    workers = _workers(args)
    try:
        # in a terminal tqdm shows the zoo build; elsewhere (logs, the app) the callback does
        backbone = _make_backbone(args, None if sys.stderr.isatty() else progress)
        if len(backbone.tasks) != args.tasks:
            raise UsageError(f"backbone {args.backbone!r} has {len(backbone.tasks)} tasks, not {args.tasks}")
        if hasattr(backbone, "prepare"):
            backbone.prepare()
        order = _split_list(args.order) if args.order else None
        # the zoo's statistics use its test images: by default never ask for more than exist
        n_samples = clamp_samples(backbone, 256) if args.samples is None else args.samples
        document = analyze(backbone, order, _resolve_methods(args.methods), n_samples=n_samples,
                           source=args.source, r_d=args.r_d, r_v=args.r_v, sweeps=sweeps,
                           cache_dir=args.cache_dir, progress=progress, device=args.device, workers=workers)
    except (ValueError, TypeError) as error:
        raise UsageError(str(error)) from None
    print(format_summary(document))
    _print_workers(document)
    if args.out is not None:
        from .cache import atomic_write_json

        atomic_write_json(args.out, document)
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------- `merge`


def add_merge_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "merge",
        help="merge your own checkpoints, data-free, and write the merged model",
        description=(
            "Merge task checkpoints into a pre-trained checkpoint one at a time, in the order given, with "
            "no task data and no evaluation, and write the merged model. Inputs: save_pretrained folders, "
            ".safetensors files, sharded indexes, or .bin/.pt files holding tensors only. The output is a "
            "folder that from_pretrained loads (model.safetensors, the pre-trained folder's config and "
            "tokenizer files, a model card, nufilt_merge.json), or one .safetensors file when --out ends "
            "in .safetensors. Options default to the paper's Table 9 for the number of tasks."
        ),
        epilog=(
            "Example: python -m nufilt merge --pretrained base/ --task ft-cars/ --task ft-dtd/ --task "
            "ft-eurosat.safetensors --method nufilt --option r_p=64 --out merged/"
        ),
    )
    parser.add_argument("--pretrained", type=Path, required=True, help="the pre-trained checkpoint")
    parser.add_argument("--task", type=Path, action="append", default=[], dest="tasks", metavar="PATH",
                        help="a fine-tuned checkpoint; repeat in merge order")
    parser.add_argument("--method", default="nufilt", help="a method or Table 4 ablation (default: nufilt)")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="a method option, e.g. r_p=64 or nufilt.r_p=64 (repeatable)")
    parser.add_argument("--layers", default=None, help="layers the method works on: paper (default), all-linear, all")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the method's random parts (default: 0)")
    parser.add_argument("--spill-dir", type=Path, default=None,
                        help="keep merged states in safetensors files here instead of memory (large models)")
    parser.add_argument("--out", type=Path, required=True, help="output folder, or a .safetensors file")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--json", type=Path, default=None, help="also write the summary JSON here")
    parser.add_argument("--threads", type=int, default=None, help=THREADS_HELP)
    parser.add_argument("--quiet", action="store_true", help="no per-step lines on stderr")
    parser.set_defaults(handler=merge_command)


def _merge_options(items: Sequence[str], method: str) -> dict[str, Any]:
    """["r_p=64", "nufilt.r_l=8"] -> {"r_p": 64, "r_l": 8} for `method` (a prefix must name it)."""
    options: dict[str, Any] = {}
    for item in items:
        target, eq, value = item.partition("=")
        if not eq or not target:
            raise UsageError(f"--option expects KEY=VALUE, got {item!r}")
        prefix, dot, key = target.rpartition(".")
        if dot and prefix != method and not (prefix == "nufilt" and method in ABLATIONS):
            raise UsageError(f"--option {item!r} is for {prefix!r}, but --method is {method!r}")
        options[key] = parse_value(value)
    return options


def merge_command(args: argparse.Namespace) -> int:

    from .checkpoints import merge_checkpoints
    from .memory import memory_report

    common: dict[str, Any] = {"device": args.device, "seed": args.seed}
    if args.layers is not None:
        common["layers"] = args.layers
    if args.spill_dir is not None:
        args.spill_dir.mkdir(parents=True, exist_ok=True)
        common["spill_dir"] = args.spill_dir
    progress = None if args.quiet else (lambda message, fraction: print(message, file=sys.stderr, flush=True))
    try:
        summary = merge_checkpoints(args.pretrained, args.tasks, args.method, args.out,
                                    options=_merge_options(args.option, args.method), overwrite=args.overwrite,
                                    progress=progress, **common)
    except USER_ERRORS as error:
        raise UsageError(error_line(error)) from None
    print(f"merged {len(summary['tasks'])} task(s) with {summary['method']} "
          f"({summary['selected_layers']} layers by the method's rule) in {summary['seconds']:.1f} s; wrote {args.out}")
    if args.json is not None:
        from .cache import atomic_write_json

        atomic_write_json(args.json, summary)
    print(memory_report(), file=sys.stderr)
    return 0


# ---------------------------------------------------------------- entry point

COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [add_run_parser, add_analyze_parser, add_merge_parser]


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="nufilt",
        description="Data-free continual model merging (NUFILT and baselines), headless.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=OneLineParser)
    for add in COMMANDS:
        add(subparsers)
    return parser


def _set_threads(args: argparse.Namespace) -> None:
    """--threads, else $NUFILT_THREADS, else 1 (nufilt.threads), for the whole command."""
    import torch

    from .threads import default_threads

    if args.threads is None:
        args.threads = default_threads()
    if args.threads < 1:
        raise UsageError(f"--threads must be positive, got {args.threads}")
    torch.set_num_threads(args.threads)


# Exceptions that mean "the input is wrong" (bad paths, files, layouts, values): exit 2.
USER_ERRORS: tuple[type[BaseException], ...] = (UsageError, ValueError, TypeError, KeyError, OSError)


def error_line(error: BaseException) -> str:
    """One line for an exception: its message (KeyError's quotes removed), else its type."""
    text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    text = " ".join(text.split())
    return text or type(error).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. Errors never end in a traceback: a bad argument, path, file or layout
    exits 2 with one line on stderr, a hub that cannot be reached exits 1, anything else (a bug)
    exits 1 with one line, and NUFILT_DEBUG=1 re-raises it with the traceback."""
    import os

    parser = build_parser()
    args = parser.parse_args(argv)
    from .backbones.hub import HubUnavailableError
    from .grid import GridError

    prog = f"{parser.prog} {args.command}"
    try:
        _set_threads(args)
        return args.handler(args)
    except (HubUnavailableError, GridError) as error:  # no network or cache; cells that failed twice
        print(f"{prog}: error: {error_line(error)}", file=sys.stderr)
        return 1
    except USER_ERRORS as error:
        print(f"{prog}: error: {error_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if os.environ.get("NUFILT_DEBUG"):
            raise
        print(f"{prog}: internal error: {type(error).__name__}: {error_line(error)} "
              "(NUFILT_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 1
