"""Pure Plotly figure builders for the app: tidy DataFrames in, `plotly.graph_objects.Figure` out.

No Streamlit and no tensors here; every builder takes the table it plots (the same table the app
offers as CSV) and returns a new figure with a title, axis labels and hover text that names what a
point is (task, layer, method) and its value. Method colours are stable across figures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from .analysis.layers import layer_kind
from .methods import ABLATIONS, METHODS

# one colour per method label, the same in every figure: NUFILT red and its ablations in reds,
# the baselines in distinct hues; tasks use another palette (TASK_COLORS), never these
_FIXED = {
    "nufilt": "#d62728", "opcm": "#1f77b4", "task_arithmetic": "#ff7f0e", "weight_average": "#7f7f7f",
    "ties": "#2ca02c", "magmax": "#9467bd", "wudi": "#8c564b", "iso_c": "#17becf", "tsv_m": "#bcbd22",
    "knots_ties": "#e377c2", "naive": "#fcae91", "null_space_only": "#a50f15", "no_filter": "#fb6a4a",
    "lora_only": "#67000d",
}
_SPARE = qualitative.Set2
METHOD_COLORS = {label: _FIXED.get(label, _SPARE[i % len(_SPARE)]) for i, label in enumerate([*METHODS, *ABLATIONS])}
TASK_COLORS = qualitative.Alphabet  # 26 colours, for per-task lines


def short_layer(key: str) -> str:
    """"encoder.layers.2.mlp.fc1.weight" -> "block 2 · fc1" (the block and the layer's own name)."""
    parts = [p for p in key.split(".") if p not in ("weight", "bias", "in_proj_weight")]
    block = next((p for p in parts if p.isdigit()), None)
    name = parts[-1] if parts else key
    if key.endswith("in_proj_weight"):
        name = "in_proj"
    return f"block {block} · {name}" if block is not None else name
ACCURACY_SCALE = "Viridis"
AFFINITY_SCALE = "Blues"


def method_color(label: str) -> str:
    return METHOD_COLORS.get(label, "#444444")


def _require(table: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"{what} needs columns {list(columns)}; missing {missing}")


def _empty(title: str, message: str) -> go.Figure:
    fig = go.Figure()
    fig.update_layout(title=title, xaxis_visible=False, yaxis_visible=False, height=260)
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    return fig


def _labels(values: np.ndarray, fmt: str) -> list[list[str]]:
    """Cell labels for a heatmap: formatted numbers, empty for NaN."""
    return [["" if np.isnan(v) else fmt.format(v) for v in row] for row in np.atleast_2d(values)]


def _methods(table: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(table["method"]))


# ---------------------------------------------------------------- merge page


def accuracy_matrices(accuracy: pd.DataFrame, order: Sequence[str]) -> go.Figure:
    """One lower-triangular heatmap per method: accuracy on task i (x) after step t (y).

    `accuracy`: method, step, task, accuracy (percent). Cells of unseen tasks stay empty.
    """
    title = "Accuracy matrix a_i(θ̄_t)"
    _require(accuracy, ["method", "step", "task", "accuracy"], "accuracy_matrices")
    if accuracy.empty:
        return _empty(title, "no merge step yet")
    methods = _methods(accuracy)
    steps = list(range(1, len(order) + 1))
    fig = make_subplots(rows=1, cols=len(methods), subplot_titles=methods, shared_yaxes=True,
                        horizontal_spacing=0.03)
    for col, method in enumerate(methods, start=1):
        grid = (
            accuracy[accuracy["method"] == method]
            .pivot_table(index="step", columns="task", values="accuracy", aggfunc="last")
            .reindex(index=steps, columns=list(order))
        )
        text = _labels(grid.to_numpy(dtype=float), "{:.0f}")
        fig.add_trace(
            go.Heatmap(
                z=grid.to_numpy(), x=list(order), y=steps, zmin=0, zmax=100, colorscale=ACCURACY_SCALE,
                text=text, texttemplate="%{text}" if len(order) <= 14 else None, showscale=col == len(methods),
                colorbar={"title": "%"}, name=method,
                hovertemplate=f"{method}<br>after step %{{y}}<br>task %{{x}}: %{{z:.1f}}%<extra></extra>",
            ),
            row=1, col=col,
        )
        # every task labelled (Plotly drops every other category label when the panels are narrow)
        fig.update_xaxes(tickangle=-45, tickmode="array", tickvals=list(order), tickfont={"size": 10}, row=1, col=col)
    fig.update_yaxes(title_text="step t", autorange="reversed", dtick=1, row=1, col=1)
    fig.update_layout(title=title, height=260 + 18 * len(order), margin={"t": 70})
    return fig


def task_accuracy_lines(accuracy: pd.DataFrame, order: Sequence[str]) -> go.Figure:
    """Accuracy of every seen task after each step, one panel per method, one line per task."""
    title = "Per-task accuracy after each step"
    _require(accuracy, ["method", "step", "task", "accuracy"], "task_accuracy_lines")
    if accuracy.empty:
        return _empty(title, "no merge step yet")
    methods = _methods(accuracy)
    fig = make_subplots(rows=1, cols=len(methods), subplot_titles=methods, shared_yaxes=True,
                        horizontal_spacing=0.03)
    palette = TASK_COLORS
    in_legend: set[str] = set()
    for col, method in enumerate(methods, start=1):
        rows = accuracy[accuracy["method"] == method]
        for i, task in enumerate(order):
            line = rows[rows["task"] == task].sort_values("step")
            if line.empty:
                continue
            fig.add_trace(
                go.Scatter(
                    x=line["step"], y=line["accuracy"], mode="lines+markers", name=task, legendgroup=task,
                    showlegend=task not in in_legend, line={"color": palette[i % len(palette)]},
                    hovertemplate=f"{method}<br>task {task}<br>step %{{x}}: %{{y:.1f}}%<extra></extra>",
                ),
                row=1, col=col,
            )
            in_legend.add(task)
        fig.update_xaxes(title_text="step t", dtick=1, range=[0.5, len(order) + 0.5], row=1, col=col)
    fig.update_yaxes(title_text="accuracy (%)", row=1, col=1)
    # every task in the legend, in rows under the plot (a side legend was cut at the plot height)
    fig.update_layout(title=title, height=400 + 22 * ((len(order) + 3) // 4), legend_title_text="task",
                      legend={"orientation": "h", "yanchor": "top", "y": -0.22, "x": 0})
    return fig


def acc_bwt_lines(metrics: pd.DataFrame) -> go.Figure:
    """ACC and BWT of the merged model so far (steps 1..t), one line per method."""
    title = "ACC and BWT so far"
    _require(metrics, ["method", "step", "acc", "bwt"], "acc_bwt_lines")
    if metrics.empty:
        return _empty(title, "no merge step yet")
    fig = make_subplots(rows=1, cols=2, subplot_titles=["ACC (%) ↑", "BWT (%) ↑"])
    for method in _methods(metrics):
        rows = metrics[metrics["method"] == method].sort_values("step")
        for col, metric in enumerate(("acc", "bwt"), start=1):
            fig.add_trace(
                go.Scatter(
                    x=rows["step"], y=rows[metric], mode="lines+markers", name=method, legendgroup=method,
                    showlegend=col == 1, line={"color": method_color(method)},
                    hovertemplate=f"{method}<br>step %{{x}}<br>{metric.upper()} %{{y:.2f}}<extra></extra>",
                ),
                row=1, col=col,
            )
        fig.update_xaxes(title_text="step t", dtick=1)
    fig.add_hline(y=0, line_dash="dot", line_color="grey", row=1, col=2)
    fig.update_layout(title=title, height=360, legend_title_text="method")
    return fig


def removed_energy_bars(layers: pd.DataFrame, step: int) -> go.Figure:
    """Per layer at one step: the share of ‖τt‖² inside the top-r_p subspace of τ̄_{t−1}.

    That is what NUFILT's null-space filter removes from the new task vector. `layers`: method,
    step, layer, removed_energy (one row per filtered layer).
    """
    title = f"Energy removed by the filter, step {step}"
    _require(layers, ["method", "step", "layer", "removed_energy"], "removed_energy_bars")
    rows = layers[layers["step"] == step]
    if rows.empty:
        return _empty(title, f"nothing filtered at step {step} (step 1 merges τ1 as it is, or no NUFILT method)")
    fig = go.Figure()
    for method in _methods(rows):
        mine = rows[rows["method"] == method]
        fig.add_trace(
            go.Bar(
                x=[short_layer(key) for key in mine["layer"]], y=mine["removed_energy"], name=method,
                marker_color=method_color(method), customdata=mine["layer"].to_numpy(),
                hovertemplate=f"{method}<br>%{{customdata}}<br>removed energy %{{y:.3f}}<extra></extra>",
            )
        )
    fig.update_layout(
        title=title, barmode="group", height=380, yaxis={"title": "‖τt V Vᵀ‖² / ‖τt‖²", "range": [0, 1]},
        xaxis={"title": "layer", "tickangle": -45, "showticklabels": rows["layer"].nunique() <= 40},
        legend_title_text="method",
    )
    return fig


def lora_loss_curves(curves: pd.DataFrame, step: int) -> go.Figure:
    """NUFILT's LoRA objective (Eq. 16) over Adam iterations at one step: a line per layer.

    The layers of a method share one trace (lines separated by gaps), which keeps the figure
    light for models with many layers; hover names the layer.
    """
    title = f"LoRA loss (Eq. 16) during step {step}"
    _require(curves, ["method", "step", "layer", "iteration", "loss"], "lora_loss_curves")
    rows = curves[curves["step"] == step]
    if rows.empty:
        return _empty(title, f"no LoRA fit at step {step} (step 1, r_l = 0, or no NUFILT method)")
    methods = _methods(rows)
    fig = make_subplots(rows=1, cols=len(methods), subplot_titles=methods, shared_yaxes=True)
    kinds = {"attention": "solid", "mlp": "dash", "other": "dot"}
    for col, method in enumerate(methods, start=1):
        mine = rows[rows["method"] == method]
        for kind, dash in kinds.items():  # one trace per layer kind, its layers separated by gaps
            x, y, layer = [], [], []
            for name, line in mine.groupby("layer", sort=False):
                if layer_kind(name) != kind:
                    continue
                x += [*line["iteration"], None]
                y += [*line["loss"], None]
                layer += [short_layer(name)] * len(line) + [None]
            if not x:
                continue
            fig.add_trace(
                go.Scatter(
                    x=x, y=y, mode="lines", name=f"{kind} layers", legendgroup=kind, showlegend=col == 1,
                    line={"width": 1.2, "color": method_color(method), "dash": dash}, customdata=layer,
                    connectgaps=False,
                    hovertemplate=f"{method}<br>%{{customdata}}<br>iteration %{{x}}: %{{y:.4g}}<extra></extra>",
                ),
                row=1, col=col,
            )
        fig.update_xaxes(title_text="Adam iteration", row=1, col=col)
    low, high = float(rows["loss"].min()), float(rows["loss"].max())
    if low > 0 and high / low >= 10:  # log only over a decade or more, with one labelled tick per decade
        fig.update_yaxes(type="log", dtick=1, exponentformat="power")
    fig.update_yaxes(title_text="loss (Eq. 16)", row=1, col=1)
    fig.update_layout(title=title, height=360, legend_title_text="line style")
    return fig


# ---------------------------------------------------------------- geometry page


def affinity_heatmaps(matrices: Mapping[str, pd.DataFrame], baseline: float | None = None) -> go.Figure:
    """Data task (rows) x vector task (columns) affinity heatmaps side by side (e.g. mean and p90)."""
    title = "Subspace affinity A(V_d, V̂) (Eq. 5)" + (f" — random baseline ≈ {baseline:.3f}" if baseline else "")
    if not matrices:
        return _empty(title, "no affinity matrix")
    names = list(matrices)
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=names, shared_yaxes=True,
                        horizontal_spacing=0.04)
    for col, name in enumerate(names, start=1):
        matrix = matrices[name]
        values = matrix.to_numpy(dtype=float)
        fig.add_trace(
            go.Heatmap(
                z=values, x=list(matrix.columns), y=list(matrix.index), zmin=0, zmax=1,
                colorscale=AFFINITY_SCALE, showscale=col == len(names), colorbar={"title": "A"},
                text=_labels(values, "{:.2f}"), texttemplate="%{text}" if values.shape[0] <= 10 else None,
                hovertemplate=f"{name}<br>data task %{{y}}<br>vector task %{{x}}<br>affinity %{{z:.3f}}<extra></extra>",
            ),
            row=1, col=col,
        )
        fig.update_xaxes(title_text="task vector of", tickangle=-45, row=1, col=col)
    fig.update_yaxes(title_text="data of", autorange="reversed", row=1, col=1)
    size = len(next(iter(matrices.values())))
    fig.update_layout(title=title, height=300 + 22 * size)
    return fig


def affinity_ecdf_figure(ecdf: pd.DataFrame) -> go.Figure:
    """Layer-wise ECDF of affinity per (data task, vector task) pair, with the random baseline.

    `ecdf`: pair, layer, affinity, ecdf and baseline (r_v / d_in of that layer): the baseline is
    drawn as the ECDF of the per-layer random-subspace affinities (dashed).
    """
    title = "ECDF of per-layer affinity"
    _require(ecdf, ["pair", "layer", "affinity", "ecdf", "baseline"], "affinity_ecdf_figure")
    if ecdf.empty:
        return _empty(title, "choose at least one pair")
    fig = go.Figure()
    for pair in dict.fromkeys(ecdf["pair"]):
        rows = ecdf[ecdf["pair"] == pair]
        fig.add_trace(
            go.Scatter(
                x=rows["affinity"], y=rows["ecdf"], mode="lines+markers", line_shape="hv", name=pair,
                customdata=rows[["layer"]].to_numpy(),
                hovertemplate=f"{pair}<br>layer %{{customdata[0]}}<br>affinity %{{x:.3f}}<br>"
                "ECDF %{y:.2f}<extra></extra>",
            )
        )
    first = ecdf[ecdf["pair"] == ecdf["pair"].iloc[0]]
    baseline = np.sort(first["baseline"].to_numpy(dtype=float))
    fig.add_trace(
        go.Scatter(
            x=baseline, y=np.arange(1, baseline.size + 1) / baseline.size, mode="lines", line_shape="hv",
            name="random subspace (r_v / d_in)", line={"dash": "dash", "color": "grey"},
            hovertemplate="random baseline %{x:.3f}<extra></extra>",
        )
    )
    fig.update_layout(
        title=title, height=400, xaxis={"title": "affinity", "range": [0, 1]},
        yaxis={"title": "fraction of layers ≤ x", "range": [0, 1.02]}, legend_title_text="data → vector",
    )
    return fig


# ---------------------------------------------------------------- stability & plasticity


def stability_plasticity_lines(per_step: pd.DataFrame) -> go.Figure:
    """Stability loss (Eq. 3), plasticity loss (Eq. 4) and their harmonic mean per step and method."""
    title = "Stability, plasticity and their harmonic mean (lower is better)"
    _require(per_step, ["method", "step", "stability", "plasticity", "harmonic"], "stability_plasticity_lines")
    if per_step.empty:
        return _empty(title, "no merge step with losses yet")
    names = {"stability": "stability loss (Eq. 3)", "plasticity": "plasticity loss (Eq. 4)",
             "harmonic": "harmonic mean"}
    fig = make_subplots(rows=1, cols=3, subplot_titles=list(names.values()))
    for method in _methods(per_step):
        rows = per_step[per_step["method"] == method].sort_values("step")
        for col, column in enumerate(names, start=1):
            fig.add_trace(
                go.Scatter(
                    x=rows["step"], y=rows[column], mode="lines+markers", name=method, legendgroup=method,
                    showlegend=col == 1, line={"color": method_color(method)},
                    hovertemplate=f"{method}<br>step %{{x}}<br>{names[column]} %{{y:.4g}}<extra></extra>",
                ),
                row=1, col=col,
            )
    fig.update_xaxes(title_text="step t", dtick=1)
    fig.update_layout(title=title, height=380, legend_title_text="method")
    return fig


def stability_plasticity_summary(summary: pd.DataFrame) -> go.Figure:
    """Per method, over steps t ≥ 2: mean stability, mean plasticity and their harmonic mean."""
    title = "Mean over steps t ≥ 2"
    _require(summary, ["method", "stability", "plasticity", "harmonic"], "stability_plasticity_summary")
    if summary.empty:
        return _empty(title, "needs at least two merge steps")
    fig = go.Figure()
    for column, pattern in (("stability", ""), ("plasticity", "/"), ("harmonic", "x")):
        fig.add_trace(
            go.Bar(
                x=summary["method"], y=summary[column], name=column, marker_pattern_shape=pattern,
                marker_color=[method_color(m) for m in summary["method"]],
                hovertemplate=f"%{{x}}<br>{column} %{{y:.4g}}<extra></extra>",
            )
        )
    fig.update_layout(title=title, barmode="group", height=360, yaxis_title="loss", legend_title_text="quantity")
    return fig


# ---------------------------------------------------------------- ranks


def rank_sweep_curves(summary: pd.DataFrame, parameter: str, current: int | None = None) -> go.Figure:
    """ACC and BWT of NUFILT against one rank (paper Fig. 4); error bars: std over orders."""
    title = f"NUFILT rank sensitivity: {parameter}"
    _require(summary, ["value", "acc_mean", "bwt_mean"], "rank_sweep_curves")
    if summary.empty:
        return _empty(title, "no sweep point computed yet")
    rows = summary.sort_values("value")
    fig = make_subplots(rows=1, cols=2, subplot_titles=["ACC (%) ↑", "BWT (%) ↑"])
    for col, metric in enumerate(("acc", "bwt"), start=1):
        std = rows.get(f"{metric}_std")
        fig.add_trace(
            go.Scatter(
                x=rows["value"], y=rows[f"{metric}_mean"], mode="lines+markers", name=metric.upper(),
                error_y={"type": "data", "array": std.fillna(0).to_numpy()} if std is not None else None,
                line={"color": method_color("nufilt")},
                hovertemplate=f"{parameter} = %{{x}}<br>{metric.upper()} %{{y:.2f}}<extra></extra>",
            ),
            row=1, col=col,
        )
        if current is not None:
            fig.add_vline(x=current, line_dash="dot", line_color="grey", row=1, col=col)
    fig.update_xaxes(title_text=parameter)
    fig.update_layout(title=title, height=360, showlegend=False)
    return fig


# ---------------------------------------------------------------- paper comparison


def paper_comparison_bars(table: pd.DataFrame) -> go.Figure:
    """ACC and BWT of each method: the paper's number beside this run's (mean ± std where known).

    `table`: method, source ("paper" or "this run"), acc, acc_std, bwt, bwt_std.
    """
    title = "This run beside the paper"
    _require(table, ["method", "source", "acc", "bwt"], "paper_comparison_bars")
    if table.empty:
        return _empty(title, "nothing to compare yet")
    fig = make_subplots(rows=1, cols=2, subplot_titles=["ACC (%) ↑", "BWT (%) ↑"])
    styles = {"paper": {"opacity": 0.45, "marker_pattern_shape": "/"}, "this run": {"opacity": 1.0}}
    for source in dict.fromkeys(table["source"]):
        rows = table[table["source"] == source]
        for col, metric in enumerate(("acc", "bwt"), start=1):
            std = rows.get(f"{metric}_std")
            fig.add_trace(
                go.Bar(
                    x=rows["method"], y=rows[metric], name=source, legendgroup=source, showlegend=col == 1,
                    error_y={"type": "data", "array": std.fillna(0).to_numpy()} if std is not None else None,
                    marker_color=[method_color(m) for m in rows["method"]], **styles.get(source, {}),
                    hovertemplate=f"%{{x}} ({source})<br>{metric.upper()} %{{y:.1f}}<extra></extra>",
                ),
                row=1, col=col,
            )
    fig.update_xaxes(tickangle=-30)
    fig.update_layout(title=title, barmode="group", height=400, legend_title_text="source")
    return fig


STEP_VALUES = {
    "update_affinity": "update affinity A(V_d(i), V(Δt))",
    "merged_affinity": "merged affinity A(V_d(i), V(τ̄t))",
    "update_vector_affinity": "update vs task vector ‖V(Δt)ᵀV(τi)‖²/r_v (data-free)",
}


def step_matrices(geometry: pd.DataFrame, value: str, order: Sequence[str]) -> dict[str, pd.DataFrame]:
    """Per method, seen task (rows, in `order`) x step (columns) of `value` averaged over layers;
    NaN where a task is not seen yet. Only steps present in `geometry` become columns."""
    if value not in STEP_VALUES:
        raise ValueError(f"value must be one of {tuple(STEP_VALUES)}, got {value!r}")
    _require(geometry, ["method", "step", "task", value], "step geometry")
    out = {}
    for method in _methods(geometry):
        mine = geometry[geometry["method"] == method]
        matrix = mine.groupby(["task", "step"])[value].mean().unstack("step")
        steps = sorted(int(s) for s in matrix.columns)
        out[method] = matrix.reindex(index=list(order), columns=steps)
    return out


def _play_controls(steps: Sequence[int]) -> dict:
    """A Plotly slider over `steps` (frames named by step) and, under it (a narrow plot has no room
    beside it), play/pause buttons that animate them."""
    still = {"mode": "immediate", "frame": {"duration": 0, "redraw": True}, "transition": {"duration": 0}}
    slider = {
        "active": len(steps) - 1, "currentvalue": {"prefix": "up to step "}, "pad": {"t": 70}, "x": 0.0,
        "len": 1.0, "steps": [{"label": str(s), "method": "animate", "args": [[str(s)], still]} for s in steps],
    }
    play = {"frame": {"duration": 800, "redraw": True}, "transition": {"duration": 0}, "fromcurrent": False}
    buttons = {
        "type": "buttons", "direction": "left", "showactive": False, "x": 0.0, "xanchor": "left", "y": 0,
        "yanchor": "top", "pad": {"t": 150, "r": 10},
        "buttons": [{"label": "▶ Play", "method": "animate", "args": [None, play]},
                    {"label": "❚❚ Pause", "method": "animate", "args": [[None], still]}],
    }
    return {"sliders": [slider], "updatemenus": [buttons]}


def step_geometry_heatmaps(geometry: pd.DataFrame, value: str, order: Sequence[str], animate: bool = True) -> go.Figure:
    """Seen task x step heatmaps of one per-step geometry value, one per method, on one colour scale
    (0..1): a new column per merge step. Low cells above the diagonal's row = transparency.

    With `animate` and two steps or more, the figure also has one frame per step (frame "k" shows
    steps 1..k, later columns blank), a step slider and a play button; the figure as drawn shows
    every step."""
    title = STEP_VALUES.get(value, value) + ", mean over layers"
    matrices = step_matrices(geometry, value, order)
    if not matrices:
        return _empty(title, "merge a task to see where its update lands")
    names = list(matrices)
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=names, shared_yaxes=True, horizontal_spacing=0.04)
    for col, name in enumerate(names, start=1):
        matrix = matrices[name]
        values = matrix.to_numpy(dtype=float)
        fig.add_trace(
            go.Heatmap(
                z=values, x=[f"step {s}" for s in matrix.columns], y=list(matrix.index), zmin=0, zmax=1,
                colorscale=AFFINITY_SCALE, showscale=col == len(names), colorbar={"title": "A"},
                text=_labels(values, "{:.2f}"), texttemplate="%{text}" if values.shape[0] <= 10 else None,
                hovertemplate=f"{name}<br>task %{{y}}<br>%{{x}}<br>%{{z:.3f}}<extra></extra>",
            ),
            row=1, col=col,
        )
        fig.update_xaxes(title_text="merge step", row=1, col=col)
    fig.update_yaxes(title_text="seen task", autorange="reversed", row=1, col=1)
    fig.update_layout(title=title, height=300 + 22 * len(order))
    steps = sorted({int(s) for matrix in matrices.values() for s in matrix.columns})
    if animate and len(steps) > 1:
        frames = []
        for step in steps:
            data = []
            for matrix in matrices.values():
                upto = matrix.to_numpy(dtype=float, copy=True)  # later steps blanked
                upto[:, np.asarray(matrix.columns) > step] = np.nan
                data.append(go.Heatmap(z=upto, text=_labels(upto, "{:.2f}")))
            frames.append(go.Frame(data=data, traces=list(range(len(names))), name=str(step)))
        fig.frames = frames
        fig.update_layout(**_play_controls(steps), height=460 + 22 * len(order), margin={"b": 200})
    return fig


def step_geometry_ecdf(geometry: pd.DataFrame, step: int, value: str = "update_affinity",
                       tasks: Sequence[str] | None = None) -> go.Figure:
    """ECDF over layers of `value` at one step, one line per (method, seen task): old tasks vs the new
    one; `tasks` keeps only those seen tasks (None: all)."""
    title = f"{STEP_VALUES.get(value, value)} over layers at step {step}"
    _require(geometry, ["method", "step", "task", "new_task", value], "step geometry")
    part = geometry[(geometry["step"] == step) & geometry[value].notna()]
    if tasks is not None:
        part = part[part["task"].isin(list(tasks))]
    if part.empty:
        return _empty(title, "no geometry for this step" if tasks is None or len(tasks) else "choose a task")
    fig = go.Figure()
    for (method, task), rows in part.groupby(["method", "task"], sort=False):
        values = np.sort(rows[value].to_numpy(dtype=float))
        new = bool((rows["new_task"] == task).all())
        fig.add_trace(go.Scatter(
            x=values, y=np.arange(1, len(values) + 1) / len(values), mode="lines", line_shape="hv",
            name=f"{method}: {task}{' (new)' if new else ''}", line={"color": method_color(method),
                                                                      "dash": "solid" if new else "dot"},
            hovertemplate=f"{method}<br>task {task}<br>affinity %{{x:.3f}}<br>ECDF %{{y:.2f}}<extra></extra>",
        ))
    fig.add_vline(x=float(part["baseline"].mean()), line_dash="dash", line_color="grey",
                  annotation_text="random baseline")
    fig.update_layout(title=title, xaxis_title="affinity", yaxis_title="share of layers", xaxis_range=[0, 1],
                      height=380)
    return fig


def _per_step_panels(table: pd.DataFrame, column: str, step: int, title: str, left: str, right: str,
                     y_title: str, empty: str, log: bool = False) -> go.Figure:
    """Left: `column` by index at `step` (mean over layers, bars: min..max); right: its mean per step."""
    _require(table, ["method", "step", "layer", "index", column], title)
    if table.empty:
        return _empty(title, empty)
    fig = make_subplots(rows=1, cols=2, subplot_titles=[left, right], horizontal_spacing=0.1)
    for method in _methods(table):
        mine = table[table["method"] == method]
        at = mine[mine["step"] == step].groupby("index")[column].agg(["mean", "min", "max"])
        color = method_color(method)
        if len(at):
            fig.add_trace(go.Scatter(
                x=list(at.index), y=at["mean"], mode="lines+markers", name=method, legendgroup=method,
                line={"color": color},
                error_y={"type": "data", "symmetric": False, "array": (at["max"] - at["mean"]).to_numpy(),
                         "arrayminus": (at["mean"] - at["min"]).to_numpy(), "thickness": 1},
                hovertemplate=f"{method}<br>step {step}, index %{{x}}<br>mean over layers %{{y:.4g}}<extra></extra>",
            ), row=1, col=1)
        per_step = mine.groupby("step")[column].mean()
        fig.add_trace(go.Scatter(
            x=list(per_step.index), y=per_step.to_numpy(), mode="lines+markers", name=method, legendgroup=method,
            showlegend=not len(at), line={"color": color, "dash": "dot"},
            hovertemplate=f"{method}<br>step %{{x}}<br>mean %{{y:.4g}}<extra></extra>",
        ), row=1, col=2)
    fig.add_vline(x=step, line_dash="dot", line_color="grey", row=1, col=2)
    fig.update_xaxes(title_text="index", dtick=1, row=1, col=1)
    fig.update_xaxes(title_text="step t", dtick=1, row=1, col=2)
    fig.update_yaxes(title_text=y_title, type="log" if log else "linear")
    fig.update_layout(title=title, height=360, legend_title_text="method")
    return fig


def step_angles_figure(angles: pd.DataFrame, step: int) -> go.Figure:
    """Principal angles between the new task vector's top-r_v subspace V(τt) and the top-r_p
    subspace of τ̄_{t−1} (`step_geometry` ANGLE_COLUMNS): at `step` by index, and their mean per
    step. 90° = the new task's directions lie outside what the merge already holds."""
    return _per_step_panels(angles, "angle_degrees", step, "Principal angles: V(τt) vs top-r_p of τ̄_{t−1}",
                            f"at step {step} (mean over layers, bars min..max)", "mean over angles and layers",
                            "degrees", "principal angles start at step 2 (step 1 has no earlier merge)")


def step_spectra_figure(spectra: pd.DataFrame, step: int) -> go.Figure:
    """Top singular values of the merged task vector τ̄t (`step_geometry` SPECTRUM_COLUMNS): at
    `step` by index, and their mean per step."""
    return _per_step_panels(spectra, "value", step, "Spectrum of the merged task vector τ̄t",
                            f"top singular values at step {step} (mean over layers, bars min..max)",
                            "mean of the top singular values", "σ_j(τ̄t)", "merge a task to see its spectrum",
                            log=True)


def update_affinity_lines(summary: pd.DataFrame, data: bool = True) -> go.Figure:
    """The compact live panel: per method and step, mean update affinity with the earlier tasks
    (dotted) and with the new task (solid); `summary` from `step_geometry.summarize_geometry`."""
    title = "Where each update lands" + ("" if data else " (data-free: overlap with task vectors)")
    _require(summary, ["method", "step", "old_update_affinity", "new_update_affinity",
                       "new_update_vector_affinity", "baseline"], "geometry summary")
    if summary.empty:
        return _empty(title, "merge a task to see where its update lands")
    new_column = "new_update_affinity" if data else "new_update_vector_affinity"
    fig = go.Figure()
    for method in _methods(summary):
        mine = summary[summary["method"] == method]
        color = method_color(method)
        fig.add_trace(go.Scatter(x=mine["step"], y=mine[new_column], mode="lines+markers",
                                 name=f"{method}: new task", line={"color": color}))
        if data:
            fig.add_trace(go.Scatter(x=mine["step"], y=mine["old_update_affinity"], mode="lines+markers",
                                     name=f"{method}: earlier tasks", line={"color": color, "dash": "dot"}))
    fig.add_hline(y=float(summary["baseline"].mean()), line_dash="dash", line_color="grey")
    # legend under the plot: the panel is a narrow column beside the accuracy matrix (about 250 px
    # wide in a 1000 px window; the page's `ui.chart(..., narrow=True)` moves the title below the tool bar)
    fig.update_layout(title=title, xaxis_title="step", yaxis_title="mean affinity", yaxis_range=[0, 1],
                      xaxis={"dtick": 1}, height=400,
                      legend={"orientation": "h", "yanchor": "top", "y": -0.3, "x": 0})
    return fig
