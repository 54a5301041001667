"""Geometry: subspace affinity between each task's data and each task vector (Eq. 5, Fig. 2)."""
# ruff: noqa: E402  (the title is drawn before the heavy imports, so a cold start shows the page at once)

import streamlit as st

from pages import nav

nav.require_app()

st.title("Geometry: where task vectors meet task data")

import pandas as pd

from nufilt import appstate, figures
from nufilt.analysis import affinity_matrix, backbone_affinity, diagonal_dominance
from nufilt.analysis.affinity import KINDS
from nufilt.analysis.step_geometry import summarize_geometry
from pages import ui

ui.init_state()
config, backbone, run = ui.require_run()

# ---------------------------------------------------------------- live: the current run, step by step
st.subheader("Live: where each merge step's update lands")
# read before the step runs, so the step of the same click already computes the angles and spectra
run.track_spectra = st.toggle(
    "Principal angles and spectra per step", value=run.track_spectra, key="geometry.spectra",
    help="From the next merge step on: principal angles between V(τt) and the top-r_p subspace of τ̄_{t−1}, and "
         "τ̄t's top singular values. About doubles the geometry part of a step.")
ui.merge_controls(run, "geometry")
geometry = run.geometry()
data = run.geometry_has_data or geometry.empty
# containers drawn on every run keep the page's element tree fixed while a run streams (see ui.merge_controls)
note, heatmaps, live = st.container(), st.container(), st.container()
if not data:
    note.info("No task data in this run (no test data for this backbone, or stability tracking is off on Setup): "
              "showing the data-free view, each update's overlap with the task vectors' own subspaces "
              "(`update_vector_affinity`).")
values = ["update_affinity", "merged_affinity"] if data else ["update_vector_affinity"]
for value in values:  # ▶ Play under each heatmap animates its steps; the slider there picks one
    with heatmaps:
        ui.chart(figures.step_geometry_heatmaps(geometry, value, run.order), geometry, f"step_{value}")
heatmaps.caption("Update affinity A(V_d(i), V(Δt)), Δt = τ̄t − τ̄_{t−1}: low for earlier tasks (i < t) means the step "
                 "avoids their input subspaces (transparency), high for the new task (i = t) means it covers it "
                 "(fidelity). Merged affinity uses V(τ̄t): how much of task i the merged vector still covers.")
with live:
    if run.steps_done:
        steps = list(range(1, run.steps_done + 1))
        seen = list(run.order[: run.steps_done])
        left, right = st.columns([1, 2])
        with left:  # keys carry the step count: a new step moves the slider to it and chooses its tasks
            chosen_step = st.select_slider("Step", steps, value=steps[-1], key=f"geometry.step.{run.steps_done}")
        with right:
            chosen_tasks = st.multiselect("Tasks in the ECDF", seen, default=seen,
                                          key=f"geometry.tasks.{run.steps_done}")
        ecdf_value = values[0]
        at_step = geometry[(geometry["step"] == chosen_step) & geometry["task"].isin(chosen_tasks)]
        ui.chart(figures.step_geometry_ecdf(geometry, chosen_step, ecdf_value, chosen_tasks), at_step,
                 "step_geometry_ecdf")
        angles, spectra = run.geometry_angles(), run.geometry_spectra()
        if spectra.empty:
            st.caption("Principal angles and spectra: turn them on above; they are computed from the next step on.")
        else:
            ui.chart(figures.step_angles_figure(angles, chosen_step), angles, "step_angles")
            st.caption("Principal angles between the new task vector's top-r_v subspace V(τt) and the top-r_p "
                       "subspace of the merged vector before the step: near 90° the new task asks for directions the "
                       "merge does not hold yet. r_p is NUFILT's own, 128 for the other methods (clamped to the layer "
                       "width: a basis of the whole input space gives 0°).")
            ui.chart(figures.step_spectra_figure(spectra, chosen_step), spectra, "step_spectra")
        with st.expander("Mean per step (old tasks vs the new one)"):
            st.dataframe(summarize_geometry(geometry), hide_index=True)

# ---------------------------------------------------------------- before merging: Fig. 2
st.subheader("Before merging: task data x task vectors (Fig. 2)")
st.caption("A(V_d, V̂) = ‖V̂ᵀ V_d‖²_F / r_d: V_d = top-r_d eigenvectors of a layer's input second moment on the "
           "data task, V̂ = top-r_v right singular vectors of the vector task's τ at that layer. A random "
           "r_v-dimensional subspace scores r_v / d_in.")


@st.cache_data(show_spinner=False, max_entries=16)
def affinity_table(key: tuple, tasks: tuple[str, ...], r_d: int, r_v: int, n_samples: int, _backbone) -> pd.DataFrame:
    """The tidy Eq. 5 table (cached per backbone, tasks, ranks and sample count)."""
    return backbone_affinity(_backbone, list(tasks), r_d=r_d, r_v=r_v, n_samples=n_samples)


left, middle, right, last = st.columns(4)
r_d = left.number_input("r_d (data subspace)", min_value=1, value=8, step=1, key="geometry.r_d")
r_v = middle.number_input("r_v (task-vector subspace)", min_value=1, value=8, step=1, key="geometry.r_v")
n_samples = right.number_input("inputs per task", min_value=1, value=256, step=64, key="geometry.n_samples")
kind = last.radio("layers", KINDS, horizontal=True, key="geometry.kind")
n_samples = appstate.clamp_samples(backbone, int(n_samples))
r_d_limit = min(int(r_v), appstate.rank_limit(backbone))  # r_v is clamped per layer; r_d <= r_v (Eq. 5)
if r_d > r_d_limit:
    st.warning(f"r_d={r_d} is more than r_v or the layers allow (r_d <= r_v, Eq. 5); clamped to {r_d_limit}.")
    r_d = r_d_limit

try:
    with st.spinner(f"activation statistics and task-vector bases of {len(run.order)} tasks…"):
        table = affinity_table(config.backbone_key(), tuple(run.order), int(r_d), int(r_v), n_samples, backbone)
    matrices = {stat: affinity_matrix(table, stat, kind) for stat in ("mean", "p90")}
except ValueError as error:
    st.error(f"Cannot compute the affinity: {error}")
    st.stop()

baseline = float(table["baseline"].mean())
long = pd.concat({stat: m.stack() for stat, m in matrices.items()}, names=["stat", "data_task", "vector_task"])
ui.chart(figures.affinity_heatmaps({f"{stat} over {kind} layers": m for stat, m in matrices.items()}, baseline),
         long.rename("affinity").reset_index(), "affinity_heatmaps")

dominance = diagonal_dominance(table)
st.markdown("**Diagonal dominance** (matched data/vector pairs against the rest, per layer kind):")
st.dataframe(dominance, hide_index=True)

st.subheader("Per-layer ECDF for chosen pairs")
pairs = [(data, vector) for data in run.order for vector in run.order]
chosen = st.multiselect("Pairs (data task → vector task)", pairs, default=appstate.default_pairs(run.order),
                        format_func=lambda pair: f"{pair[0]} → {pair[1]}", key="geometry.pairs")
try:
    ecdf = appstate.ecdf_with_layers(table, chosen, kind)
except ValueError as error:
    st.error(f"Cannot draw the ECDF: {error}")
else:
    ui.chart(figures.affinity_ecdf_figure(ecdf), ecdf, "affinity_ecdf")
with st.expander("The full affinity table (every pair and layer)"):
    st.dataframe(table, hide_index=True)
    st.download_button("⬇ CSV", table.to_csv(index=False), file_name="affinity_table.csv", mime="text/csv",
                       key="csv.affinity_table", on_click="ignore")
