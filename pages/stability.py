"""Stability & plasticity: Eq. 3-4 losses of every merge step and their harmonic mean (Fig. 5)."""
# ruff: noqa: E402  (the title is drawn before the heavy imports, so a cold start shows the page at once)

import streamlit as st

from pages import nav

nav.require_app()

st.title("Stability and plasticity")

from nufilt import figures
from pages import ui

ui.init_state()
config, backbone, run = ui.require_run()
st.caption("Stability (Eq. 3): how much a step changes the layer outputs on earlier tasks' inputs, "
           "E‖(θ̄t − θ̄t−1) x‖². Plasticity (Eq. 4): how far the merged layers are from the new task's own "
           "model on its inputs, E‖(θ̄t − θt) x‖². Both are averaged over NUFILT's layers; lower is better.")
if not run.track_losses:
    st.info("Stability/plasticity tracking is off for this run (Setup → Evaluation and analysis).")
ui.merge_controls(run, "stability")

per_step, summary = run.loss_summary()
ui.chart(figures.stability_plasticity_lines(per_step), per_step, "stability_plasticity")
ui.chart(figures.stability_plasticity_summary(summary), summary, "stability_plasticity_summary")
with st.expander("Per layer"):
    losses = run.losses()
    ui.table(losses, number_format="%.3g")  # losses span orders of magnitude
    st.download_button("⬇ CSV", losses.to_csv(index=False), file_name="losses_per_layer.csv", mime="text/csv",
                       key="csv.losses_per_layer", on_click="ignore")
