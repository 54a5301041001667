"""Stability and plasticity losses (Eq. 3-4) on constructed states and data."""

import math

import pandas as pd
import pytest
import torch

from nufilt.analysis.activations import layer_statistics
from nufilt.analysis.stability import (
    LOSS_COLUMNS,
    harmonic_mean,
    quadratic_loss,
    step_losses,
    summarize_losses,
)

KEYS = ["encoder.layers.0.self_attn.q_proj.weight", "encoder.layers.0.mlp.fc1.weight"]


def _state(g: torch.Generator) -> dict[str, torch.Tensor]:
    return {KEYS[0]: torch.randn(6, 6, generator=g), KEYS[1]: torch.randn(12, 6, generator=g), "bias": torch.zeros(3)}


def _data(g: torch.Generator, n: int = 50) -> tuple[torch.Tensor, dict]:
    x = torch.randn(n, 6, generator=g, dtype=torch.float64) + 0.5
    return x, {key: layer_statistics(x.mT @ x / n, n) for key in KEYS}


def test_quadratic_loss_is_the_mean_squared_output_change():
    g = torch.Generator().manual_seed(0)
    x, _ = _data(g)
    delta = torch.randn(3, 4, 6, generator=g, dtype=torch.float64)
    direct = (x @ delta.mT).pow(2).sum(-1).mean(-1)  # E_x ‖Δ x‖² per layer
    torch.testing.assert_close(quadratic_loss(delta, x.mT @ x / len(x)), direct)


def test_losses_are_zero_when_merged_equals_the_reference_model():
    g = torch.Generator().manual_seed(1)
    pretrained, previous, task = _state(g), _state(g), _state(g)
    old_x, old = _data(g)
    _, new = _data(g)
    # merged == θ̄_{t−1}: nothing moved on old data
    rows = step_losses(previous, previous, task, [old], new, KEYS)
    assert [row["stability"] for row in rows] == [0.0, 0.0]
    assert all(row["plasticity"] > 0 for row in rows)
    # merged == θt: the individual model's outputs on the new task exactly
    rows = step_losses(previous, task, task, [old], new, KEYS)
    assert [row["plasticity"] for row in rows] == [0.0, 0.0]
    expected = (old_x @ (task[KEYS[0]] - previous[KEYS[0]]).double().mT).pow(2).sum(-1).mean()
    assert rows[0]["stability"] == pytest.approx(float(expected))
    assert [row["kind"] for row in rows] == ["attention", "mlp"]
    # step 1: no old task, stability undefined
    assert all(math.isnan(row["stability"]) for row in step_losses(pretrained, task, task, [], new, KEYS))


def test_old_tasks_are_an_equal_mixture():
    g = torch.Generator().manual_seed(2)
    previous, merged = _state(g), _state(g)
    xa, a = _data(g, 40)
    xb, b = _data(g, 40)
    rows = step_losses(previous, merged, merged, [a, b], a, KEYS[:1])
    both = torch.cat([xa, xb])
    delta = (merged[KEYS[0]] - previous[KEYS[0]]).double()
    assert rows[0]["stability"] == pytest.approx(float((both @ delta.mT).pow(2).sum(-1).mean()))


def test_harmonic_mean_and_summaries():
    assert harmonic_mean(1.0, 1.0) == 1.0
    assert harmonic_mean(1.0, 3.0) == pytest.approx(1.5)
    assert harmonic_mean(0.0, 5.0) == 0.0 and harmonic_mean(0.0, 0.0) == 0.0
    assert math.isnan(harmonic_mean(float("nan"), 1.0))

    rows = []
    for method, scale in (("a", 1.0), ("b", 2.0)):
        for step in (1, 2, 3):
            for layer, factor in (("l0", 1.0), ("l1", 3.0)):
                stability = float("nan") if step == 1 else scale * factor
                rows.append({"method": method, "step": step, "task": f"t{step}", "layer": layer, "block": 0,
                             "kind": "mlp", "stability": stability, "plasticity": scale * step})
    per_step, per_method = summarize_losses(pd.DataFrame(rows, columns=list(LOSS_COLUMNS)))
    assert len(per_step) == 6 and math.isnan(per_step.iloc[0]["harmonic"])
    a = per_method.set_index("method").loc["a"]
    assert a["stability"] == pytest.approx(2.0) and a["plasticity"] == pytest.approx(2.5) and a["steps"] == 2
    assert a["harmonic"] == pytest.approx(2 * 2.0 * 2.5 / 4.5)
    assert a["harmonic_mean_of_steps"] == pytest.approx((2.0 + 2 * 2 * 3 / 5) / 2)
    assert per_method.set_index("method").loc["b", "stability"] == pytest.approx(4.0)
