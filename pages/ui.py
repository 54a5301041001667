"""Streamlit helpers shared by the pages: settings in session state, cached resources, chart + CSV.

Session state holds only names and numbers (the `setup.*` widget values). Models live in
`st.cache_resource` (one backbone per spec, shared), the step-by-step run in a session-scoped
`st.cache_resource` keyed by the run's `RunConfig`, and arrays/tables in `st.cache_data`.
"""

from __future__ import annotations

import hashlib
import os
import sys
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
import torch

from nufilt import appstate
from nufilt.backbones import EMBEDDED
from nufilt.roots import allowed_roots, check_allowed

torch.set_num_threads(appstate.app_threads())  # once per process, when the first page imports this module

SETUP_PREFIX = "setup."
DEFAULTS: dict[str, Any] = {
    "setup.backbone": EMBEDDED,
    "setup.path": "",
    "setup.n_tasks": 8,
    "setup.order_mode": "paper",
    "setup.paper_index": 1,
    "setup.seed": 0,
    "setup.custom": "",
    "setup.methods": ["nufilt", "opcm"],
    "setup.device": "auto",
    "setup.track_losses": True,
    "setup.n_samples": 256,
    "setup.max_eval": 200,
    "setup.data_dir": "",
}


def init_state() -> None:
    """The Setup defaults, once per session, made consistent with the backbone's task pool.

    The Setup widgets keep their values across pages with `persist_state="session"`.
    """
    for key, value in DEFAULTS.items():
        st.session_state.setdefault(key, value)
    groups = appstate.task_groups(appstate.pool_size(setting("backbone"), appstate.zoo_preset()))
    if setting("n_tasks") not in groups:
        st.session_state["setup.n_tasks"] = groups[0]
    modes = appstate.order_modes(int(setting("n_tasks")))
    if setting("order_mode") not in modes:
        st.session_state["setup.order_mode"] = "pool"
    st.sidebar.caption(
        f"Backbone `{backbone_spec()}` · {setting('n_tasks')} tasks · order: {setting('order_mode')} · "
        f"methods: {', '.join(setting('methods')) or '–'}"
    )


def setting(name: str) -> Any:
    return st.session_state.get(SETUP_PREFIX + name, DEFAULTS.get(SETUP_PREFIX + name))


def cache_dir() -> str | None:
    return os.environ.get("NUFILT_CACHE_DIR") or None


def backbone_spec() -> str:
    """The chosen spec, with the folder appended for `openclip:` / `local:`."""
    spec = setting("backbone")
    return spec + setting("path").strip() if spec.endswith(":") else spec


def max_eval() -> int | None:
    return int(setting("max_eval")) or None


def backbone_args() -> tuple:
    """(spec, n_tasks, preset, cache_dir, device, max_eval, data_dir): the cache key of the backbone."""
    data_dir = None if setting("backbone") == EMBEDDED else setting("data_dir").strip() or None
    return (backbone_spec(), int(setting("n_tasks")), appstate.zoo_preset(), cache_dir(), setting("device"),
            max_eval(), data_dir)


@st.cache_resource(show_spinner=False, max_entries=4)
def backbone_for(spec: str, n_tasks: int, preset: str, cache: str | None, device: str, max_eval: int | None,
                 data_dir: str | None):
    """The shared backbone (models stay in memory once loaded)."""
    return appstate.open_backbone(spec, n_tasks, preset, cache, device, max_eval, data_dir)


@st.cache_resource(show_spinner=False, max_entries=8)
def prepare_job(spec: str, n_tasks: int, preset: str, cache: str | None, device: str, max_eval: int | None,
                data_dir: str | None) -> appstate.PrepareJob:
    """One background build/load per backbone, shared by every session."""
    return appstate.PrepareJob(backbone_for(spec, n_tasks, preset, cache, device, max_eval, data_dir))


# Folders on this server that visitors may name (nufilt.roots): `-- --allow-root DIR`, $NUFILT_ALLOWED_ROOTS,
# else the folder the server was started in.
def roots() -> list:
    return allowed_roots(sys.argv[1:])


def roots_text() -> str:
    return ", ".join(f"`{root}`" for root in roots()) or "none"


def current_backbone():
    """(backbone, job), or (None, None) after showing why the backbone cannot be opened."""
    try:
        args = backbone_args()
        if args[0].endswith(":"):
            raise ValueError(f"type the folder for the {args[0]!r} backbone on the Setup page")
        if setting("backbone").endswith(":"):
            check_allowed(setting("path"), roots(), "checkpoint folder")
        if args[-1] is not None:
            check_allowed(args[-1], roots(), "test-set folder")
        return backbone_for(*args), prepare_job(*args)
    except Exception as error:
        st.error(f"Cannot open backbone {backbone_spec()!r}: {error}")
        return None, None


def prepare_panel(job: appstate.PrepareJob, autostart: bool) -> bool:
    """Build/load status with a live progress bar (polled by a fragment); True when ready."""
    if job.state == "idle" and autostart:
        job.start()
    if job.state == "ready":
        return True
    if job.state == "failed":
        st.error(f"Loading the backbone failed: {job.error}")
        if st.button("Try again", key="prepare.retry"):
            job.start()  # restarts a failed job under its lock (another session may have already)
            st.rerun()
        return False
    if job.state == "idle":
        if st.button("Load the models", key="prepare.start", type="primary"):
            job.start()
            st.rerun()
        return False

    def poll() -> None:
        if job.state != "running":
            st.rerun()  # the whole page: the models are ready (or failed)
        eta = job.eta_seconds()
        left = ""
        if eta is not None:
            left = f" · about {eta / 60:.0f} min left" if eta >= 90 else f" · about {eta:.0f} s left"
        st.progress(job.fraction, text=f"Building / loading the models: {job.message}{left}")
        st.caption("This runs in the background: you can keep choosing settings or switch pages.")

    st.fragment(poll, run_every=1.0)()
    return False


def config_from_settings(backbone) -> appstate.RunConfig:
    """The run configuration from the Setup widgets (ValueError/TypeError with the reason)."""
    tasks = [t.name for t in backbone.tasks]
    order = appstate.resolve_order(tasks, setting("order_mode"), int(setting("paper_index")),
                                   int(setting("seed")), setting("custom"))
    methods = list(setting("methods"))
    recommended = getattr(backbone, "recommended_options", {}) or {}
    overrides = {}
    for label in methods:
        fields = appstate.option_fields(label, len(order), recommended)
        values = {f.name: st.session_state.get(option_key(label, f.name, context_key()), f.value) for f in fields}
        overrides[label] = appstate.changed_options(fields, values)
    config = appstate.make_config(
        backbone_spec(), len(order), order, methods, overrides, preset=appstate.zoo_preset(), cache_dir=cache_dir(),
        device=setting("device"), track_losses=bool(setting("track_losses")), n_samples=int(setting("n_samples")),
        max_eval=max_eval(), data_dir=backbone_args()[-1],
    )
    config.specs(backbone)  # validates every option
    return config


def context_key() -> str:
    """Option widgets are keyed by backbone and task count, so their defaults follow those."""
    return hashlib.sha1(repr(backbone_args()[:3]).encode()).hexdigest()[:8]


def option_key(label: str, name: str, context: str) -> str:
    return f"{SETUP_PREFIX}opt.{label}.{name}.{context}"


@st.cache_resource(scope="session", max_entries=6, show_spinner=False)
def run_for(key: str, _config: appstate.RunConfig, _backbone) -> appstate.MultiRun:
    """This session's step-by-step run for one configuration (`key` = repr of the config)."""
    return appstate.MultiRun(_backbone, _config.order, _config.specs(_backbone), _config.track_losses,
                             _config.n_samples)


def require_run() -> tuple[appstate.RunConfig, Any, appstate.MultiRun]:
    """(config, backbone, run) for the Setup choices, or stop the page with the reason shown."""
    backbone, job = current_backbone()
    if backbone is None:
        st.page_link("pages/setup.py", label="Go to Setup", icon=":material/tune:")
        st.stop()
    if not prepare_panel(job, autostart=backbone.name == EMBEDDED):
        st.page_link("pages/setup.py", label="Setup", icon=":material/tune:")
        st.stop()
    try:
        config = config_from_settings(backbone)
        run = run_for(repr(config), config, backbone)
    except (ValueError, TypeError) as error:
        st.error(f"The Setup choices are not valid: {error}")
        st.page_link("pages/setup.py", label="Fix them on the Setup page", icon=":material/tune:")
        st.stop()
    except Exception as error:
        st.error(f"Could not start the run: {type(error).__name__}: {error}")
        st.stop()
    return config, backbone, run


def chart(fig: go.Figure, table: pd.DataFrame, name: str) -> None:
    """A Plotly chart with a CSV download of exactly the data it shows."""
    st.plotly_chart(fig, key=f"chart.{name}", config={"displaylogo": False})
    st.download_button(
        "⬇ CSV", table.to_csv(index=False), file_name=f"{name}.csv", mime="text/csv", key=f"csv.{name}",
        on_click="ignore", help=f"the data of this figure ({len(table)} rows)",
    )


def merge_controls(run: appstate.MultiRun, prefix: str) -> None:
    """'Merge next task' / 'Run to the end' / 'Reset', with progress while it works.

    A click is read from session state before the buttons are drawn, so the buttons and the
    step counter drawn afterwards already show the state after the step.
    """
    controls = st.container()
    clicked = {name: bool(st.session_state.get(f"{prefix}.{name}")) for name in ("step", "end", "reset")}
    if clicked["reset"]:
        run.reset()
    if clicked["step"] or clicked["end"]:
        bar = st.progress(0.0, text="merging…")

        def update(message: str, fraction: float) -> None:
            bar.progress(min(max(fraction, 0.0), 1.0), text=message)

        try:
            run.run_to_end(update) if clicked["end"] else run.step(update)
        except Exception as error:  # e.g. a rejected task: the run keeps its last good state
            st.error(f"The merge step failed: {type(error).__name__}: {error}")
        bar.empty()
    # buttons sized to their labels in a row that wraps (fixed columns clipped them to "Merge…" at 1000 px)
    buttons = controls.container(horizontal=True, gap="small")
    buttons.button("Merge next task", key=f"{prefix}.step", type="primary", disabled=run.finished)
    buttons.button("Run to the end", key=f"{prefix}.end", disabled=run.finished)
    buttons.button("Reset", key=f"{prefix}.reset", disabled=run.steps_done == 0)
    upcoming = run.next_task()
    controls.markdown(
        f"**Step {run.steps_done} / {len(run.order)}** · "
        + (f"next task: `{upcoming}`" if upcoming else "all tasks merged")
        + (f" · last step took {run.last_step_seconds:.2f} s ({run.last_step_cpu_seconds:.2f} s CPU)"
           if run.last_step_seconds else "")
    )
    for message in run.messages:
        st.warning(message)
