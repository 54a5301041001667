"""Per-step geometry against hand-built subspaces and a plain NumPy re-implementation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nufilt.analysis.activations import LayerStatistics
from nufilt.analysis.affinity import affinity_table, vector_bases
from nufilt.analysis.step_geometry import geometry_tables, step_geometry

KEYS = ["encoder.layers.0.mlp.fc1.weight", "encoder.layers.1.self_attn.q_proj.weight"]


def _stats(columns: np.ndarray) -> LayerStatistics:
    """Statistics whose top eigenvectors are the given orthonormal columns (d_in, k)."""
    d_in, k = columns.shape
    vectors = torch.tensor(columns, dtype=torch.float64)
    values = torch.arange(k, 0, -1, dtype=torch.float64)
    return LayerStatistics(vectors @ torch.diag(values) @ vectors.T, values, vectors, 100)


def _axes(d_in: int, indices) -> np.ndarray:
    return np.eye(d_in)[:, list(indices)]


def test_an_update_orthogonal_to_a_tasks_data_scores_zero_and_one_inside_scores_one():
    d_out, d_in = 5, 8
    pretrained = {key: torch.zeros(d_out, d_in) for key in KEYS}
    rng = np.random.default_rng(0)
    # the step's update lives on input coordinates 2, 3 (task "b"'s data); task "a" uses 0, 1
    update = {key: torch.tensor(rng.normal(size=(d_out, 2)) @ _axes(d_in, [2, 3]).T, dtype=torch.float32)
              for key in KEYS}
    previous = {key: torch.tensor(10 * rng.normal(size=(d_out, 2)) @ _axes(d_in, [0, 1]).T, dtype=torch.float32)
                for key in KEYS}
    merged = {key: previous[key] + update[key] for key in KEYS}
    stats = {"a": {key: _stats(_axes(d_in, [0, 1])) for key in KEYS},
             "b": {key: _stats(_axes(d_in, [2, 3])) for key in KEYS}}
    tasks = {"a": previous, "b": {key: update[key] for key in KEYS}}
    bases = vector_bases(pretrained, tasks, KEYS, r_v=2)
    parts = step_geometry("m", 2, ["a", "b"], pretrained, previous, merged, bases, KEYS, stats, r_v=2, r_d=2, r_p=2)
    table = geometry_tables([parts])["step_geometry"].set_index(["task", "layer"])
    for key in KEYS:
        assert table.loc[("a", key), "update_affinity"] == pytest.approx(0.0, abs=1e-9)  # transparency
        assert table.loc[("b", key), "update_affinity"] == pytest.approx(1.0, abs=1e-9)  # fidelity
        assert table.loc[("a", key), "merged_affinity"] > 0.95  # τ̄t's top-2 is mostly the larger, older part
        assert table.loc[("b", key), "merged_affinity"] < 0.05
        assert table.loc[("b", key), "update_vector_affinity"] == pytest.approx(1.0, abs=1e-9)
        assert table.loc[("a", key), "update_vector_affinity"] == pytest.approx(0.0, abs=1e-9)
        assert table.loc[("a", key), "baseline"] == pytest.approx(2 / d_in)
    angles = geometry_tables([parts])["step_angles"]
    assert np.allclose(angles["angle_degrees"], 90.0)  # V(τ_b) is orthogonal to τ̄_1's basis


def _plain(pretrained, previous, merged, task, data_columns, r_v, r_d):
    """Eq. 5 and its data-free form with NumPy's SVD, one layer."""
    def top(matrix, k):
        return np.linalg.svd(matrix)[2][:k].T

    v_update = top(merged - previous, r_v)
    v_merged = top(merged - pretrained, r_v)
    v_task = top(task - pretrained, r_v)
    data = data_columns[:, :r_d]
    return (np.sum((v_update.T @ data) ** 2) / r_d, np.sum((v_merged.T @ data) ** 2) / r_d,
            np.sum((v_update.T @ v_task) ** 2) / r_v)


def test_random_states_match_a_plain_reimplementation_and_step_one_is_the_fig2_diagonal():
    rng = np.random.default_rng(1)
    d_out, d_in, r_v, r_d = 7, 9, 3, 2
    pretrained = {key: torch.tensor(rng.normal(size=(d_out, d_in))) for key in KEYS}
    tasks = {name: {key: pretrained[key] + torch.tensor(rng.normal(size=(d_out, d_in)) * 0.1) for key in KEYS}
             for name in ("a", "b")}
    data = {name: {key: np.linalg.qr(rng.normal(size=(d_in, 4)))[0] for key in KEYS} for name in tasks}
    stats = {name: {key: _stats(cols) for key, cols in layers.items()} for name, layers in data.items()}
    bases = vector_bases(pretrained, tasks, KEYS, r_v)
    # step 1 with θ̄1 = θ1, then step 2 with some merged state
    step1 = step_geometry("m", 1, ["a"], pretrained, pretrained, tasks["a"], bases, KEYS, stats, r_v, r_d)
    fig2 = affinity_table({"a": stats["a"]}, {"a": bases["a"]}, r_d).set_index("layer")["affinity"]
    for row in step1["step_geometry"]:
        assert row["merged_affinity"] == pytest.approx(fig2[row["layer"]], rel=1e-12)
    merged = {key: 0.5 * (tasks["a"][key] + tasks["b"][key]) for key in KEYS}
    step2 = step_geometry("m", 2, ["a", "b"], pretrained, tasks["a"], merged, bases, KEYS, stats, r_v, r_d)
    for row in step2["step_geometry"]:
        key, name = row["layer"], row["task"]
        expected = _plain(pretrained[key].numpy(), tasks["a"][key].numpy(), merged[key].numpy(),
                          tasks[name][key].numpy(), data[name][key], r_v, r_d)
        got = (row["update_affinity"], row["merged_affinity"], row["update_vector_affinity"])
        assert got == pytest.approx(expected, rel=1e-9, abs=1e-12)
    spectra = geometry_tables([step2])["step_spectra"]
    first = spectra[(spectra["layer"] == KEYS[0]) & (spectra["index"] == 1)]["value"].item()
    assert first == pytest.approx(np.linalg.svd((merged[KEYS[0]] - pretrained[KEYS[0]]).numpy())[1][0])


def test_float32_bases_match_the_plain_reimplementation_to_float32_accuracy():
    # the app's live geometry: bases in float32 (solver "auto"), overlaps in float64, within [0, 1]
    rng = np.random.default_rng(3)
    d_out, d_in, r_v, r_d = 40, 64, 8, 8
    pretrained = {key: torch.tensor(rng.normal(size=(d_out, d_in)), dtype=torch.float32) for key in KEYS}
    tasks = {name: {key: pretrained[key] + torch.tensor(rng.normal(size=(d_out, d_in)) * 0.1, dtype=torch.float32)
                    for key in KEYS} for name in ("a", "b")}
    data = {name: {key: np.linalg.qr(rng.normal(size=(d_in, 8)))[0] for key in KEYS} for name in tasks}
    stats = {name: {key: _stats(cols) for key, cols in layers.items()} for name, layers in data.items()}
    bases = vector_bases(pretrained, tasks, KEYS, r_v, solver="auto", dtype=torch.float32)
    assert all(b.dtype == torch.float64 for layers in bases.values() for b in layers.values())
    merged = {key: 0.6 * tasks["a"][key] + 0.4 * tasks["b"][key] for key in KEYS}
    rows = step_geometry("m", 2, ["a", "b"], pretrained, tasks["a"], merged, bases, KEYS, stats, r_v, r_d,
                         solver="auto", dtype=torch.float32)["step_geometry"]
    for row in rows:
        key, name = row["layer"], row["task"]
        expected = _plain(pretrained[key].double().numpy(), tasks["a"][key].double().numpy(),
                          merged[key].double().numpy(), tasks[name][key].double().numpy(), data[name][key], r_v, r_d)
        got = (row["update_affinity"], row["merged_affinity"], row["update_vector_affinity"])
        assert got == pytest.approx(expected, abs=1e-5)
        assert all(0.0 <= value <= 1.0 + 1e-12 for value in got)


def test_without_data_only_the_data_free_column_is_filled():
    rng = np.random.default_rng(2)
    pretrained = {key: torch.tensor(rng.normal(size=(4, 6))) for key in KEYS}
    task = {key: pretrained[key] + 0.1 * torch.tensor(rng.normal(size=(4, 6))) for key in KEYS}
    bases = vector_bases(pretrained, {"a": task}, KEYS, 2)
    rows = step_geometry("m", 1, ["a"], pretrained, pretrained, task, bases, KEYS, None, 2, 2)["step_geometry"]
    assert all(np.isnan(r["update_affinity"]) and np.isnan(r["merged_affinity"]) for r in rows)
    assert all(r["update_vector_affinity"] == pytest.approx(1.0) for r in rows)  # Δ1 = τ1
    with pytest.raises(ValueError, match="r_d <= r_v"):
        step_geometry("m", 1, ["a"], pretrained, pretrained, task, bases, KEYS, None, r_v=2, r_d=3)
    with pytest.raises(ValueError, match="no task-vector basis"):
        step_geometry("m", 1, ["z"], pretrained, pretrained, task, bases, KEYS, None, 2, 2)
