"""Merge: step through the task order with every chosen method; accuracy, ACC/BWT and NUFILT's filter live."""
# ruff: noqa: E402  (the title is drawn before the heavy imports, so a cold start shows the page at once)

import streamlit as st

from pages import nav

nav.require_app()

st.title("Merge step by step")

from nufilt import appstate, figures
from nufilt.analysis.step_geometry import summarize_geometry
from pages import ui

ui.init_state()
config, backbone, run = ui.require_run()
ui.merge_controls(run, "merge")

summary = run.summary()
scores = st.container()  # drawn at step 0 too, so the charts below keep their place in the page
if run.steps_done:
    columns = scores.columns(len(summary))
    for column, row in zip(columns, summary.itertuples(), strict=True):
        # BWT needs an earlier task: none after the first step (no arrow, no green "+0.0")
        bwt = f"{row.bwt:+.1f} BWT" if row.steps > 1 else None
        column.metric(f"{row.method}: ACC after {row.steps} task{'s' if row.steps != 1 else ''}", f"{row.acc:.1f}%",
                      bwt, help="BWT: mean change of earlier tasks' accuracy since each was merged (forgetting < 0)")

accuracy, metrics = run.accuracy(), run.metrics()
matrix_col, geometry_col = st.columns([3, 2])
with matrix_col:
    ui.chart(figures.accuracy_matrices(accuracy, run.order), accuracy, "accuracy_matrix", narrow=True)
with geometry_col:
    geometry_summary = summarize_geometry(run.geometry())
    ui.chart(figures.update_affinity_lines(geometry_summary, run.geometry_has_data or geometry_summary.empty),
             geometry_summary, "update_affinity_lines", narrow=True)
ui.chart(figures.acc_bwt_lines(metrics), metrics, "acc_bwt")
ui.chart(figures.task_accuracy_lines(accuracy, run.order), accuracy, "task_accuracy")

st.subheader("Inside NUFILT's filter")
steps = list(range(1, run.steps_done + 1)) or [1]
# keyed by the step count, so the selection follows each new step
step = st.select_slider("Step", steps, value=steps[-1], key=f"merge.inspect.{run.steps_done}")
layers, curves = run.layers(), run.loss_curves()
left, right = st.columns(2)
with left:
    ui.chart(figures.removed_energy_bars(layers, step), layers[layers["step"] == step], "removed_energy")
with right:
    ui.chart(figures.lora_loss_curves(curves, step), curves[curves["step"] == step], "lora_loss")
st.caption("Removed energy: share of ‖τt‖² inside the top-r_p right singular subspace of the merged vector τ̄_{t−1}, "
           "what the null-space filter takes out of the new task vector (Eq. 7-8). LoRA loss: Eq. 16 per selected "
           "layer during NUFILT's Adam iterations. Both for NUFILT and its ablations.")

with st.expander("Timings per step"):
    ui.table(metrics)

# ---------------------------------------------------------------- the merged model
st.subheader("The merged model")
if not run.steps_done:
    st.caption("Merge at least one task to download or save the merged model.")
else:
    label = st.selectbox("Method", run.labels, key="merge.export_method")
    state, card = run.merged_state(label), run.card_info(label)
    st.caption(f"{label} after {len(card['order'])} of {len(run.order)} tasks.")
    downloads = st.container(horizontal=True, gap="small")  # wraps at 1000 px instead of clipping the labels
    downloads.download_button(
        "⬇ save_pretrained folder + model card (.zip)", lambda: appstate.export_zip(backbone, state, card),
        file_name=f"nufilt-{label}-{len(card['order'])}tasks.zip", mime="application/zip", key="merge.zip",
        on_click="ignore",
    )
    downloads.download_button(
        "⬇ weights only (.safetensors)", lambda: appstate.export_safetensors(state, card),
        file_name=f"nufilt-{label}-{len(card['order'])}tasks.safetensors", mime="application/octet-stream",
        key="merge.safetensors", on_click="ignore",
    )
    if not ui.roots():
        st.caption("Saving to a folder on the server is off: the server allows no folders (`NUFILT_ALLOWED_ROOTS`).")
    else:
        folder_col, button_col = st.columns([3, 1], vertical_alignment="bottom")
        folder = folder_col.text_input("Or save it to a folder on this machine", key="merge.folder",
                                       placeholder="/path/to/new/folder", help=f"inside {ui.roots_text()}")
        if button_col.button("Save", key="merge.save"):
            try:
                path = appstate.save_to_folder(backbone, state, folder, card, roots=ui.roots())
                st.success(f"Saved to {path}")
            except (OSError, ValueError) as error:
                st.error(f"Could not save: {error}")
