"""Peak memory of continual merging: flat in the number of tasks, and streaming from safetensors.

Part 1 (tasks): merge T = 2 and T = 20 synthetic task models, produced one at a time by a
generator, each run in a fresh subprocess; prints peak RSS (VmHWM) per method and the ratio.
Part 2 (streaming): writes a synthetic pre-trained checkpoint and task checkpoints as safetensors
files (default 3.2 GB each, deleted afterwards), merges them through lazily loaded state dicts
(`nufilt.io.open_checkpoint`), and prints peak RSS against the file size.

    python bench/memory.py             # ViT-B/32-shaped tasks part + 3.2 GB streaming part
    python bench/memory.py --quick     # small shapes, under a minute
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nufilt.memory import peak_rss_mb  # noqa: E402


def synthetic_model(width: int, blocks: int, seed: int) -> dict[str, torch.Tensor]:
    """A transformer-shaped state dict with CLIP key names (attention, MLP, norms)."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for i in range(blocks):
        prefix = f"encoder.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            state[prefix + f"self_attn.{name}.weight"] = torch.randn(width, width, generator=generator) / width**0.5
            state[prefix + f"self_attn.{name}.bias"] = torch.zeros(width)
        state[prefix + "mlp.fc1.weight"] = torch.randn(4 * width, width, generator=generator) / width**0.5
        state[prefix + "mlp.fc2.weight"] = torch.randn(width, 4 * width, generator=generator) / width**0.5
        state[prefix + "layer_norm1.weight"] = torch.ones(width)
    return state


def task_model(pretrained: dict[str, torch.Tensor], seed: int, relative: float = 0.02) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {k: v + relative * v.abs().mean() * torch.randn(v.shape, generator=generator) for k, v in pretrained.items()}


def run_tasks(method: str, width: int, blocks: int, n_tasks: int, options: dict) -> dict:
    """Child process: merge `n_tasks` generated task models; report peak RSS."""
    from nufilt.merge import continual_merge

    torch.set_num_threads(2)
    pretrained = synthetic_model(width, blocks, seed=0)
    baseline = peak_rss_mb()

    def tasks() -> Iterator[dict[str, torch.Tensor]]:
        for seed in range(1, n_tasks + 1):
            yield task_model(pretrained, seed)

    start = time.perf_counter()
    for _ in continual_merge(pretrained, tasks(), method, **options):
        pass
    size_mb = sum(v.numel() * v.element_size() for v in pretrained.values()) / 2**20
    return {"peak_mb": peak_rss_mb(), "start_mb": baseline, "model_mb": size_mb, "seconds": time.perf_counter() - start}


def run_streaming(folder: str, method: str, options: dict) -> dict:
    """Child process: merge safetensors checkpoints read lazily, the merged state spilled to disk."""
    from nufilt.io import open_checkpoint
    from nufilt.merge import continual_merge

    torch.set_num_threads(2)
    files = sorted(Path(folder).glob("*.safetensors"))
    pretrained = open_checkpoint(files[0])
    options = {**options, "spill_dir": str(Path(folder) / "spill")}
    start = time.perf_counter()
    before = peak_rss_mb()
    steps = sum(1 for _ in continual_merge(pretrained, (open_checkpoint(f) for f in files[1:]), method, **options))
    assert steps == len(files) - 1
    return {"peak_mb": peak_rss_mb(), "start_mb": before, "seconds": time.perf_counter() - start}


def child(args: list[str]) -> dict:
    """Run one measurement in a fresh interpreter so peak RSS starts from scratch.

    glibc's dynamic mmap threshold keeps freed large buffers in the heap, which inflates RSS with
    memory the process no longer uses; a fixed threshold makes RSS track live memory.
    """
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": os.environ.get("MALLOC_MMAP_THRESHOLD_", "65536")}
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=False, env=env
    )
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def write_checkpoints(folder: Path, gigabytes: float, n_tasks: int) -> float:
    """Pre-trained + task checkpoints of about `gigabytes` each, written one tensor group at a time."""
    from safetensors.torch import save_file

    width = 2048
    matrix_bytes = width * width * 4
    n_matrices = max(2, int(gigabytes * 2**30 / matrix_bytes))
    for index in range(n_tasks + 1):
        generator = torch.Generator().manual_seed(index)
        state = {}
        for i in range(n_matrices):
            base = torch.randn(width, width, generator=torch.Generator().manual_seed(10_000 + i)) / 45
            delta = 0.001 * torch.randn(width, width, generator=generator) if index else 0.0
            state[f"encoder.layers.{i}.mlp.fc1.weight"] = base + delta
        save_file(state, str(folder / f"{index:02d}.safetensors"))
        del state
    return n_matrices * matrix_bytes / 2**20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small shapes and a 0.3 GB checkpoint (under a minute)")
    parser.add_argument("--methods", default="task_arithmetic,nufilt", help="comma-separated methods")
    parser.add_argument("--gigabytes", type=float, default=None, help="size of each streamed checkpoint")
    parser.add_argument("--skip-streaming", action="store_true")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        kind, *rest = args.child
        if kind == "tasks":
            method, width, blocks, n_tasks, options = rest
            result = run_tasks(method, int(width), int(blocks), int(n_tasks), json.loads(options))
        else:
            folder, method, options = rest
            result = run_streaming(folder, method, json.loads(options))
        print(json.dumps(result))
        return 0

    width, blocks = (256, 2) if args.quick else (768, 12)
    options = {"nufilt": {"r_p": 64 if args.quick else 128, "r_l": 32 if args.quick else 64}}
    print(f"Part 1: peak RSS vs number of tasks (width {width}, {blocks} blocks; tasks generated one at a time)")
    print(f"{'method':<18} {'model MiB':>10} {'T=2 MiB':>9} {'T=20 MiB':>9} {'T=20/T=2':>9} {'s (T=20)':>9}")
    for method in args.methods.split(","):
        opts = json.dumps(options.get(method, {}))
        two = child(["tasks", method, str(width), str(blocks), "2", opts])
        twenty = child(["tasks", method, str(width), str(blocks), "20", opts])
        print(f"{method:<18} {two['model_mb']:>10.0f} {two['peak_mb']:>9.0f} {twenty['peak_mb']:>9.0f} "
              f"{twenty['peak_mb'] / two['peak_mb']:>9.3f} {twenty['seconds']:>9.1f}")

    if not args.skip_streaming:
        gigabytes = args.gigabytes or (0.3 if args.quick else 3.2)
        with tempfile.TemporaryDirectory(dir=os.environ.get("NUFILT_BENCH_DIR")) as folder:
            size_mb = write_checkpoints(Path(folder), gigabytes, n_tasks=2)
            print(f"\nPart 2: streaming 3 safetensors files of {size_mb:.0f} MiB each (pre-trained + 2 tasks)")
            print(f"{'method':<18} {'file MiB':>9} {'peak RSS MiB':>13} {'RSS/file':>9} {'seconds':>8}")
            # a memory demonstration: NUFILT with small ranks and few steps keeps the compute short
            cheap = {"nufilt": {"r_p": 32, "r_l": 16, "steps": 5}}
            for method in args.methods.split(","):
                opts = {"layers": "all-linear", **cheap.get(method, {})}
                result = child(["streaming", folder, method, json.dumps(opts)])
                print(f"{method:<18} {size_mb:>9.0f} {result['peak_mb']:>13.0f} "
                      f"{result['peak_mb'] / size_mb:>9.2f} {result['seconds']:>8.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
