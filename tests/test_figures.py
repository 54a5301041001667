"""The app's Plotly figure builders: pure functions from tidy tables to figures (no Streamlit)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from nufilt import figures

ORDER = ["a", "b", "c"]


def accuracy_table(methods=("nufilt", "opcm"), steps=2) -> pd.DataFrame:
    rows = []
    for m, method in enumerate(methods):
        for step in range(1, steps + 1):
            for i, task in enumerate(ORDER[:step]):
                rows.append({"method": method, "step": step, "task": task, "accuracy": 50.0 + 10 * i + step + m})
    return pd.DataFrame(rows)


def test_accuracy_matrices_one_lower_triangular_heatmap_per_method():
    fig = figures.accuracy_matrices(accuracy_table(), ORDER)
    assert isinstance(fig, go.Figure)
    assert [trace.type for trace in fig.data] == ["heatmap", "heatmap"]
    z = np.asarray(fig.data[0].z, dtype=float)
    assert z.shape == (3, 3)  # every step of the order, even those not merged yet
    assert z[0, 0] == 51.0 and z[1, 1] == 62.0 and math.isnan(z[0, 1]) and np.isnan(z[2]).all()
    assert fig.data[0].zmin == 0 and fig.data[0].zmax == 100
    assert "task %{x}" in fig.data[0].hovertemplate
    assert fig.data[0].text[0][1] == ""  # no label in unseen cells
    # every task has its label on every panel (narrow panels used to show every other one)
    assert [list(fig.layout[axis].tickvals) for axis in ("xaxis", "xaxis2")] == [list(ORDER)] * 2


def test_task_lines_and_acc_bwt_lines_have_one_trace_per_task_and_method():
    lines = figures.task_accuracy_lines(accuracy_table(), ORDER)
    assert len(lines.data) == 4  # 2 methods x 2 tasks seen (a, b)
    metrics = pd.DataFrame({"method": ["nufilt", "nufilt", "opcm"], "step": [1, 2, 1], "acc": [80, 75, 70],
                            "bwt": [0, -2, 0]})
    fig = figures.acc_bwt_lines(metrics)
    assert len(fig.data) == 4  # ACC and BWT panels per method
    assert fig.data[0].line.color == figures.method_color("nufilt")
    assert fig.data[0].line.color != figures.method_color("opcm")


def test_removed_energy_and_lora_loss_show_only_the_chosen_step():
    key0, key1 = "encoder.layers.0.self_attn.q_proj.weight", "encoder.layers.1.mlp.fc1.weight"
    layers = pd.DataFrame({"method": "nufilt", "step": [2, 2, 3], "layer": [key0, key1, key0],
                           "kind": "attention", "removed_energy": [0.1, 0.4, 0.2]})
    bars = figures.removed_energy_bars(layers, 2)
    assert list(bars.data[0].y) == [0.1, 0.4]
    assert list(bars.data[0].x) == ["block 0 · q_proj", "block 1 · fc1"]  # short labels, full name on hover
    assert list(bars.data[0].customdata) == [key0, key1] and "%{customdata}" in bars.data[0].hovertemplate
    curves = pd.DataFrame({"method": "nufilt", "step": 2, "layer": [key0] * 3 + [key1] * 3,
                           "iteration": [0, 1, 2] * 2, "loss": [30.0, 2.0, 1.0, 5.0, 4.0, 3.5]})
    fig = figures.lora_loss_curves(curves, 2)
    # one trace per layer kind (solid attention, dashed MLP) in a legend; log axis over >= a decade
    assert [trace.name for trace in fig.data] == ["attention layers", "mlp layers"]
    assert [trace.line.dash for trace in fig.data] == ["solid", "dash"] and fig.layout.yaxis.type == "log"
    assert fig.layout.yaxis.dtick == 1  # one labelled tick per decade: no overlapping 0.2 / 2 labels
    assert list(fig.data[0].y) == [30.0, 2.0, 1.0, None] and list(fig.data[1].customdata)[0] == "block 1 · fc1"
    narrow = figures.lora_loss_curves(curves.assign(loss=[3.0, 2.0, 1.0, 2.5, 2.0, 1.5]), 2)
    assert narrow.layout.yaxis.type != "log"  # less than a decade: a linear axis reads better
    empty = figures.lora_loss_curves(curves, 1)
    assert not empty.data and "no LoRA fit" in empty.layout.annotations[0].text


def test_every_task_is_in_the_legend_and_methods_and_tasks_use_separate_colours():
    order = [f"task{i}" for i in range(8)]
    accuracy = pd.DataFrame([{"method": m, "step": t, "task": order[i], "accuracy": 50.0}
                             for m in ("nufilt", "opcm") for t in range(1, 9) for i in range(t)])
    fig = figures.task_accuracy_lines(accuracy, order)
    shown = [trace.name for trace in fig.data if trace.showlegend]
    assert shown == order and fig.layout.legend.orientation == "h"
    task_colors = {trace.line.color for trace in fig.data}
    method_colors = {figures.method_color(m) for m in [*figures.METHOD_COLORS]}
    assert not task_colors & method_colors
    assert len(set(figures.METHOD_COLORS.values())) == len(figures.METHOD_COLORS)  # one colour per method


def test_affinity_heatmaps_and_ecdf_carry_tasks_layers_and_the_baseline():
    matrix = pd.DataFrame([[0.9, 0.1], [0.2, 0.8]], index=["a", "b"], columns=["a", "b"])
    fig = figures.affinity_heatmaps({"mean": matrix, "p90": matrix}, baseline=0.06)
    assert len(fig.data) == 2 and "0.060" in fig.layout.title.text
    assert fig.data[0].zmin == 0 and fig.data[0].zmax == 1
    ecdf = pd.DataFrame({"pair": ["a -> a"] * 2, "layer": ["l0", "l1"], "affinity": [0.5, 0.9],
                         "ecdf": [0.5, 1.0], "baseline": [0.0625, 0.0156]})
    fig = figures.affinity_ecdf_figure(ecdf)
    assert [trace.name for trace in fig.data] == ["a -> a", "random subspace (r_v / d_in)"]
    assert list(fig.data[0].customdata[:, 0]) == ["l0", "l1"]
    assert "layer %{customdata[0]}" in fig.data[0].hovertemplate
    assert list(fig.data[1].x) == [0.0156, 0.0625]  # the baseline ECDF, sorted


def test_stability_rank_and_paper_figures():
    per_step = pd.DataFrame({"method": "nufilt", "step": [1, 2], "stability": [float("nan"), 0.2],
                             "plasticity": [0.1, 0.3], "harmonic": [float("nan"), 0.24]})
    assert len(figures.stability_plasticity_lines(per_step).data) == 3
    summary = pd.DataFrame({"method": ["nufilt"], "stability": [0.2], "plasticity": [0.3], "harmonic": [0.24]})
    assert len(figures.stability_plasticity_summary(summary).data) == 3
    sweep = pd.DataFrame({"value": [8, 0, 4], "acc_mean": [70, 60, 65], "acc_std": [1.0, 0, 0],
                          "bwt_mean": [-1, -5, -3], "bwt_std": [0.5, 0, 0]})
    fig = figures.rank_sweep_curves(sweep, "r_p", current=4)
    assert list(fig.data[0].x) == [0, 4, 8]  # sorted by rank
    comparison = pd.DataFrame({"method": ["nufilt", "nufilt"], "source": ["paper", "this run"], "acc": [83.6, 70.0],
                               "acc_std": [0.2, None], "bwt": [-2.7, -1.0], "bwt_std": [0.7, None]})
    fig = figures.paper_comparison_bars(comparison)
    assert {trace.name for trace in fig.data} == {"paper", "this run"}


@pytest.mark.parametrize("builder", [
    lambda: figures.accuracy_matrices(pd.DataFrame(columns=["method", "step", "task", "accuracy"]), ORDER),
    lambda: figures.acc_bwt_lines(pd.DataFrame(columns=["method", "step", "acc", "bwt"])),
    lambda: figures.stability_plasticity_lines(
        pd.DataFrame(columns=["method", "step", "stability", "plasticity", "harmonic"])),
    lambda: figures.rank_sweep_curves(pd.DataFrame(columns=["value", "acc_mean", "bwt_mean"]), "r_l"),
    lambda: figures.affinity_heatmaps({}),
])
def test_empty_tables_give_a_titled_placeholder_not_an_error(builder):
    fig = builder()
    assert not fig.data and fig.layout.title.text and fig.layout.annotations


def test_a_table_without_the_needed_columns_is_a_clear_error():
    with pytest.raises(ValueError, match="missing \\['accuracy'\\]"):
        figures.accuracy_matrices(pd.DataFrame(columns=["method", "step", "task"]), ORDER)


def test_builders_do_not_modify_their_input():
    table = accuracy_table()
    copy = table.copy()
    figures.accuracy_matrices(table, ORDER)
    figures.task_accuracy_lines(table, ORDER)
    pd.testing.assert_frame_equal(table, copy)


# ---------------------------------------------------------------- live step geometry


def step_geometry_table(methods=("nufilt", "task_arithmetic"), steps=2, data=True) -> pd.DataFrame:
    """Two layers per seen task and step; affinity = step / 10 + task index / 100 (+ layer / 1000)."""
    order = ["a", "b", "c"]
    rows = []
    for method in methods:
        for step in range(1, steps + 1):
            for i, task in enumerate(order[:step]):
                for layer in range(2):
                    value = step / 10 + i / 100 + layer / 1000
                    rows.append({"method": method, "step": step, "task": task, "new_task": order[step - 1],
                                 "layer": f"l{layer}", "update_affinity": value if data else math.nan,
                                 "merged_affinity": value / 2 if data else math.nan,
                                 "update_vector_affinity": value, "baseline": 0.05})
    return pd.DataFrame(rows)


def test_step_matrices_average_layers_and_leave_unseen_tasks_empty():
    matrices = figures.step_matrices(step_geometry_table(), "update_affinity", ["a", "b", "c"])
    assert list(matrices) == ["nufilt", "task_arithmetic"]
    matrix = matrices["nufilt"]
    assert list(matrix.columns) == [1, 2] and list(matrix.index) == ["a", "b", "c"]
    assert matrix.loc["b", 2] == pytest.approx(0.2 + 0.01 + 0.0005)
    assert math.isnan(matrix.loc["b", 1]) and matrix.loc["c"].isna().all()
    with pytest.raises(ValueError, match="value must be one of"):
        figures.step_matrices(step_geometry_table(), "accuracy", ["a", "b", "c"])


def test_step_heatmaps_grow_a_column_per_step_on_one_colour_scale():
    for steps in (1, 2, 3):
        fig = figures.step_geometry_heatmaps(step_geometry_table(steps=steps), "merged_affinity", ["a", "b", "c"])
        assert len(fig.data) == 2
        assert all(list(trace.x) == [f"step {s}" for s in range(1, steps + 1)] for trace in fig.data)
        assert all((trace.zmin, trace.zmax) == (0, 1) for trace in fig.data)
    empty = figures.step_geometry_heatmaps(step_geometry_table().iloc[:0], "update_affinity", ["a", "b", "c"])
    assert not empty.data and "merge a task" in empty.layout.annotations[0].text


def test_step_ecdf_has_one_line_per_method_and_seen_task_and_marks_the_new_one():
    fig = figures.step_geometry_ecdf(step_geometry_table(), 2)
    assert len(fig.data) == 2 * 2
    new = [trace for trace in fig.data if trace.name.endswith("(new)")]
    assert len(new) == 2 and all(trace.line.dash == "solid" for trace in new)
    assert all(list(trace.y) == [0.5, 1.0] for trace in fig.data)  # two layers
    assert not figures.step_geometry_ecdf(step_geometry_table(data=False), 2).data  # no data: nothing drawn


def test_update_affinity_lines_show_old_and_new_or_the_data_free_view():
    from nufilt.analysis.step_geometry import summarize_geometry

    summary = summarize_geometry(step_geometry_table())
    fig = figures.update_affinity_lines(summary)
    assert len(fig.data) == 4 and {len(trace.x) for trace in fig.data} == {2}
    free = figures.update_affinity_lines(summarize_geometry(step_geometry_table(data=False)), data=False)
    assert len(free.data) == 2 and "data-free" in free.layout.title.text
    assert all(not any(math.isnan(v) for v in trace.y) for trace in free.data)


def test_step_heatmaps_animate_the_steps_with_a_slider_and_a_play_button():
    fig = figures.step_geometry_heatmaps(step_geometry_table(steps=3), "update_affinity", ["a", "b", "c"])
    assert [frame.name for frame in fig.frames] == ["1", "2", "3"]
    for step, frame in enumerate(fig.frames, start=1):
        assert list(frame.traces) == [0, 1]  # both methods' heatmaps move together
        z = np.asarray(frame.data[0].z, dtype=float)
        assert np.isnan(z[:, step:]).all()  # later steps blank
        assert np.array_equal(z[:, :step], np.asarray(fig.data[0].z, dtype=float)[:, :step], equal_nan=True)
    slider = fig.layout.sliders[0]
    assert [s.label for s in slider.steps] == ["1", "2", "3"] and slider.active == 2
    assert all(s.method == "animate" and list(s.args[0]) == [s.label] for s in slider.steps)
    assert [b.label for b in fig.layout.updatemenus[0].buttons] == ["▶ Play", "❚❚ Pause"]
    assert fig.layout.updatemenus[0].buttons[0].args[0] is None  # play: every frame in order
    assert not np.isnan(np.asarray(fig.data[0].z, dtype=float)[0]).any()  # as drawn: every step
    single = figures.step_geometry_heatmaps(step_geometry_table(steps=1), "update_affinity", ["a", "b", "c"])
    assert not single.frames and not single.layout.sliders  # nothing to animate
    still = figures.step_geometry_heatmaps(step_geometry_table(steps=3), "update_affinity", ORDER, animate=False)
    assert not still.frames


def test_step_ecdf_keeps_only_the_chosen_tasks():
    fig = figures.step_geometry_ecdf(step_geometry_table(), 2, tasks=["b"])
    assert sorted(trace.name for trace in fig.data) == ["nufilt: b (new)", "task_arithmetic: b (new)"]
    none = figures.step_geometry_ecdf(step_geometry_table(), 2, tasks=[])
    assert not none.data and "choose a task" in none.layout.annotations[0].text


def step_table(column: str) -> pd.DataFrame:
    """Steps 2-3, two layers, three indices; value = 10 step + index + layer / 10."""
    return pd.DataFrame([{"method": method, "step": step, "new_task": ORDER[step - 1], "layer": f"l{layer}",
                          "index": j, column: 10 * step + j + layer / 10}
                         for method in ("nufilt", "opcm") for step in (2, 3) for layer in range(2)
                         for j in range(1, 4)])


@pytest.mark.parametrize("builder, column", [(figures.step_angles_figure, "angle_degrees"),
                                             (figures.step_spectra_figure, "value")])
def test_angle_and_spectrum_panels_show_the_chosen_step_and_the_mean_per_step(builder, column):
    fig = builder(step_table(column), 3)
    at_step = [t for t in fig.data if t.xaxis == "x"]
    per_step = [t for t in fig.data if t.xaxis == "x2"]
    assert len(at_step) == len(per_step) == 2  # one line per method in each panel
    assert list(at_step[0].x) == [1, 2, 3] and list(at_step[0].y) == pytest.approx([31.05, 32.05, 33.05])
    assert list(at_step[0].error_y.array) == pytest.approx([0.05] * 3)  # up to the max over layers
    assert list(per_step[0].x) == [2, 3] and list(per_step[0].y) == pytest.approx([22.05, 32.05])
    before = builder(step_table(column), 1)  # no angles at step 1: only the per-step panel
    assert all(t.xaxis == "x2" for t in before.data)
    empty = builder(step_table(column).iloc[:0], 1)
    assert not empty.data and empty.layout.title.text and empty.layout.annotations[0].text
