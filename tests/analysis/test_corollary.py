"""Corollary 1 (Eq. 11): the bound holds on random instances that meet its hypothesis."""

import pandas as pd
import pytest
import torch

from nufilt.analysis.corollary import BOUND_COLUMNS, corollary_bound, summarize_bounds


def _random_instance(g: torch.Generator, layers: int, d_out: int, d_in: int, n: int, data_rank: int | None):
    """(ρ − τ, XᵀX/N, τ, X) for a stack of layers; X has rank `data_rank` (full when None)."""
    rank = d_in if data_rank is None else data_rank
    x = torch.randn(layers, n, rank, generator=g, dtype=torch.float64) @ torch.randn(
        layers, rank, d_in, generator=g, dtype=torch.float64
    )
    tau = torch.randn(layers, d_out, d_in, generator=g, dtype=torch.float64)
    rho = tau + torch.randn(layers, d_out, d_in, generator=g, dtype=torch.float64)
    return rho - tau, x.mT @ x / n, tau, x


def test_bound_holds_on_random_instances_with_rank_r_d_data():
    g = torch.Generator().manual_seed(0)
    for r_d, r_v in [(1, 1), (2, 5), (4, 4), (3, 9)]:
        delta, covariance, tau, x = _random_instance(g, 40, 12, 16, 50, data_rank=r_d)
        result = corollary_bound(delta, covariance, tau, r_d, r_v)
        assert bool(result["holds"].all()) and bool(result["holds_rank_rd"].all())
        # rank-r_d data: truncation changes nothing, and lhs is ‖(ρ−τ)Xᵀ‖²_F / N
        torch.testing.assert_close(result["lhs"], result["lhs_rank_rd"])
        direct = (delta @ x.mT).pow(2).sum(dim=(-2, -1)) / x.shape[-2]
        torch.testing.assert_close(result["lhs"], direct)
        assert bool(((result["affinity"] >= 0) & (result["affinity"] <= 1 + 1e-12)).all())
        torch.testing.assert_close(result["zeta_squared"], 1 - result["affinity"])
        torch.testing.assert_close(result["rhs"], result["projection_term"] + result["residual_term"])


def test_truncated_bound_always_holds_but_full_rank_data_can_break_it():
    g = torch.Generator().manual_seed(1)
    delta, covariance, tau, _ = _random_instance(g, 40, 10, 12, 60, data_rank=None)
    assert bool(corollary_bound(delta, covariance, tau, 2, 4)["holds_rank_rd"].all())

    # data spread over all axes, τ aligned with the top data axis (ζ = 0), ρ − τ kills that axis:
    # the data-free side is 0 while the real loss is not
    d = 6
    covariance = torch.diag(torch.tensor([1.0, 0.9, 0.8, 0.7, 0.6, 0.5], dtype=torch.float64))
    tau = torch.zeros(3, d, dtype=torch.float64)
    tau[0, 0] = 1.0
    delta = torch.zeros(3, d, dtype=torch.float64)
    delta[:, 1:] = 1.0
    result = corollary_bound(delta, covariance, tau, 1, 1)
    assert float(result["zeta_squared"]) == pytest.approx(0.0)
    assert float(result["rhs"]) == pytest.approx(0.0)
    assert float(result["lhs"]) > 0 and not bool(result["holds"])
    assert float(result["lhs_rank_rd"]) == pytest.approx(0.0) and bool(result["holds_rank_rd"])


def test_bad_ranks_are_rejected():
    delta = torch.zeros(4, 5)
    with pytest.raises(ValueError, match="r_d <= r_v"):
        corollary_bound(delta, torch.eye(5), delta, 3, 2)
    with pytest.raises(ValueError, match="min"):
        corollary_bound(delta, torch.eye(5), delta, 1, 5)


def test_summary_counts_how_often_and_by_how_much():
    rows = pd.DataFrame(
        [
            {"method": "m", "check": "stability", "lhs": 1.0, "rhs": 4.0, "holds": True, "holds_rank_rd": True,
             "ratio": 0.25, "affinity": 0.5, "zeta_squared": 0.5},
            {"method": "m", "check": "stability", "lhs": 2.0, "rhs": 1.0, "holds": False, "holds_rank_rd": True,
             "ratio": 2.0, "affinity": 0.9, "zeta_squared": 0.1},
        ],
        columns=[c for c in BOUND_COLUMNS if c in {"method", "check", "lhs", "rhs", "holds", "holds_rank_rd",
                                                    "ratio", "affinity", "zeta_squared"}],
    )
    summary = summarize_bounds(rows).iloc[0]
    assert summary["hold_rate"] == 0.5 and summary["hold_rate_rank_rd"] == 1.0
    assert summary["max_ratio"] == 2.0 and summary["median_ratio"] == pytest.approx(1.125)
    assert summary["median_log10_slack"] == pytest.approx((0.60206 - 0.30103) / 2, abs=1e-4)
