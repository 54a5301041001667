"""NUFILT step time and result: this project vs a faithful re-implementation of the authors' algorithm.

Both run on ViT-B/32-shaped weights (a random `CLIPVisionModel` with CLIP's default vision config,
87.5 M parameters at 12 blocks) and the same synthetic task vectors, in one process, one after
the other. The authors' algorithm, as the paper describes it (Algorithm 1, Eq. 16-17): a full SVD
of τ̄_{t−1} and of τt for every selected layer, then 50 Adam steps over all layers' LoRA factors
on ‖T − (M + τt B A) V̂‖²_F. Results are compared by Eq. 16 of the fused updates evaluated with
*exact* bases (float64 SVD, numerically-zero directions dropped), per layer.

Task-vector spectra on the selected layers (`--spectra`): "1/i" (L diag(1/i) R, L, R Gaussian),
"signal+noise" (0.02·G1·G2/32 + 0.002·N, G1: d_out x 32, G2: 32 x d_in, N: d_out x d_in, all
i.i.d. standard normal: a rank-32 signal over a flat noise floor), "flat" (i.i.d. Gaussian) and
"low-rank" (rank 16 < r_p); all but signal+noise scaled to 2% of the weight norm.

    python bench/merge_speed.py                 # equal-result table (4 spectra, 2 blocks) + speed (12 blocks)
    python bench/merge_speed.py --quick         # 1 block for both, a few minutes
    python bench/merge_speed.py --profile       # also a cProfile of the default step
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import time
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nufilt.merge import make_merger, resolve_device  # noqa: E402
from nufilt.methods import METHODS  # noqa: E402
from nufilt.subspace import numerical_rank_mask  # noqa: E402


def vit_b32_state(blocks: int, seed: int) -> dict[str, torch.Tensor]:
    """A random CLIP ViT-B/32 vision encoder state dict (optionally with fewer blocks)."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(seed)
    model = CLIPVisionModel(CLIPVisionConfig(num_hidden_layers=blocks))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


SPECTRA = ("1/i", "signal+noise", "flat", "low-rank")


def spectrum_delta(d_out: int, d_in: int, spectrum: str, generator: torch.Generator) -> tuple[torch.Tensor, bool]:
    """A synthetic task vector for one matrix, and whether it should be rescaled to 2% of ‖W‖."""
    if spectrum == "1/i":
        k = min(d_out, d_in)
        decay = 1.0 / torch.arange(1, k + 1, dtype=torch.float32)
        return (torch.randn(d_out, k, generator=generator) * decay) @ torch.randn(k, d_in, generator=generator), True
    if spectrum == "signal+noise":
        signal = torch.randn(d_out, 32, generator=generator) @ torch.randn(32, d_in, generator=generator)
        return 0.02 * signal / 32 + 0.002 * torch.randn(d_out, d_in, generator=generator), False
    if spectrum == "flat":
        return torch.randn(d_out, d_in, generator=generator), True
    if spectrum == "low-rank":
        return torch.randn(d_out, 16, generator=generator) @ torch.randn(16, d_in, generator=generator), True
    raise ValueError(f"unknown spectrum {spectrum!r}; use one of {SPECTRA}")


def synthetic_task(
    pretrained: dict[str, torch.Tensor], seed: int, spectrum: str = "1/i", relative: float = 0.02
) -> dict[str, torch.Tensor]:
    """θ0 + τ: matrices get a task vector of the given spectrum, other parameters Gaussian noise."""
    generator = torch.Generator().manual_seed(seed)
    task = {}
    for key, value in pretrained.items():
        if value.ndim == 2 and value.shape[0] > 1 and value.shape[1] > 1:
            delta, rescale = spectrum_delta(*value.shape, spectrum, generator)
        else:
            delta, rescale = torch.randn(value.shape, generator=generator), True
        if rescale:
            delta *= relative * value.norm() / delta.norm().clamp_min(1e-12)
        task[key] = value + delta
    return task


def authors_step(
    previous: list[torch.Tensor],
    task_vectors: list[torch.Tensor],
    r_p: int,
    r_l: int,
    r_v: int,
    steps: int,
    lr: float,
    seed: int,
) -> tuple[list[torch.Tensor], dict[str, float]]:
    """Algorithm 1 as written: full SVDs per layer, then one Adam over all layers on Eq. 16."""
    timings = {}
    start = time.perf_counter()
    prepared = []
    for prev, tau in zip(previous, task_vectors, strict=True):
        v_prev = torch.linalg.svd(prev, full_matrices=False).Vh[:r_p].T  # TopRightSVD(τ̄, r_p)
        v_task = torch.linalg.svd(tau, full_matrices=False).Vh[:r_v].T  # TopRightSVD(τt, r_v)
        projector = torch.eye(tau.shape[1]) - v_prev @ v_prev.T  # P (Eq. 8)
        m = prev + tau @ projector  # M (Eq. 17)
        target = torch.cat([prev @ v_prev, tau @ v_task], dim=1)  # T
        v_hat = torch.cat([v_prev, v_task], dim=1)  # V̂
        prepared.append((tau, projector, m @ v_hat, target, v_hat))
    timings["svd_s"] = time.perf_counter() - start
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    factors = []
    for tau, *_ in prepared:
        a = torch.nn.Parameter(torch.randn(r_l, tau.shape[1], generator=generator) * 0.02)
        b = torch.nn.Parameter(torch.zeros(tau.shape[1], r_l))
        factors.append((a, b))
    optimizer = torch.optim.Adam([p for pair in factors for p in pair], lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        # ‖T − (M + τt B A) V̂‖², associated as M V̂ + (τt B)(A V̂) so no d_out × d_in product is formed
        loss = sum(
            (target - m_v - (tau @ b) @ (a @ v_hat)).pow(2).sum()
            for (tau, _, m_v, target, v_hat), (a, b) in zip(prepared, factors, strict=True)
        )
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        updates = [tau @ (projector + b @ a) for (tau, projector, *_), (a, b) in zip(prepared, factors, strict=True)]
    timings["lora_s"] = time.perf_counter() - start
    return updates, timings


def exact_bases(previous: list[torch.Tensor], task_vectors: list[torch.Tensor], r_p: int, r_v: int) -> list:
    """Per layer, the exact top-r_p right singular vectors of τ̄_{t−1} and top-r_v of τt (float64),
    with directions below float32 round-off (the data's precision) zeroed, as the library does."""

    def top(matrix: torch.Tensor, k: int) -> torch.Tensor:
        _, values, vh = torch.linalg.svd(matrix.double(), full_matrices=False)
        kept = numerical_rank_mask(values[:k].float(), max(matrix.shape))
        return vh[:k].T * kept.double()

    return [(top(prev, r_p), top(tau, r_v)) for prev, tau in zip(previous, task_vectors, strict=True)]


def objective(previous: list[torch.Tensor], task_vectors: list[torch.Tensor], updates: list[torch.Tensor],
              bases: list) -> torch.Tensor:
    """Eq. 16 per layer, with exact bases, for fused updates τt(P + BA): (layers,) float64."""
    losses = []
    for prev, tau, update, (v_prev, v_task) in zip(previous, task_vectors, updates, bases, strict=True):
        merged = prev.double() + update.double()
        losses.append((prev.double() @ v_prev - merged @ v_prev).pow(2).sum()
                      + (tau.double() @ v_task - merged @ v_task).pow(2).sum())
    return torch.stack(losses)


def time_step(method: str, pretrained, tasks, device: str, **options) -> tuple[float, dict, dict]:
    """Seconds of the second `add` (the first step of most methods is a copy), its result and info."""
    merger = make_merger(method, pretrained, device=device, **options)
    merger.add(tasks[0])
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    merged = merger.add(tasks[1])
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start, merged, merger.report.info


def fallback_counts(info: dict) -> str:
    """How each layer's bases were found, e.g. "V_p gram 40, gram+1 8 | V_v lowrank 48"."""
    parts = []
    for role, label in (("previous", "V_p"), ("task", "V_v")):
        counts = Counter(layer["basis_solvers"][role] for layer in info.get("layers", {}).values())
        parts.append(f"{label} " + ", ".join(f"{name} {n}" for name, n in sorted(counts.items())))
    return " | ".join(parts)


def layer_problem(pretrained, tasks, selected) -> tuple[list, list]:
    """τ̄1 = τ1 and τ2 on the selected layers, in `selected` order."""
    previous = [tasks[0][k] - pretrained[k] for k in selected]
    return previous, [tasks[1][k] - pretrained[k] for k in selected]


def equal_result_table(blocks: int, device: str, spectra: list[str]) -> list[tuple]:
    """Per spectrum: Eq. 16 of svd="auto" / "exact" / "lowrank" relative to the authors' algorithm
    and to svd="exact", per layer."""
    r_p, r_l, r_v, steps, lr = 128, 64, 8, 50, 1e-3
    pretrained = vit_b32_state(blocks, seed=0)
    selected = sorted(make_merger("nufilt", pretrained).selected)
    rows = []
    for spectrum in spectra:
        tasks = [synthetic_task(pretrained, seed, spectrum) for seed in (1, 2)]
        previous, task_vectors = layer_problem(pretrained, tasks, selected)
        bases = exact_bases(previous, task_vectors, r_p, r_v)
        reference_updates, _ = authors_step(previous, task_vectors, r_p, r_l, r_v, steps, lr, seed=0)
        reference = objective(previous, task_vectors, reference_updates, bases)
        results = {}
        for svd in ("exact", "auto", "lowrank"):  # lowrank: the unchecked randomized bases
            seconds, merged, info = time_step("nufilt", pretrained, tasks, device, svd=svd)
            updates = [merged[k].cpu() - tasks[0][k] for k in selected]
            results[svd] = (seconds, objective(previous, task_vectors, updates, bases), info)
        exact_loss = results["exact"][1]
        for svd, (seconds, loss, info) in results.items():
            ratio, to_exact = loss / reference, loss / exact_loss
            rows.append((spectrum, svd, float(ratio.mean()), float(ratio.max()), float(to_exact.mean()),
                         float((to_exact - 1).abs().max()), seconds, fallback_counts(info)))
    return rows


def profile_step(pretrained, tasks, device: str, lines: int = 18) -> None:
    """cProfile of one default NUFILT step (t = 2), by own time."""
    merger = make_merger("nufilt", pretrained, device=device)
    merger.add(tasks[0])
    profiler = cProfile.Profile()
    profiler.enable()
    merger.add(tasks[1])
    profiler.disable()
    pstats.Stats(profiler).sort_stats("tottime").print_stats(lines)


def continual_time(blocks: int, count: int, device: str, spectrum: str, **options) -> tuple[dict[str, float], dict]:
    """A `count`-task NUFILT merge, tasks generated one at a time: seconds of merge compute (all
    steps, synchronised; task generation excluded), the peak GPU memory, and the merged state."""
    pretrained = vit_b32_state(blocks, seed=0)
    merger = make_merger("nufilt", pretrained, device=device, **options)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    seconds, steps, merged = 0.0, [], {}
    for t in range(count):
        task = synthetic_task(pretrained, seed=1 + t, spectrum=spectrum)
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        merged = merger.add(task)
        if cuda:
            torch.cuda.synchronize()
        steps.append(time.perf_counter() - start)
        seconds += steps[-1]
        del task
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    selected = {k: merged[k] - pretrained[k] for k in merger.selected}
    return {"seconds": seconds, "max_step": max(steps, default=0.0), "peak_gib": peak}, selected


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="1 block for both tables (a few minutes on one thread)")
    parser.add_argument("--blocks", type=int, default=None, help="blocks of the speed table (default 12, --quick 1)")
    parser.add_argument("--equal-blocks", type=int, default=None, help="blocks of the equal-result table (default 2)")
    parser.add_argument("--spectra", default=",".join(SPECTRA), help="equal-result spectra (default all)")
    parser.add_argument("--spectrum", default="signal+noise", choices=SPECTRA, help="speed table's spectrum")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--skip-equal", action="store_true", help="no equal-result table")
    parser.add_argument("--skip-speed", action="store_true", help="no speed table")
    parser.add_argument("--skip-authors", action="store_true", help="speed table: only this project's methods")
    parser.add_argument("--no-baselines", action="store_true", help="speed table: only NUFILT")
    parser.add_argument("--profile", action="store_true", help="cProfile of the default step (speed shapes)")
    parser.add_argument("--merge-tasks", type=int, default=0, help="also time a T-task continual merge (12 blocks)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    blocks = args.blocks or (1 if args.quick else 12)
    equal_blocks = args.equal_blocks or (1 if args.quick else 2)
    device = str(resolve_device(args.device))
    r_p, r_l, r_v, steps, lr = 128, 64, 8, 50, 1e-3
    print(f"device {device}, {torch.get_num_threads()} CPU threads, load average {_load()}")

    if not args.skip_equal:
        spectra = [name.strip() for name in args.spectra.split(",") if name.strip()]
        rows = equal_result_table(equal_blocks, device, spectra)
        print(f"\nEqual result: Eq. 16 per layer with exact bases, {equal_blocks} ViT-B/32 blocks, paper ranks")
        print(f"{'spectrum':<14} {'svd':<6} {'/authors mean':>13} {'max':>7} {'/exact mean':>11} {'max |-1|':>9} "
              f"{'s/step':>7}  bases per layer")
        for spectrum, svd, mean, worst, to_exact, off, seconds, counts in rows:
            print(f"{spectrum:<14} {svd:<6} {mean:>13.4f} {worst:>7.4f} {to_exact:>11.4f} {off:>9.4f} "
                  f"{seconds:>7.2f}  {counts}")

    if args.merge_tasks:
        print(f"\n{args.merge_tasks}-task NUFILT merge, {blocks} ViT-B/32 blocks, spectrum {args.spectrum}, "
              f"load average {_load()}")
        deltas = {}
        for svd in ("auto", "exact"):
            result, deltas[svd] = continual_time(blocks, args.merge_tasks, device, args.spectrum, svd=svd)
            print(f"svd={svd:<6} merge compute {result['seconds']:.2f} s (slowest step {result['max_step']:.2f} s), "
                  f"peak GPU memory {result['peak_gib']:.2f} GiB")
        # equal result after T tasks: the merged task vectors of both runs, selected layers
        auto, exact = deltas["auto"], deltas["exact"]
        gaps = [float((auto[k] - exact[k]).norm() / exact[k].norm()) for k in exact]
        print(f"‖τ̄_auto − τ̄_exact‖ / ‖τ̄_exact‖ after {args.merge_tasks} tasks: mean {sum(gaps) / len(gaps):.2e}, "
              f"max {max(gaps):.2e} over {len(gaps)} layers")
    if args.skip_speed and not args.profile:
        return 0
    pretrained = vit_b32_state(blocks, seed=0)
    tasks = [synthetic_task(pretrained, seed, args.spectrum) for seed in (1, 2)]
    n_params = sum(v.numel() for v in pretrained.values())
    print(f"\nSpeed: ViT-B/32-shaped encoder, {blocks} blocks, {n_params / 1e6:.1f} M parameters, "
          f"spectrum {args.spectrum}, load average {_load()}")
    if args.profile:
        profile_step(pretrained, tasks, device)
    if args.skip_speed:
        return 0
    selected = sorted(make_merger("nufilt", pretrained).selected)
    previous, task_vectors = layer_problem(pretrained, tasks, selected)
    ours = {}
    variants = {
        "svd=exact": {"svd": "exact"},
        "svd=auto": {},
        "svd=auto, gram_rank=64": {"gram_rank": 64},
        "svd=auto, gram_rank=32": {"gram_rank": 32},
        "svd=auto, lora_solver=exact": {"lora_solver": "exact"},
    }
    for label, options in variants.items():
        seconds, merged, info = time_step("nufilt", pretrained, tasks, device, **options)
        ours[label] = (seconds, [merged[k].cpu() - tasks[0][k] for k in selected], fallback_counts(info))
    rows = []
    reference = None
    if not args.skip_authors:
        start = time.perf_counter()
        updates, timings = authors_step(previous, task_vectors, r_p, r_l, r_v, steps, lr, seed=0)
        reference = (time.perf_counter() - start, updates, timings)
        bases = exact_bases(previous, task_vectors, r_p, r_v)
        ref_objective = objective(previous, task_vectors, reference[1], bases)
        rows.append(("nufilt (authors' algorithm)", reference[0], 1.0, 1.0, 1.0,
                     f"svd {timings['svd_s']:.1f}s + lora {timings['lora_s']:.1f}s"))
    for label, (seconds, updates, counts) in ours.items():
        speedup = mean = worst = float("nan")
        if reference:
            ratio = objective(previous, task_vectors, updates, bases) / ref_objective
            speedup, mean, worst = reference[0] / seconds, float(ratio.mean()), float(ratio.max())
        rows.append((f"nufilt ({label})", seconds, speedup, mean, worst, counts))

    if not args.no_baselines:
        for method in METHODS:
            if method == "nufilt":
                continue
            seconds, _, _ = time_step(method, pretrained, tasks, device)
            rows.append((method, seconds, float("nan"), float("nan"), float("nan"), "one step (t=2)"))

    print(f"\n{'method':<40} {'seconds/step':>12} {'speed-up':>9} {'Eq16/authors mean':>18} {'max':>7}  note")
    for name, seconds, speedup, mean, worst, note in rows:
        speed_text = f"{speedup:.1f}x" if speedup == speedup else "-"
        mean_text, worst_text = (f"{mean:.4f}", f"{worst:.4f}") if mean == mean else ("-", "-")
        print(f"{name:<40} {seconds:>12.2f} {speed_text:>9} {mean_text:>18} {worst_text:>7}  {note}")
    print(f"load average at the end {_load()}")
    return 0


def _load() -> str:
    """`uptime`'s 1/5/15-minute load averages (the bench machine is shared)."""
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


if __name__ == "__main__":
    raise SystemExit(main())
