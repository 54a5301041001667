"""NUFILT (paper Sec. 4, Algorithm 1): null-space filter + LoRA adapter, fused into the weights.

Per selected layer at step t ≥ 2: P = I − V_p V_pᵀ from the top-r_p right singular vectors of
τ̄_{t−1} (Eq. 7-8); A ~ N(0, σ²), B = 0 (Eq. 9); Adam on Eq. 16-17; θ̄t = θ̄_{t−1} + τt (P + B A)
(Eq. 10). Ablations are settings: r_l = 0 (null-space only), null_space=False (P = I), both
(naive sum).
"""

from __future__ import annotations

import warnings
import zlib
from dataclasses import dataclass

import torch

from ..statedict import PAPER_NUFILT_PATTERNS
from ..subspace import SVD_SOLVERS, removed_energy, top_right_singular_vectors
from .base import (
    MergeMethod,
    StepContext,
    check_choice,
    check_number,
    check_rank,
    chunks,
    elementwise_step,
    group_by_shape,
)

OTHER_PARAMS = ("keep-pretrained", "average", "task-arithmetic")
FIRST_STEPS = ("paper", "filtered")


def filter_and_adapt(
    previous: torch.Tensor,
    task_vector: torch.Tensor,
    lora_init: torch.Tensor,
    r_p: int,
    r_v: int,
    steps: int,
    lr: float,
    null_space: bool = True,
    solver: str = "exact",
    previous_basis: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """NUFILT's update τt (P + B A) for a stack of layers.

    previous, task_vector: (L, d_out, d_in) = τ̄_{t−1}, τt. lora_init: (L, r_l, d_in), the
    initial A (B starts at zero). Returns the update and per-layer diagnostics.
    """
    if previous_basis is None:
        previous_basis, prev_values = top_right_singular_vectors(previous, r_p, solver)  # (L, d_in, r_p)
    else:
        prev_values = previous_basis.new_zeros(previous_basis.shape[0], previous_basis.shape[-1])
    task_basis, task_values = top_right_singular_vectors(task_vector, r_v, solver)  # (L, d_in, r_v)

    # τt P: the filtered task vector (P = I for the "no filter" ablation)
    inside = task_vector @ previous_basis  # (L, d_out, r_p)
    filtered = task_vector - inside @ previous_basis.mT if null_space else task_vector
    # Eq. 16-17 with M' = τ̄ + τt (P + B A): only products with the bases are ever needed
    stability_fixed = filtered @ previous_basis  # τt P V_p, zero when the filter is on
    fidelity_fixed = (task_vector - previous - filtered) @ task_basis  # τt V_v − M V_v

    lora_a = lora_init.clone().requires_grad_(True)  # (L, r_l, d_in)
    lora_b = lora_init.new_zeros(lora_init.shape[0], lora_init.shape[2], lora_init.shape[1])
    lora_b.requires_grad_(True)  # (L, d_in, r_l)

    def per_layer_loss() -> torch.Tensor:
        adapted = task_vector @ lora_b  # τt B: (L, d_out, r_l)
        stability = stability_fixed + adapted @ (lora_a @ previous_basis)
        fidelity = fidelity_fixed - adapted @ (lora_a @ task_basis)
        return stability.pow(2).sum(dim=(-2, -1)) + fidelity.pow(2).sum(dim=(-2, -1))

    history = []
    rank = lora_init.shape[1]
    with torch.enable_grad():
        if rank > 0 and steps > 0:
            optimizer = torch.optim.Adam([lora_a, lora_b], lr=lr)
            for _ in range(steps):
                optimizer.zero_grad(set_to_none=True)
                loss = per_layer_loss()
                loss.sum().backward()
                optimizer.step()
                history.append(loss.detach())
        with torch.no_grad():
            history.append(per_layer_loss())
            update = filtered + (task_vector @ lora_b) @ lora_a
    diagnostics = {
        "loss_curve": torch.stack(history).mT,  # (L, steps + 1)
        "removed_energy": removed_energy(task_vector, previous_basis),
        "prev_singular_values": prev_values,
        "task_singular_values": task_values,
    }
    return update.detach(), diagnostics


@dataclass
class NufiltOptions:
    r_p: int = 128  # null-space rank: directions of τ̄_{t−1} the filter removes (Table 9)
    r_l: int = 64  # LoRA rank; 0 is the "null-space only" ablation
    r_v: int = 8  # rank of the new task's subspace in the fidelity term
    steps: int = 50  # Adam iterations per task
    lr: float = 1e-3  # Adam learning rate
    init_std: float = 0.02  # A ~ N(0, init_std²), B = 0
    null_space: bool = True  # False: objective without the filter (P = I), Table 4
    other_params: str = "keep-pretrained"  # unselected parameters: see OTHER_PARAMS
    other_scale: float = 0.3  # λ when other_params == "task-arithmetic"
    first_step: str = "paper"  # "paper": θ̄1 = θ1; "filtered": the authors' code (see docs)
    svd: str = "exact"  # "exact" thin SVD or "lowrank" randomized SVD of only the needed ranks

    def __post_init__(self) -> None:
        for name in ("r_p", "r_l", "r_v", "steps"):
            check_rank(name, getattr(self, name))
        check_number("lr", self.lr, low=0.0, low_open=True)
        check_number("init_std", self.init_std, low=0.0)
        check_number("other_scale", self.other_scale)
        if not isinstance(self.null_space, bool):
            raise TypeError(f"null_space must be True or False, got {self.null_space!r}")
        check_choice("other_params", self.other_params, OTHER_PARAMS)
        check_choice("first_step", self.first_step, FIRST_STEPS)
        check_choice("svd", self.svd, SVD_SOLVERS)


class Nufilt(MergeMethod):
    name = "nufilt"
    Options = NufiltOptions
    paper_layers = PAPER_NUFILT_PATTERNS
    matrix_rule = True

    def __init__(self, options: NufiltOptions) -> None:
        super().__init__(options)
        self._warned: set[str] = set()

    def step(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        opts = self.options
        if ctx.step == 1 and opts.first_step == "paper":
            merged = elementwise_step(ctx, lambda key, base, prev, task: task, self._other(ctx))
            ctx.info["layers"] = {}
            return merged
        merged = elementwise_step(ctx, lambda key, base, prev, task: prev, self._other(ctx))
        layers: dict[str, dict] = {}
        selected = [k for k in ctx.pretrained if k in ctx.selected]
        for shape, group in group_by_shape(ctx.pretrained, selected).items():
            d_out, d_in = shape
            r_p, r_v, r_l = self._clamp(min(d_out, d_in), d_in, shape)
            for keys in chunks(group, shape):
                previous = torch.stack([ctx.merged_vector(k) for k in keys])
                task_vector = torch.stack([ctx.task_vector(k) for k in keys])
                basis = None
                if ctx.step == 1:  # authors' code: the SVD of τ̄0 = 0 yields coordinate axes
                    eye = torch.eye(d_in, r_p, device=ctx.device)
                    basis = eye.expand(len(keys), d_in, r_p)
                init = torch.stack([self._lora_init(ctx, k, r_l, d_in) for k in keys])
                update, diag = filter_and_adapt(
                    previous, task_vector, init, r_p, r_v, opts.steps, opts.lr,
                    opts.null_space, opts.svd, basis,
                )
                for i, key in enumerate(keys):
                    merged[key] = ctx.output(key, ctx.load(ctx.merged, key) + update[i])
                    layers[key] = {
                        "shape": [d_out, d_in],
                        "ranks": {"r_p": r_p, "r_l": r_l, "r_v": r_v},
                        "removed_energy": float(diag["removed_energy"][i]),
                        "loss_curve": diag["loss_curve"][i].tolist(),
                        "prev_singular_values": diag["prev_singular_values"][i].tolist(),
                        "task_singular_values": diag["task_singular_values"][i].tolist(),
                    }
        ctx.info["layers"] = layers
        return merged

    def _other(self, ctx: StepContext):
        """The rule for unselected floating parameters (None keeps them pre-trained)."""
        policy, t = self.options.other_params, ctx.step
        if policy == "average":
            return lambda key: ((t - 1) * ctx.load(ctx.merged, key) + ctx.load(ctx.task, key)) / t
        if policy == "task-arithmetic":
            return lambda key: ctx.load(ctx.merged, key) + self.options.other_scale * ctx.task_vector(key)
        return None

    def _clamp(self, max_rank: int, d_in: int, shape: tuple[int, ...]) -> tuple[int, int, int]:
        """Ranks clamped to what a layer supports; each clamp is reported once per merger."""
        opts = self.options
        wanted = {"r_p": (opts.r_p, max_rank), "r_v": (opts.r_v, max_rank), "r_l": (opts.r_l, d_in)}
        for name, (value, limit) in wanted.items():
            if value > limit and f"{name}{shape}" not in self._warned:
                self._warned.add(f"{name}{shape}")
                warnings.warn(
                    f"nufilt: {name}={value} exceeds the {limit} available for "
                    f"{shape[0]}x{shape[1]} layers; clamped to {limit}",
                    stacklevel=4,
                )
        return tuple(min(value, limit) for value, limit in wanted.values())  # type: ignore[return-value]

    def _lora_init(self, ctx: StepContext, key: str, rank: int, d_in: int) -> torch.Tensor:
        """A ~ N(0, σ²) from a generator seeded by (seed, step, key): independent of batching."""
        seed = (ctx.seed * 1_000_003 + ctx.step * 7919 + zlib.crc32(key.encode())) % (2**63)
        generator = torch.Generator(device="cpu").manual_seed(seed)
        init = torch.randn(rank, d_in, generator=generator) * self.options.init_std
        return init.to(ctx.device)
