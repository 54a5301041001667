"""NUFILT (paper Sec. 4, Algorithm 1): null-space filter + LoRA adapter, fused into the weights.

Per selected layer at step t ≥ 2: P = I − V_p V_pᵀ from the top-r_p right singular vectors of
τ̄_{t−1} (Eq. 7-8); A ~ N(0, σ²), B = 0 (Eq. 9); Adam on Eq. 16-17; θ̄t = θ̄_{t−1} + τt (P + B A)
(Eq. 10). Table 4's ablations are settings: `filter` picks P (null-space / identity / zero) and
r_l = 0 drops the LoRA (see ABLATIONS in the registry).
"""

from __future__ import annotations

import warnings
import zlib
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..statedict import PAPER_NUFILT_PATTERNS
from ..subspace import SVD_SOLVERS, removed_energy, right_singular_basis
from .base import (
    MergeMethod,
    StepContext,
    check_choice,
    check_number,
    check_rank,
    chunks,
    elementwise_step,
    group_by_shape,
    option,
)

OTHER_PARAMS = ("keep-pretrained", "average", "task-arithmetic")
FIRST_STEPS = ("paper", "filtered")
LORA_SOLVERS = ("adam", "exact")
# P in τt (P + B A): I − V_p V_pᵀ (the method), I (the authors' "w/o filter" run), 0 (Table 4's formula)
FILTERS = ("null-space", "identity", "zero")


def _use_gram(d_out: int, d_in: int, steps: int, rank: int) -> bool:
    """Gram form costs d_out·d_in² once + d_in²·r per step; the direct form 2·d_out·d_in·r per step."""
    return d_out * d_in * d_in + steps * d_in * d_in * rank < 2 * steps * d_out * d_in * rank


def fit_lora(
    task_vector: torch.Tensor,
    lora_init: torch.Tensor,
    previous_basis: torch.Tensor,
    task_basis: torch.Tensor,
    stability_fixed: torch.Tensor,
    fidelity_fixed: torch.Tensor,
    steps: int,
    lr: float,
    form: str = "auto",
    gram_factor: tuple[torch.Tensor, torch.Tensor] | None = None,
    task_gram: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Adam on Eq. 16 with hand-written gradients; returns (A, B, per-layer loss curve (L, steps+1)).

    With K = τt B, C_p = A V_p, C_v = A V_v the loss is ‖X_p + K C_p‖² + ‖E_v − K C_v‖²
    (X_p = τt P V_p, E_v = τt V_v − M V_v). Its gradients are evaluated either directly (two
    d_out·d_in·r products per step) or through the Gram matrix G = τtᵀτt (one d_in²·r product),
    whichever is cheaper (`form="auto"`); both are the exact gradients autograd would give.
    `gram_factor=(V_k, σ_k)` replaces G by its top-k part V_k diag(σ_k²) V_kᵀ inside the loop (the
    `gram_rank` option): G B then costs 4·d_in·k·r instead of 2·d_in²·r, and only the tail
    eigenvalues σ_{k+1}², ... of G are dropped from the trajectory. The loss curve's first point
    (B = 0) and last point are then still exact; the points in between are the truncated loss.
    `task_gram`: G when the caller has already formed it.
    """
    lora_a = lora_init.clone()  # (L, r_l, d_in)
    lora_b = lora_init.new_zeros(lora_init.shape[0], lora_init.shape[2], lora_init.shape[1])  # (L, d_in, r_l)
    d_out, d_in = task_vector.shape[-2:]
    gram = _use_gram(d_out, d_in, steps, lora_init.shape[1]) if form == "auto" else form == "gram"
    gram = gram or gram_factor is not None
    if gram_factor is not None:
        factor_basis, factor_weight = gram_factor[0], gram_factor[1].pow(2).unsqueeze(-1)  # V_k, σ_k²

        def apply_gram(matrix: torch.Tensor) -> torch.Tensor:
            return factor_basis @ (factor_weight * (factor_basis.mT @ matrix))
    elif gram:
        gram_matrix = task_vector.mT @ task_vector if task_gram is None else task_gram  # G: (L, d_in, d_in)

        def apply_gram(matrix: torch.Tensor) -> torch.Tensor:
            return gram_matrix @ matrix

    if gram:
        # Y_p = τtᵀ X_p is skipped when X_p is zero (the filter is on): it would only add zeros
        cross_p = task_vector.mT @ stability_fixed if bool(stability_fixed.any()) else None  # (L, d_in, r_p)
        cross_v = task_vector.mT @ fidelity_fixed  # Y_v = τtᵀ E_v: (L, d_in, r_v)
        constant = stability_fixed.pow(2).sum(dim=(-2, -1)) + fidelity_fixed.pow(2).sum(dim=(-2, -1))

    def loss_and_grads(use_gram: bool = gram) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        coeff_p, coeff_v = lora_a @ previous_basis, lora_a @ task_basis  # C_p, C_v
        if use_gram:
            # ‖X_p + K C_p‖² + ‖E_v − K C_v‖² = const + 2⟨BᵀY_p, C_p⟩ − 2⟨BᵀY_v, C_v⟩ + ⟨S, Q⟩,
            # S = KᵀK = Bᵀ G B and Q = C_p C_pᵀ + C_v C_vᵀ: only G B touches a d_in x d_in matrix
            mapped = apply_gram(lora_b)  # H = G B: (L, d_in, r_l)
            inner = lora_b.mT @ mapped  # S: (L, r_l, r_l)
            outer = coeff_p @ coeff_p.mT + coeff_v @ coeff_v.mT  # Q: (L, r_l, r_l)
            proj_v = lora_b.mT @ cross_v  # Bᵀ Y_v
            loss = constant - 2 * (proj_v * coeff_v).sum(dim=(-2, -1)) + (inner * outer).sum(dim=(-2, -1))
            grad_b = 2 * (mapped @ outer - cross_v @ coeff_v.mT)
            grad_cp, grad_cv = 2 * inner @ coeff_p, 2 * (inner @ coeff_v - proj_v)
            if cross_p is not None:
                proj_p = lora_b.mT @ cross_p  # Bᵀ Y_p
                loss = loss + 2 * (proj_p * coeff_p).sum(dim=(-2, -1))
                grad_b = grad_b + 2 * cross_p @ coeff_p.mT
                grad_cp = grad_cp + 2 * proj_p
        else:
            adapted = task_vector @ lora_b  # K = τt B: (L, d_out, r_l)
            resid_p = stability_fixed + adapted @ coeff_p  # R_p
            resid_v = fidelity_fixed - adapted @ coeff_v  # R_v
            loss = resid_p.pow(2).sum(dim=(-2, -1)) + resid_v.pow(2).sum(dim=(-2, -1))
            grad_b = task_vector.mT @ (2 * (resid_p @ coeff_p.mT - resid_v @ coeff_v.mT))
            grad_cp, grad_cv = 2 * adapted.mT @ resid_p, -2 * adapted.mT @ resid_v
        grad_a = grad_cp @ previous_basis.mT + grad_cv @ task_basis.mT
        return loss, grad_a, grad_b

    history = []
    if lora_init.shape[1] > 0 and steps > 0:
        optimizer = torch.optim.Adam([lora_a, lora_b], lr=lr, fused=True)  # one kernel: 3-4x less time than the loop
        for _ in range(steps):
            loss, lora_a.grad, lora_b.grad = loss_and_grads()
            optimizer.step()
            history.append(loss)
    history.append(loss_and_grads(use_gram=gram and gram_factor is None)[0])  # exact final loss
    return lora_a, lora_b, torch.stack(history).mT


def solve_lora_exact(
    task_vector: torch.Tensor,
    rank: int,
    previous_basis: torch.Tensor,
    task_basis: torch.Tensor,
    stability_fixed: torch.Tensor,
    fidelity_fixed: torch.Tensor,
    rcond: float = 1e-3,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The minimiser of Eq. 16 over rank-r_l corrections, in closed form (not the paper's Adam).

    With W = [V_p, V_v] and F = [−X_p, E_v], the loss is ‖F − τt M W‖² for M = B A of rank ≤ r_l.
    Any N = τt M W with columns in range(τt) and rank ≤ r_l is reachable, so the optimum is the
    truncated SVD N* = [Π F]_{r_l} (Π projects onto range(τt)), and the minimum-norm correction is
    τt M = N* W⁺. W⁺ uses a relative cut-off `rcond`: directions where V_v nearly lies in span(V_p)
    ask for contradicting targets, and an unregularised pseudo-inverse would blow them up.
    Returns (τt B A, loss before and after as (L, 2)).
    """
    combined = torch.cat([previous_basis, task_basis], dim=-1)  # W: (L, d_in, c)
    targets = torch.cat([-stability_fixed, fidelity_fixed], dim=-1)  # F: (L, d_out, c)
    d_out, d_in = task_vector.shape[-2:]
    if d_out > d_in:  # range(τt) is a proper subspace: project F onto it through the Gram matrix
        gram = task_vector.mT @ task_vector
        ridge = gram.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(1e-30)[..., None, None] * 1e-6
        eye = torch.eye(d_in, dtype=gram.dtype, device=gram.device)
        targets = task_vector @ torch.linalg.solve(gram + ridge * eye, task_vector.mT @ targets)
    u, s, vh = torch.linalg.svd(targets, full_matrices=False)
    k = min(rank, s.shape[-1])
    best = (u[..., :k] * s[..., None, :k]) @ vh[..., :k, :]  # N*
    correction = best @ torch.linalg.pinv(combined, rtol=rcond)  # τt B A = N* W⁺: (L, d_out, d_in)
    before = targets.new_tensor(0.0) + stability_fixed.pow(2).sum((-2, -1)) + fidelity_fixed.pow(2).sum((-2, -1))
    after_p = (stability_fixed + correction @ previous_basis).pow(2).sum((-2, -1))
    after_v = (fidelity_fixed - correction @ task_basis).pow(2).sum((-2, -1))
    return correction, torch.stack([before, after_p + after_v], dim=-1)


def filter_and_adapt(
    previous: torch.Tensor,
    task_vector: torch.Tensor,
    lora_init: torch.Tensor,
    r_p: int,
    r_v: int,
    steps: int,
    lr: float,
    gate: str = "null-space",
    solver: str = "auto",
    previous_basis: torch.Tensor | None = None,
    lora_solver: str = "adam",
    gram_rank: int = 0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """NUFILT's update τt (P + B A) for a stack of layers.

    previous, task_vector: (L, d_out, d_in) = τ̄_{t−1}, τt. lora_init: (L, r_l, d_in), the
    initial A (B starts at zero). `gate` is P, one of FILTERS. `gram_rank` k > 0: Adam sees G = τtᵀτt through τt's top-k
    spectral part (one basis computation serves V_v and V_k) where that is cheaper, i.e. where
    2k < min(d_out, d_in); otherwise G stays exact. Returns the update and per-layer diagnostics.
    """
    if previous_basis is None:
        previous_basis, prev_values, prev_solvers = right_singular_basis(previous, r_p, solver)  # (L, d_in, r_p)
    else:
        prev_values = previous_basis.new_zeros(previous_basis.shape[0], previous_basis.shape[-1])
        prev_solvers = ["given"] * previous_basis.shape[0]
    gram_rank = gram_rank if 0 < 2 * gram_rank < min(task_vector.shape[-2:]) else 0
    d_out, d_in = task_vector.shape[-2:]
    # G = τtᵀτt, formed once for the task basis and the Adam loop's Gram form when that is used
    adam_gram = not (lora_solver == "exact" and lora_init.shape[1] > 0) and gram_rank == 0
    adam_gram = adam_gram and _use_gram(d_out, d_in, steps, lora_init.shape[1])
    task_gram = task_vector.mT @ task_vector if adam_gram else None
    task_basis, task_values, task_solvers = right_singular_basis(
        task_vector, max(r_v, gram_rank), solver, gram=task_gram
    )
    gram_factor = (task_basis, task_values) if gram_rank > 0 else None
    task_basis, task_values = task_basis[..., :r_v], task_values[..., :r_v]  # V_v: (L, d_in, r_v)

    # τt P: the filtered task vector (P = I: τt itself; P = 0: nothing, only the LoRA passes τt)
    inside = task_vector @ previous_basis  # (L, d_out, r_p)
    if gate == "null-space":
        filtered = task_vector - inside @ previous_basis.mT
    elif gate == "identity":
        filtered = task_vector
    else:
        filtered = torch.zeros_like(task_vector)
    # Eq. 16-17 with M' = τ̄ + τt (P + B A): only products with the bases are ever needed.
    # X_p = τt P V_p is exactly zero for P = I − V_p V_pᵀ and for P = 0, so it is computed only for P = I.
    stability_fixed = inside if gate == "identity" else torch.zeros_like(inside)
    fidelity_fixed = (task_vector - previous - filtered) @ task_basis  # E_v = τt V_v − M V_v
    if lora_solver == "exact" and lora_init.shape[1] > 0:
        correction, curve = solve_lora_exact(
            task_vector, lora_init.shape[1], previous_basis, task_basis, stability_fixed, fidelity_fixed
        )
        update = filtered + correction
    else:
        lora_a, lora_b, curve = fit_lora(
            task_vector, lora_init, previous_basis, task_basis, stability_fixed, fidelity_fixed, steps, lr,
            gram_factor=gram_factor, task_gram=task_gram,
        )
        update = filtered + (task_vector @ lora_b) @ lora_a
    diagnostics = {
        "loss_curve": curve,  # (L, steps + 1)
        "removed_energy": removed_energy(task_vector, previous_basis, inside),
        "prev_singular_values": prev_values,
        "task_singular_values": task_values,
        "basis_solvers": list(zip(prev_solvers, task_solvers, strict=True)),  # path per layer: (V_p, V_v)
    }
    return update, diagnostics


def _null_space_alias(value: Any) -> dict[str, str]:
    if not isinstance(value, bool):
        raise TypeError(f"null_space must be True or False, got {value!r}")
    return {"filter": "null-space" if value else "identity"}


@dataclass
class NufiltOptions:
    r_p: int = option(128, "null-space rank: directions of τ̄_{t−1} the filter removes (Table 9)")
    r_l: int = option(64, 'LoRA rank; 0 is the "null-space only" ablation')
    r_v: int = option(8, "rank of the new task's subspace in the fidelity term")
    steps: int = option(50, "Adam iterations per task")
    lr: float = option(1e-3, "Adam learning rate")
    init_std: float = option(0.02, "A ~ N(0, init_std²), B = 0")
    filter: str = option(
        "null-space",
        'P: "null-space" (the method), "identity" (authors\' no-filter run), "zero" (Table 4)',
        choices=FILTERS,
    )
    other_params: str = option(
        "keep-pretrained",
        "what the unselected parameters get: θ0, the task average, or task arithmetic with other_scale",
        choices=OTHER_PARAMS,
    )
    other_scale: float = option(0.3, 'λ when other_params == "task-arithmetic"')
    first_step: str = option(
        "paper",
        '"paper": θ̄1 = θ1; "filtered": the authors\' code (see docs)',
        choices=FIRST_STEPS,
    )
    svd: str = option(
        "auto",
        'bases: "auto" checked per layer (equal to "exact", the thin SVD), "gram", "lowrank" unchecked',
        choices=SVD_SOLVERS,
    )
    lora_solver: str = option(
        "adam",
        '"adam": the paper\'s fit; "exact": closed-form minimiser of Eq. 16',
        choices=LORA_SOLVERS,
    )
    gram_rank: int = option(0, "> 0: Adam uses τt's top-k spectral part of τtᵀτt (faster; 0 = exact)")

    # the earlier spelling: null_space=True is filter="null-space", False is filter="identity"
    aliases: ClassVar[dict[str, Callable[[Any], dict[str, str]]]] = {"null_space": _null_space_alias}

    def __post_init__(self) -> None:
        for name in ("r_p", "r_l", "r_v", "steps", "gram_rank"):
            check_rank(name, getattr(self, name))
        check_number("lr", self.lr, low=0.0, low_open=True)
        check_number("init_std", self.init_std, low=0.0)
        check_number("other_scale", self.other_scale)
        check_choice("filter", self.filter, FILTERS)
        check_choice("other_params", self.other_params, OTHER_PARAMS)
        check_choice("first_step", self.first_step, FIRST_STEPS)
        check_choice("svd", self.svd, SVD_SOLVERS)
        check_choice("lora_solver", self.lora_solver, LORA_SOLVERS)


class Nufilt(MergeMethod):
    name = "nufilt"
    Options = NufiltOptions
    paper_layers = PAPER_NUFILT_PATTERNS
    matrix_rule = True

    def __init__(self, options: NufiltOptions) -> None:
        super().__init__(options)
        self._warned: set[str] = set()

    def step(self, ctx: StepContext) -> MutableMapping[str, torch.Tensor]:
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
                    opts.filter, opts.svd, basis, opts.lora_solver, opts.gram_rank,
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
                        "basis_solvers": dict(zip(("previous", "task"), diag["basis_solvers"][i], strict=True)),
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
