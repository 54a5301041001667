"""NUFILT: the filter, the LoRA fit, the ablations, and parity with a plain per-layer version."""

import numpy as np
import pytest
import torch

from nufilt.merge import continual_merge, make_merger
from nufilt.methods.nufilt import Nufilt, NufiltOptions, filter_and_adapt, fit_lora
from nufilt.statedict import PAPER_NUFILT_PATTERNS, select_keys
from tests.factories import synthetic_tasks, tiny_clip_state


@pytest.fixture(scope="module")
def zoo():
    pretrained = tiny_clip_state(seed=3)
    return pretrained, synthetic_tasks(pretrained, 3, seed=4, rank=6)


def _null_projector_numpy(matrix: np.ndarray, rank: int) -> np.ndarray:
    _, _, vt = np.linalg.svd(matrix.astype(np.float64))
    basis = vt[:rank].T
    return np.eye(matrix.shape[1]) - basis @ basis.T


def test_step_one_returns_the_first_task_on_selected_layers_and_pretrained_elsewhere(zoo):
    pretrained, tasks = zoo
    merger = make_merger("nufilt", pretrained)
    merged = merger.add(tasks[0])
    for key in pretrained:
        expected = tasks[0][key] if key in merger.selected else pretrained[key]
        assert torch.equal(merged[key], expected), key


def test_null_space_only_is_exactly_previous_plus_filtered_task_vector(zoo):
    pretrained, tasks = zoo
    r_p = 5
    merger = make_merger("nufilt", pretrained, r_p=r_p, r_l=0)
    first = merger.add(tasks[0])
    second = merger.add(tasks[1])
    for key in merger.selected:
        previous = (first[key] - pretrained[key]).numpy()
        task_vector = (tasks[1][key] - pretrained[key]).numpy()
        expected = first[key].numpy() + task_vector @ _null_projector_numpy(previous, r_p)
        np.testing.assert_allclose(second[key].numpy(), expected, atol=2e-6, rtol=1e-5)


def test_the_filter_leaves_the_previous_subspace_untouched_when_lora_is_off(zoo):
    pretrained, tasks = zoo
    merger = make_merger("nufilt", pretrained, r_p=6, r_l=0)
    first = merger.add(tasks[0])
    second = merger.add(tasks[1])
    for key in merger.selected:
        previous = first[key] - pretrained[key]
        _, _, vh = torch.linalg.svd(previous.double())
        basis = vh[:6].T.float()
        # responses of the merged layer on inputs from the protected subspace do not change
        torch.testing.assert_close(second[key] @ basis, first[key] @ basis, atol=1e-5, rtol=1e-4)


def test_naive_ablation_is_the_plain_sum_of_task_vectors(zoo):
    pretrained, tasks = zoo
    merged = list(continual_merge(pretrained, tasks, "nufilt", filter="identity", r_l=0))[-1]
    merger = make_merger("nufilt", pretrained)
    for key in merger.selected:
        expected = pretrained[key] + sum(t[key] - pretrained[key] for t in tasks)
        torch.testing.assert_close(merged[key], expected, atol=1e-6, rtol=1e-5)


def _reference_step(previous, task_vector, init_a, r_p, r_v, steps, lr, gate_kind="null-space"):
    """Algorithm 1 for one layer, written directly from the paper with explicit matrices."""
    d_in = task_vector.shape[1]
    _, _, vh_prev = torch.linalg.svd(previous)
    _, _, vh_task = torch.linalg.svd(task_vector)
    v_prev, v_task = vh_prev[:r_p].T, vh_task[:r_v].T
    gate = {
        "null-space": torch.eye(d_in) - v_prev @ v_prev.T,  # P (Eq. 8)
        "identity": torch.eye(d_in),  # the authors' "w/o null-space filter" run
        "zero": torch.zeros(d_in, d_in),  # Table 4's formula τt B A
    }[gate_kind]
    a = torch.nn.Parameter(init_a.clone())
    b = torch.nn.Parameter(torch.zeros(d_in, init_a.shape[0]))
    optimizer = torch.optim.Adam([a, b], lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        merged = previous + task_vector @ (gate + b @ a)  # M'
        loss = (task_vector @ v_task - merged @ v_task).pow(2).sum() + (previous @ v_prev - merged @ v_prev).pow(
            2
        ).sum()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return task_vector @ (gate + b @ a)


@pytest.mark.parametrize(
    "gate,layers", [("null-space", "paper"), ("identity", "paper"), ("zero", "paper"), ("null-space", "all-linear")]
)
def test_batched_implementation_matches_a_plain_per_layer_reference(zoo, gate, layers):
    pretrained, tasks = zoo
    options = {"r_p": 6, "r_l": 4, "r_v": 3, "steps": 20, "lr": 1e-2, "filter": gate, "layers": layers}
    merger = make_merger("nufilt", pretrained, seed=11, **options)
    first = merger.add(tasks[0])
    second = merger.add(tasks[1])
    method: Nufilt = merger.method
    from nufilt.methods.base import StepContext

    ctx = StepContext(2, pretrained, first, tasks[1], merger.selected, torch.device("cpu"), seed=11)
    with torch.enable_grad():
        for key in sorted(merger.selected):
            d_in = pretrained[key].shape[1]
            init = method._lora_init(ctx, key, 4, d_in)
            update = _reference_step(
                first[key] - pretrained[key], tasks[1][key] - pretrained[key], init, 6, 3, 20, 1e-2, gate
            )
            torch.testing.assert_close(second[key], first[key] + update, atol=2e-5, rtol=1e-4)


def test_lora_only_update_has_rank_at_most_r_l_and_lies_in_the_column_space_of_the_task_vector():
    generator = torch.Generator().manual_seed(5)
    d_out, d_in, rank, r_l = 40, 30, 6, 3
    # τt of rank 6 in R^40: its column space is a proper subspace, so the check can fail
    task_vector = (torch.randn(2, d_out, rank, generator=generator) @ torch.randn(2, rank, d_in, generator=generator))
    previous = torch.randn(2, d_out, d_in, generator=generator)
    init = 0.02 * torch.randn(2, r_l, d_in, generator=generator)
    update, _ = filter_and_adapt(previous, task_vector, init, 8, 4, 100, 1e-2, gate="zero", solver="exact")
    for layer in range(2):
        values = torch.linalg.svdvals(update[layer])
        assert values[0] > 1e-3  # the LoRA learned something
        assert values[r_l] <= 1e-5 * values[0]  # rank(τt B A) <= r_l
        columns = torch.linalg.svd(task_vector[layer], full_matrices=False).U[:, :rank]
        outside = update[layer] - columns @ (columns.T @ update[layer])
        assert outside.norm() <= 1e-5 * update[layer].norm()


def test_lora_only_merge_step_is_a_low_rank_update_inside_the_new_task_vector(zoo):
    pretrained, tasks = zoo  # task vectors of rank 6 in 32- to 64-dimensional layers
    merger = make_merger("nufilt", pretrained, r_p=8, r_l=2, r_v=3, steps=20, lr=1e-2, filter="zero")
    first = merger.add(tasks[0])
    second = merger.add(tasks[1])
    for key in merger.selected:
        step = (second[key] - first[key]).double()
        task_vector = (tasks[1][key] - pretrained[key]).double()
        values = torch.linalg.svdvals(step)
        assert values[0] > 0 and values[2] <= 1e-4 * values[0], key
        columns = torch.linalg.svd(task_vector, full_matrices=False).U[:, :6]
        assert (step - columns @ (columns.T @ step)).norm() <= 1e-4 * step.norm(), key


def test_null_space_false_is_the_identity_filter_and_conflicts_are_rejected(zoo):
    pretrained, tasks = zoo
    options = {"r_p": 6, "r_l": 2, "steps": 5}
    legacy = list(continual_merge(pretrained, tasks[:2], "nufilt", null_space=False, **options))[-1]
    named = list(continual_merge(pretrained, tasks[:2], "nufilt", filter="identity", **options))[-1]
    assert all(torch.equal(legacy[k], named[k]) for k in pretrained)
    assert make_merger("nufilt", pretrained, null_space=True).method.options.filter == "null-space"
    with pytest.raises(ValueError, match="null_space=False means filter='identity'"):
        make_merger("nufilt", pretrained, null_space=False, filter="zero")
    with pytest.raises(TypeError, match="null_space"):
        make_merger("nufilt", pretrained, null_space="yes")


def _lora_problem(seed: int, d_out: int, d_in: int, layers: int = 2, r_p: int = 4, r_v: int = 2, r_l: int = 3):
    """A random float64 instance of Eq. 16: (τt, A init, V_p, V_v, X_p, E_v)."""
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(layers, *shape, generator=generator, dtype=torch.float64)

    task_vector = randn(d_out, d_in)
    previous_basis, task_basis = torch.linalg.qr(randn(d_in, r_p)).Q, torch.linalg.qr(randn(d_in, r_v)).Q
    return task_vector, 0.1 * randn(r_l, d_in), previous_basis, task_basis, randn(d_out, r_p), randn(d_out, r_v)


@pytest.mark.parametrize("form", ["gram", "direct"])
def test_hand_written_gradients_equal_autograd(form):
    task_vector, init, previous_basis, task_basis, fixed_p, fixed_v = _lora_problem(5, 12, 9)
    a, b, curve = fit_lora(task_vector, init, previous_basis, task_basis, fixed_p, fixed_v, 7, 1e-2, form=form)
    # the same Adam run with autograd on the plain loss
    ref_a = init.clone().requires_grad_(True)
    ref_b = torch.zeros(2, 9, 3, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.Adam([ref_a, ref_b], lr=1e-2)
    losses = []
    for _ in range(7):
        optimizer.zero_grad()
        adapted = task_vector @ ref_b
        loss = (fixed_p + adapted @ ref_a @ previous_basis).pow(2).sum(dim=(-2, -1)) + (
            fixed_v - adapted @ ref_a @ task_basis
        ).pow(2).sum(dim=(-2, -1))
        loss.sum().backward()
        optimizer.step()
        losses.append(loss.detach())
    torch.testing.assert_close(a, ref_a.detach())
    torch.testing.assert_close(b, ref_b.detach())
    torch.testing.assert_close(curve[:, :7], torch.stack(losses).mT)


def test_lora_fit_lowers_the_surrogate_loss_and_reports_diagnostics(zoo):
    pretrained, tasks = zoo
    merger = make_merger("nufilt", pretrained, r_p=6, r_l=4, steps=30)
    merger.add(tasks[0])
    merger.add(tasks[1])
    layers = merger.report.info["layers"]
    assert set(layers) == set(merger.selected)
    for info in layers.values():
        curve = info["loss_curve"]
        assert len(curve) == 31 and curve[-1] < curve[0]
        assert 0.0 <= info["removed_energy"] <= 1.0
        assert len(info["prev_singular_values"]) == 6 and len(info["task_singular_values"]) == 8


def test_ranks_above_a_layer_are_clamped_and_reported_once(zoo):
    pretrained, tasks = zoo
    merger = make_merger("nufilt", pretrained, r_p=1000, r_l=2, steps=2)
    merger.add(tasks[0])
    with pytest.warns(UserWarning, match="r_p=1000 exceeds") as record:
        merger.add(tasks[1])
    shapes = {tuple(pretrained[k].shape) for k in merger.selected}
    assert len([w for w in record if "r_p=1000" in str(w.message)]) == len(shapes)
    assert all(info["ranks"]["r_p"] == min(info["shape"]) for info in merger.report.info["layers"].values())
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        merger.add(tasks[2])  # no second report


def test_filtered_first_step_zeroes_the_first_input_coordinates(zoo):
    pretrained, tasks = zoo
    merger = make_merger("nufilt", pretrained, first_step="filtered", r_p=4, r_l=0)
    merged = merger.add(tasks[0])
    for key in merger.selected:
        delta = merged[key] - pretrained[key]
        assert torch.count_nonzero(delta[:, :4]) == 0
        torch.testing.assert_close(delta[:, 4:], (tasks[0][key] - pretrained[key])[:, 4:])


def test_paper_preset_selects_attention_projections_and_fc1_only(zoo):
    pretrained, _ = zoo
    selected = select_keys(pretrained, "paper", PAPER_NUFILT_PATTERNS, matrix_rule=True)
    layers = {k.split(".")[2] for k in selected}
    assert layers == {"0", "1"}
    suffixes = sorted({k.split(".", 3)[3] for k in selected})
    assert suffixes == [
        "mlp.fc1.weight",
        "self_attn.k_proj.weight",
        "self_attn.out_proj.weight",
        "self_attn.q_proj.weight",
        "self_attn.v_proj.weight",
    ]


@pytest.mark.parametrize(
    "option,value,error",
    [
        ("r_p", -1, ValueError),
        ("r_l", 2.5, TypeError),
        ("lr", 0.0, ValueError),
        ("filter", "none", ValueError),
        ("other_params", "mean", ValueError),
        ("svd", "qr", ValueError),
        ("steps", -3, ValueError),
    ],
)
def test_bad_options_are_rejected_with_the_option_named(option, value, error):
    with pytest.raises(error, match=option):
        NufiltOptions(**{option: value})


def test_other_parameter_policies(zoo):
    pretrained, tasks = zoo
    bias = "encoder.layers.0.mlp.fc2.bias"
    keep = list(continual_merge(pretrained, tasks[:2], "nufilt", r_l=0))[-1]
    average = list(continual_merge(pretrained, tasks[:2], "nufilt", r_l=0, other_params="average"))[-1]
    arithmetic = list(
        continual_merge(pretrained, tasks[:2], "nufilt", r_l=0, other_params="task-arithmetic", other_scale=0.5)
    )[-1]
    torch.testing.assert_close(keep[bias], pretrained[bias])
    torch.testing.assert_close(average[bias], (tasks[0][bias] + tasks[1][bias]) / 2)
    expected = pretrained[bias] + 0.5 * (tasks[0][bias] - pretrained[bias]) + 0.5 * (tasks[1][bias] - pretrained[bias])
    torch.testing.assert_close(arithmetic[bias], expected)


def test_lowrank_svd_gives_the_same_merge_as_exact_on_low_rank_task_vectors():
    pretrained = tiny_clip_state(seed=3, width=128, layers=1)  # wide enough for the randomized path
    tasks = synthetic_tasks(pretrained, 3, seed=4, rank=6)
    options = {"r_p": 4, "r_l": 4, "r_v": 2, "steps": 10}
    exact = list(continual_merge(pretrained, tasks, "nufilt", **options))[-1]
    approx = list(continual_merge(pretrained, tasks, "nufilt", svd="lowrank", **options))[-1]
    for key in pretrained:
        torch.testing.assert_close(approx[key], exact[key], atol=1e-4, rtol=1e-3)


def test_exact_lora_solver_reaches_at_most_the_adam_loss():
    generator = torch.Generator().manual_seed(8)
    previous = torch.randn(3, 20, 12, generator=generator, dtype=torch.float64)
    task_vector = torch.randn(3, 20, 12, generator=generator, dtype=torch.float64)
    init = 0.02 * torch.randn(3, 4, 12, generator=generator, dtype=torch.float64)
    _, adam = filter_and_adapt(previous, task_vector, init, 4, 2, 300, 1e-2, solver="exact")
    update, exact = filter_and_adapt(previous, task_vector, init, 4, 2, 300, 1e-2, solver="exact", lora_solver="exact")
    assert exact["loss_curve"].shape == (3, 2)
    assert (exact["loss_curve"][:, -1] <= adam["loss_curve"][:, -1] * (1 + 1e-6)).all()
    assert (exact["loss_curve"][:, -1] < 0.5 * exact["loss_curve"][:, 0]).all()
    merged = list(
        continual_merge(tiny_clip_state(), synthetic_tasks(tiny_clip_state(), 2), "nufilt", lora_solver="exact")
    )
    assert all(torch.isfinite(v).all() for v in merged[-1].values())


def test_gram_rank_at_the_task_vectors_rank_gives_the_exact_adam_run():
    # τt of rank 3: its top-3 spectral part *is* G = τtᵀτt, so the run must match the exact one
    generator = torch.Generator().manual_seed(9)
    previous = torch.randn(2, 16, 10, generator=generator, dtype=torch.float64)
    task_vector = torch.randn(2, 16, 3, generator=generator, dtype=torch.float64) @ torch.randn(
        2, 3, 10, generator=generator, dtype=torch.float64
    )
    init = 0.05 * torch.randn(2, 4, 10, generator=generator, dtype=torch.float64)
    exact, exact_diag = filter_and_adapt(previous, task_vector, init, 4, 2, 30, 1e-2, solver="exact")
    low, low_diag = filter_and_adapt(previous, task_vector, init, 4, 2, 30, 1e-2, solver="exact", gram_rank=3)
    torch.testing.assert_close(low, exact)
    torch.testing.assert_close(low_diag["loss_curve"], exact_diag["loss_curve"])
    torch.testing.assert_close(low_diag["task_singular_values"], exact_diag["task_singular_values"])
    # below the rank the trajectory changes (the option is not a no-op) but stays close
    cut, _ = filter_and_adapt(previous, task_vector, init, 4, 2, 30, 1e-2, solver="exact", gram_rank=1)
    assert not torch.allclose(cut, exact)
    assert (cut - exact).norm() < 0.5 * exact.norm()


def test_a_truncated_gram_run_still_reports_the_exact_first_and_last_loss():
    task_vector, init, previous_basis, task_basis, fixed_p, fixed_v = _lora_problem(10, 14, 12)
    _, values, vh = torch.linalg.svd(task_vector)
    factor = (vh[:, :2].mT, values[:, :2])
    problem = (task_vector, init, previous_basis, task_basis, fixed_p, fixed_v, 20, 1e-2)
    a, b, curve = fit_lora(*problem, gram_factor=factor)
    adapted = task_vector @ b
    true_loss = (fixed_p + adapted @ a @ previous_basis).pow(2).sum((-2, -1)) + (
        fixed_v - adapted @ a @ task_basis
    ).pow(2).sum((-2, -1))
    torch.testing.assert_close(curve[:, -1], true_loss)
    torch.testing.assert_close(curve[:, 0], fixed_p.pow(2).sum((-2, -1)) + fixed_v.pow(2).sum((-2, -1)))
    # the truncated loss inside the loop drops the tail of BᵀGB, so it differs from the true one
    _, _, exact_curve = fit_lora(*problem)
    assert not torch.allclose(curve[:, 1:-1], exact_curve[:, 1:-1])


def test_gram_rank_above_a_layer_is_the_exact_merge(zoo):
    pretrained, tasks = zoo
    options = {"r_p": 4, "r_l": 3, "r_v": 2, "steps": 10}
    exact = list(continual_merge(pretrained, tasks, "nufilt", **options))[-1]
    full = list(continual_merge(pretrained, tasks, "nufilt", gram_rank=10_000, **options))[-1]
    for key in pretrained:
        torch.testing.assert_close(full[key], exact[key], atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="gram_rank"):
        NufiltOptions(gram_rank=-2)


def _spectrum_stack(spectrum: str, shape: tuple[int, int], generator: torch.Generator, layers: int = 3) -> torch.Tensor:
    """Small versions of bench/merge_speed.py's task-vector spectra, (layers, d_out, d_in)."""
    d_out, d_in = shape

    def randn(*size: int) -> torch.Tensor:
        return torch.randn(layers, *size, generator=generator)

    if spectrum == "1/i":
        k = min(shape)
        return 0.01 * (randn(d_out, k) / torch.arange(1, k + 1.0)) @ randn(k, d_in)
    if spectrum == "signal+noise":  # a rank-8 signal over a flat noise floor
        return 0.02 * randn(d_out, 8) @ randn(8, d_in) / 8 + 0.002 * randn(d_out, d_in)
    if spectrum == "flat":
        return 0.002 * randn(d_out, d_in)
    return 0.01 * randn(d_out, 6) @ randn(6, d_in)  # exactly low rank, below r_p


def _eq16_with_exact_bases(previous, task_vector, update, r_p: int, r_v: int) -> torch.Tensor:
    """Eq. 16 per layer of a fused update, with float64 SVD bases (round-off directions dropped)."""

    def top(matrix: torch.Tensor, k: int) -> torch.Tensor:
        _, values, vh = torch.linalg.svd(matrix.double(), full_matrices=False)
        kept = values[..., :k] > values[..., :1] * torch.finfo(torch.float32).eps * max(matrix.shape[-2:])
        return vh[..., :k, :].mT * kept.unsqueeze(-2)

    v_prev, v_task = top(previous, r_p), top(task_vector, r_v)
    merged = previous.double() + update.double()
    stability = (previous.double() @ v_prev - merged @ v_prev).pow(2).sum((-2, -1))
    return stability + (task_vector.double() @ v_task - merged @ v_task).pow(2).sum((-2, -1))


@pytest.mark.parametrize("shape", [(320, 320), (640, 320)])  # V_v starts randomized here, V_p from the Gram
@pytest.mark.parametrize("spectrum", ["1/i", "signal+noise", "flat", "low-rank"])
def test_default_bases_give_the_exact_bases_result_on_every_spectrum(spectrum, shape):
    generator = torch.Generator().manual_seed(12)
    previous, task_vector = (_spectrum_stack(spectrum, shape, generator) for _ in range(2))
    init = 0.02 * torch.randn(3, 16, shape[1], generator=generator)
    problem = (previous, task_vector, init, 32, 4, 50, 1e-3)
    exact, _ = filter_and_adapt(*problem, solver="exact")
    default, diag = filter_and_adapt(*problem)
    ratio = _eq16_with_exact_bases(previous, task_vector, default, 32, 4) / _eq16_with_exact_bases(
        previous, task_vector, exact, 32, 4
    )
    assert abs(float(ratio.mean()) - 1) < 0.01 and float((ratio - 1).abs().max()) < 0.05, ratio
    assert len(diag["basis_solvers"]) == 3 and all(len(pair) == 2 for pair in diag["basis_solvers"])


def test_unchecked_randomized_bases_miss_a_flat_noise_floor():
    # the previous default (3 power iterations) on spectrum (b): the check above would fail for it
    generator = torch.Generator().manual_seed(12)
    previous, task_vector = (_spectrum_stack("signal+noise", (320, 320), generator) for _ in range(2))
    init = 0.02 * torch.randn(3, 16, 320, generator=generator)
    problem = (previous, task_vector, init, 32, 4, 50, 1e-3)
    exact, _ = filter_and_adapt(*problem, solver="exact")
    randomized, _ = filter_and_adapt(*problem, solver="lowrank")
    ratio = _eq16_with_exact_bases(previous, task_vector, randomized, 32, 4) / _eq16_with_exact_bases(
        previous, task_vector, exact, 32, 4
    )
    assert float(ratio.mean()) > 1.05


def test_merger_reports_how_each_layers_bases_were_found(zoo):
    pretrained, tasks = zoo
    merger = make_merger("nufilt", pretrained, r_p=4, r_l=2, steps=2)
    merger.add(tasks[0])
    merger.add(tasks[1])
    allowed = {"exact", "gram", "lowrank"}
    for info in merger.report.info["layers"].values():
        assert set(info["basis_solvers"]) == {"previous", "task"}
        assert all(path.split("+")[0] in allowed for path in info["basis_solvers"].values())
