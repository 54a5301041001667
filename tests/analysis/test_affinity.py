"""Subspace affinity (Eq. 5) on constructed cases: aligned, orthogonal, random, and the tables built on it."""

import numpy as np
import pandas as pd
import pytest
import torch

from nufilt.analysis.activations import layer_statistics
from nufilt.analysis.affinity import (
    AFFINITY_COLUMNS,
    affinity_ecdf,
    affinity_matrix,
    affinity_table,
    diagonal_dominance,
    vector_bases,
)

KEY = "encoder.layers.0.self_attn.q_proj.weight"
MLP_KEY = "encoder.layers.0.mlp.fc1.weight"


def _orthonormal(d: int, r: int, generator: torch.Generator) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(d, r, generator=generator, dtype=torch.float64)).Q


def _stats_from_rows(rows: torch.Tensor):
    """LayerStatistics of the token matrix `rows` (N, d_in)."""
    return layer_statistics(rows.mT @ rows / rows.shape[0], rows.shape[0])


def test_task_vector_b_h_has_affinity_one_with_the_row_space_of_h():
    g = torch.Generator().manual_seed(0)
    d_in, d_out, n, r_d = 24, 16, 40, 3
    h = torch.randn(n, r_d, generator=g, dtype=torch.float64) @ torch.randn(r_d, d_in, generator=g, dtype=torch.float64)
    tau = torch.randn(d_out, n, generator=g, dtype=torch.float64) @ h  # τ = B H, rank r_d
    pretrained = {KEY: torch.randn(d_out, d_in, generator=g, dtype=torch.float64)}
    bases = vector_bases(pretrained, {"t": {KEY: pretrained[KEY] + tau}}, [KEY], r_v=5)
    table = affinity_table({"t": {KEY: _stats_from_rows(h)}}, bases, r_d=r_d)
    assert table["affinity"].iloc[0] == pytest.approx(1.0, abs=1e-9)
    # r_d beyond H's rank picks a direction outside τ's row space: strictly below 1
    assert affinity_table({"t": {KEY: _stats_from_rows(h)}}, bases, r_d=4)["affinity"].iloc[0] < 0.8


def test_orthogonal_subspaces_have_affinity_zero_and_random_ones_score_the_baseline():
    g = torch.Generator().manual_seed(1)
    d_in, d_out = 32, 20
    q = _orthonormal(d_in, d_in, g)
    data_rows = torch.randn(200, 4, generator=g, dtype=torch.float64) @ q[:, :4].mT  # span(q[:, :4])
    tau = torch.randn(d_out, 6, generator=g, dtype=torch.float64) @ q[:, 10:16].mT  # span(q[:, 10:16])
    zero = {KEY: torch.zeros(d_out, d_in, dtype=torch.float64)}
    bases = vector_bases(zero, {"v": {KEY: tau}}, [KEY], r_v=6)
    table = affinity_table({"d": {KEY: _stats_from_rows(data_rows)}}, bases, r_d=4)
    assert table["affinity"].iloc[0] == pytest.approx(0.0, abs=1e-12)
    assert table["baseline"].iloc[0] == pytest.approx(6 / 32)

    # random task vectors against a fixed data subspace: mean affinity ≈ r_v / d_in
    tasks = {f"v{i}": {KEY: torch.randn(d_out, d_in, generator=g, dtype=torch.float64)} for i in range(300)}
    table = affinity_table({"d": {KEY: _stats_from_rows(data_rows)}}, vector_bases(zero, tasks, [KEY], 6), r_d=4)
    assert table["affinity"].mean() == pytest.approx(6 / 32, abs=0.02)
    assert table["affinity"].between(0, 1).all()


def test_r_d_must_not_exceed_r_v():
    g = torch.Generator().manual_seed(2)
    zero = {KEY: torch.zeros(8, 8, dtype=torch.float64)}
    bases = vector_bases(zero, {"v": {KEY: torch.randn(8, 8, generator=g, dtype=torch.float64)}}, [KEY], 2)
    stats = {"d": {KEY: _stats_from_rows(torch.randn(30, 8, generator=g, dtype=torch.float64))}}
    with pytest.raises(ValueError, match="r_d <= r_v"):
        affinity_table(stats, bases, r_d=3)
    with pytest.raises(ValueError, match="r_v"):
        vector_bases(zero, {"v": zero}, [KEY], 0)


def _planted_table() -> pd.DataFrame:
    """3 data x 3 vector tasks on 2 attention + 1 MLP layers, each task in its own subspace."""
    g = torch.Generator().manual_seed(3)
    d_in, d_out = 30, 12
    q = _orthonormal(d_in, d_in, g)
    keys = [KEY, "encoder.layers.1.self_attn.k_proj.weight", MLP_KEY]
    zero = {key: torch.zeros(d_out, d_in, dtype=torch.float64) for key in keys}
    stats, tasks = {}, {}
    for i, name in enumerate(["a", "b", "c"]):
        own = q[:, 8 * i : 8 * i + 4]  # the task vector's row space; the data lives in its first 2 axes
        rows = torch.randn(100, 2, generator=g, dtype=torch.float64) @ own[:, :2].mT
        rows = rows + 0.05 * torch.randn(100, d_in, generator=g, dtype=torch.float64)
        stats[name] = {key: _stats_from_rows(rows) for key in keys}
        tasks[name] = {key: torch.randn(d_out, 4, generator=g, dtype=torch.float64) @ own.mT for key in keys}
    return affinity_table(stats, vector_bases(zero, tasks, keys, r_v=4), r_d=2)


def test_tables_matrices_ecdf_and_dominance_have_the_documented_shapes():
    table = _planted_table()
    assert list(table.columns) == list(AFFINITY_COLUMNS)
    assert len(table) == 3 * 3 * 3
    assert set(table["kind"]) == {"attention", "mlp"}
    assert sorted(set(table["block"])) == [0, 1]

    mean = affinity_matrix(table)
    assert list(mean.index) == ["a", "b", "c"] and list(mean.columns) == ["a", "b", "c"]
    expected = table[(table.data_task == "b") & (table.vector_task == "a")]["affinity"].mean()
    assert mean.loc["b", "a"] == pytest.approx(expected)
    p90 = affinity_matrix(table, "p90", kind="attention").to_numpy()
    values = table[(table.data_task == "a") & (table.vector_task == "a") & (table.kind == "attention")]["affinity"]
    assert p90[0, 0] == pytest.approx(np.quantile(values, 0.9))
    assert (np.diag(mean.to_numpy()) > 0.9).all() and (mean.to_numpy()[~np.eye(3, dtype=bool)] < 0.05).all()

    ecdf = affinity_ecdf(table, [("a", "a"), ("a", "c")])
    for _, part in ecdf.groupby("pair"):
        assert part["affinity"].is_monotonic_increasing and part["ecdf"].iloc[-1] == 1.0 and len(part) == 3

    dominance = diagonal_dominance(table).set_index(["kind", "stat"])
    assert list(dominance.index.get_level_values(0).unique()) == ["all", "attention", "mlp"]
    row = dominance.loc[("all", "mean")]
    assert row["diagonal"] > 0.9 > 0.05 > row["off_diagonal"]
    assert row["dominant_rows"] == 1.0 and row["dominant_columns"] == 1.0
    assert row["baseline"] == pytest.approx(4 / 30)

    with pytest.raises(ValueError, match="kind"):
        affinity_matrix(table, kind="conv")
    with pytest.raises(ValueError, match="stat"):
        affinity_matrix(table, stat="median")
    with pytest.raises(ValueError, match="no affinity rows"):
        affinity_ecdf(table, [("a", "zzz")])
