"""NUFILT step time: this project vs a faithful re-implementation of the authors' algorithm.

Both run on the same ViT-B/32-shaped weights (a random `CLIPVisionModel` with CLIP's default
vision config, 87.5 M parameters) and the same synthetic task vectors (decaying spectra, ~2% of
the weight norm), in one process, one after the other. The authors' algorithm, as the paper
describes it (Algorithm 1, Eq. 16-17): a full SVD of τ̄_{t−1} and of τt for every selected layer,
then 50 Adam steps over all layers' LoRA factors on ‖T − (M + τt B A) V̂‖²_F. The objective gap is
Eq. 16 evaluated for both fused updates with the *exact* bases.

    python bench/merge_speed.py            # full ViT-B/32 shapes, NUFILT + baselines
    python bench/merge_speed.py --quick    # 1 transformer block, under a minute
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nufilt.merge import make_merger, resolve_device  # noqa: E402
from nufilt.methods import METHODS  # noqa: E402


def vit_b32_state(blocks: int, seed: int) -> dict[str, torch.Tensor]:
    """A random CLIP ViT-B/32 vision encoder state dict (optionally with fewer blocks)."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(seed)
    model = CLIPVisionModel(CLIPVisionConfig(num_hidden_layers=blocks))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def synthetic_task(pretrained: dict[str, torch.Tensor], seed: int, relative: float = 0.02) -> dict[str, torch.Tensor]:
    """θ0 + τ with τ = L diag(σ) R, σ_i ∝ 1/(i+1): a decaying spectrum like real fine-tuning deltas."""
    generator = torch.Generator().manual_seed(seed)
    task = {}
    for key, value in pretrained.items():
        if value.ndim == 2 and value.shape[0] > 1 and value.shape[1] > 1:
            d_out, d_in = value.shape
            k = min(d_out, d_in)
            spectrum = 1.0 / torch.arange(1, k + 1, dtype=torch.float32)
            delta = (torch.randn(d_out, k, generator=generator) * spectrum) @ torch.randn(k, d_in, generator=generator)
        else:
            delta = torch.randn(value.shape, generator=generator)
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
    """Per layer, the exact top-r_p right singular vectors of τ̄_{t−1} and top-r_v of τt (float64)."""
    return [
        (torch.linalg.svd(prev.double(), full_matrices=False).Vh[:r_p].T,
         torch.linalg.svd(tau.double(), full_matrices=False).Vh[:r_v].T)
        for prev, tau in zip(previous, task_vectors, strict=True)
    ]


def objective(previous: list[torch.Tensor], task_vectors: list[torch.Tensor], updates: list[torch.Tensor],
              bases: list) -> float:
    """Eq. 16 summed over layers, with exact bases, for fused updates τt(P + BA)."""
    total = 0.0
    for prev, tau, update, (v_prev, v_task) in zip(previous, task_vectors, updates, bases, strict=True):
        merged = prev.double() + update.double()
        total += float((prev.double() @ v_prev - merged @ v_prev).pow(2).sum())
        total += float((tau.double() @ v_task - merged @ v_task).pow(2).sum())
    return total


def time_step(method: str, pretrained, tasks, device: str, **options) -> tuple[float, dict]:
    """Seconds of the second `add` (the first step of most methods is a copy)."""
    merger = make_merger(method, pretrained, device=device, **options)
    merger.add(tasks[0])
    start = time.perf_counter()
    merged = merger.add(tasks[1])
    return time.perf_counter() - start, merged


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="1 transformer block (under a minute on one thread)")
    parser.add_argument("--blocks", type=int, default=None, help="transformer blocks (default 12, --quick 1)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--skip-authors", action="store_true", help="only time this project's methods")
    parser.add_argument("--no-baselines", action="store_true", help="only NUFILT")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    blocks = args.blocks or (1 if args.quick else 12)
    device = str(resolve_device(args.device))
    r_p, r_l, r_v, steps, lr = 128, 64, 8, 50, 1e-3

    pretrained = vit_b32_state(blocks, seed=0)
    tasks = [synthetic_task(pretrained, seed) for seed in (1, 2)]
    n_params = sum(v.numel() for v in pretrained.values())
    print(f"ViT-B/32-shaped encoder, {blocks} blocks, {n_params / 1e6:.1f} M parameters, device {device}, "
          f"{torch.get_num_threads()} CPU threads")
    rows = []

    selected = sorted(make_merger("nufilt", pretrained).selected)
    first = {k: tasks[0][k] - pretrained[k] for k in selected}  # τ̄1 = τ1 on selected layers
    previous = [first[k] for k in selected]
    task_vectors = [tasks[1][k] - pretrained[k] for k in selected]

    ours = {}
    variants = {
        "svd=exact": {"svd": "exact"},
        "svd=auto": {},
        "svd=auto, gram_rank=64": {"gram_rank": 64},
        "svd=auto, gram_rank=32": {"gram_rank": 32},
        "svd=auto, lora_solver=exact": {"lora_solver": "exact"},
    }
    for label, options in variants.items():
        seconds, merged = time_step("nufilt", pretrained, tasks, device, **options)
        ours[label] = (seconds, [merged[k] - tasks[0][k] for k in selected])
    reference = None
    if not args.skip_authors:
        start = time.perf_counter()
        updates, timings = authors_step(previous, task_vectors, r_p, r_l, r_v, steps, lr, seed=0)
        reference = (time.perf_counter() - start, updates, timings)

    bases = exact_bases(previous, task_vectors, r_p, r_v) if reference else None
    ref_objective = objective(previous, task_vectors, reference[1], bases) if reference else None
    if reference:
        rows.append(("nufilt (authors' algorithm)", reference[0], 1.0, 0.0,
                     f"svd {reference[2]['svd_s']:.1f}s + lora {reference[2]['lora_s']:.1f}s"))
    for label, (seconds, updates) in ours.items():
        ratio = reference[0] / seconds if reference else float("nan")
        gap = float("nan")
        if reference:
            gap = (objective(previous, task_vectors, updates, bases) / ref_objective - 1) * 100
        rows.append((f"nufilt ({label})", seconds, ratio, gap, ""))

    if not args.no_baselines:
        for method in METHODS:
            if method == "nufilt":
                continue
            seconds, _ = time_step(method, pretrained, tasks, device)
            rows.append((method, seconds, float("nan"), float("nan"), "one step (t=2)"))

    print(f"\n{'method':<40} {'seconds/step':>12} {'speed-up':>9} {'objective gap %':>16}  note")
    for name, seconds, ratio, gap, note in rows:
        ratio_text = f"{ratio:.1f}x" if ratio == ratio else "-"
        gap_text = f"{gap:+.3f}" if gap == gap else "-"
        print(f"{name:<40} {seconds:>12.2f} {ratio_text:>9} {gap_text:>16}  {note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
