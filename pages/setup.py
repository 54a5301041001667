"""Setup: backbone, task group and order, methods and their options, device; builds/loads the models."""
# ruff: noqa: E402  (the title is drawn before the heavy imports, so a cold start shows the page at once)

import streamlit as st

from pages import nav

nav.require_app()

st.title("Setup")

with st.spinner("Loading torch and the merge library (a few seconds, on the first visit only)…"):
    from nufilt import appstate
    from nufilt.backbones import EMBEDDED
    from pages import ui

    ui.init_state()
st.caption("Choose what to merge and how. Everything here is remembered while you use the other pages.")
KEEP = {"persist_state": "session"}  # Setup values survive page switches

# ---------------------------------------------------------------- backbone and task group
choices = {choice.spec: choice for choice in appstate.BACKBONE_CHOICES}
left, right = st.columns([2, 1])
left.selectbox("Backbone", list(choices), format_func=lambda spec: choices[spec].label, key="setup.backbone", **KEEP)
choice = choices[ui.setting("backbone")]
left.caption(f"**Needs:** {choice.needs}.")
if choice.takes_path:
    left.text_input("Folder", key="setup.path", placeholder="/path/to/checkpoints",
                    help=f"a folder inside {ui.roots_text()} (the folders this server allows)", **KEEP)
if not choice.offline:
    left.text_input("Local test sets (optional; default: the Hub)", key="setup.data_dir", placeholder="/data/test-sets",
                    help="DIR/<task>/test/<label>/*.png for image tasks, DIR/<task>/test.jsonl for GLUE", **KEEP)
if choice.spec == EMBEDDED:
    left.toggle("Quick demo", key="setup.quick", **KEEP,
                help="A quick-start zoo of all 20 tasks (smaller models, fewer test images) that builds in about a "
                     "minute: the first merge step is on screen within a minute of starting the app. Off: the "
                     f"server's zoo preset `{appstate.zoo_preset()}`.")
    left.caption(f"Zoo preset `{ui.preset()}`; cache folder `{ui.cache_dir() or 'cache/'}` (`NUFILT_CACHE_DIR`).")

groups = appstate.task_groups(appstate.pool_size(choice.spec, ui.preset()))
right.selectbox("Task group", groups, key="setup.n_tasks", help="The paper merges 8, 14 and 20 tasks.", **KEEP)
right.selectbox("Merge device", ["auto", "cpu", "cuda"], key="setup.device", **KEEP)
try:
    right.caption(appstate.device_summary(ui.setting("device")))
except ValueError as error:
    right.error(str(error))

backbone, job = ui.current_backbone()
if backbone is None:
    st.stop()
ready = ui.prepare_panel(job, autostart=ui.autostart(choice.spec))
tasks = [task.name for task in backbone.tasks]
if ready:
    note = f" (built/checked in {job.seconds:.0f} s)" if job.seconds else ""
    st.success(f"{len(tasks)} task models ready{note}: {', '.join(tasks)}")

# ---------------------------------------------------------------- order
st.subheader("Task order")
modes = appstate.order_modes(len(tasks))
st.radio("Order", modes, format_func=appstate.ORDER_MODES.get, key="setup.order_mode", horizontal=True, **KEEP)
mode = ui.setting("order_mode")
if mode == "paper":
    st.number_input("The paper's order number (Tab. 6)", min_value=1, max_value=10, step=1, key="setup.paper_index",
                    **KEEP)
elif mode == "random":
    st.number_input("Seed", min_value=0, step=1, key="setup.seed", **KEEP)
elif mode == "custom":
    numbered = ", ".join(f"{i}={name}" for i, name in enumerate(tasks, start=1))
    st.text_area("Merge order: task names or numbers 1..N, separated by commas", key="setup.custom",
                 placeholder=", ".join(tasks), help=f"Every task of the group exactly once. Tasks: {numbered}", **KEEP)
try:
    order = appstate.resolve_order(tasks, mode, int(ui.setting("paper_index")), int(ui.setting("seed")),
                                   ui.setting("custom"))
    st.markdown(" → ".join(f"`{name}`" for name in order))
except ValueError as error:
    order = None
    st.error(f"Bad task order: {error}")

# ---------------------------------------------------------------- methods
st.subheader("Methods")
st.multiselect("Merge methods, side by side on the same order (NUFILT's Table 4 ablations included)",
               appstate.method_labels(), key="setup.methods", **KEEP)
recommended = getattr(backbone, "recommended_options", {}) or {}
context = ui.context_key()
for label in ui.setting("methods"):
    fields = appstate.option_fields(label, len(tasks), recommended)
    with st.expander(f"{label} options", expanded=False):
        if not fields:
            st.caption("No options.")
        columns = st.columns(3)
        for i, item in enumerate(fields):
            key = ui.option_key(label, item.name, context)
            st.session_state.setdefault(key, item.value)
            column, tip = columns[i % 3], item.help or None
            if item.kind == "bool":
                column.checkbox(item.name, key=key, help=tip, **KEEP)
            elif item.kind == "int":
                column.number_input(item.name, step=1, key=key, help=tip, **KEEP)
            elif item.kind == "float":
                column.number_input(item.name, format="%g", key=key, help=tip, **KEEP)
            elif item.kind == "choice":
                column.selectbox(item.name, item.choices, key=key, help=tip, **KEEP)
            else:
                column.text_input(item.name, key=key, help=tip, **KEEP)
        if st.button("Reset to the defaults", key=f"reset-options.{label}"):
            for item in fields:
                st.session_state.pop(ui.option_key(label, item.name, context), None)
            st.rerun()
scaled = recommended.get("nufilt", {})
st.caption("Defaults: the paper's Table 9 for this task count"
           + (f"; this backbone scales NUFILT's ranks to its layer width (r_p = {scaled.get('r_p')}, "
              f"r_l = {scaled.get('r_l')}; the paper's 128/64 are for d_in = 768)." if scaled else "."))

with st.expander("Evaluation and analysis"):
    st.number_input("Test images per task when scoring a step (0 = all)", min_value=0, step=50, key="setup.max_eval",
                    help="A step scores every task seen so far; fewer images make steps faster. 0 scores all of "
                         "them, as the CLI does.", **KEEP)
    st.checkbox("Track stability and plasticity (needs each task's input statistics)", key="setup.track_losses",
                **KEEP)
    st.number_input("Inputs per task for the statistics", min_value=1, step=64, key="setup.n_samples", **KEEP)

# ---------------------------------------------------------------- summary
if order is not None:
    try:
        config = ui.config_from_settings(backbone)
    except (ValueError, TypeError) as error:
        st.error(f"Invalid method options: {error}")
    else:
        changed = {label: dict(options) for label, options in config.overrides}
        st.info(f"Run: {len(config.order)} tasks, methods {', '.join(config.methods)}"
                + (f", changed options {changed}" if changed else ", default options"))
        st.page_link("pages/merge.py", label="Start merging", icon=":material/merge_type:")
