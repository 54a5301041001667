"""Streamlit helpers shared by the pages: settings in session state, cached resources, chart + CSV.

Session state holds only names and numbers (the `setup.*` widget values), mirrored in the URL's
query parameters (`nufilt.appstate.appurl`) so a link or a reload reproduces the view. Models live in
`st.cache_resource` (one backbone per spec, shared); the step-by-step run and the background job
that steps it live in a shared `st.cache_resource` keyed by the run's `RunConfig` (a reload or
another tab re-attaches to it) and on disk (`nufilt.appstate.runstore`: a restarted server restores it).
"""

from __future__ import annotations

import hashlib
import os
import sys
import weakref
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
import torch

from nufilt import appstate
from nufilt.appstate import appurl, runstore
from nufilt.appstate.runjob import RunJob
from nufilt.appstate.workjob import WorkJob
from nufilt.backbones import EMBEDDED
from nufilt.roots import allowed_roots, check_allowed
from nufilt.zoo.config import ENV_PRESET
from pages import nav

torch.set_num_threads(appstate.app_threads())  # once per process, when the first page imports this module

SETUP_PREFIX = "setup."
DEFAULTS: dict[str, Any] = {
    "setup.backbone": EMBEDDED,
    "setup.quick": False,
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


DEVICES = ("auto", "cpu", "cuda")
URL_LOADED, URL_PROBLEMS, URL_OPTIONS = "_nufilt_url_loaded", "_nufilt_url_problems", "_nufilt_url_options"


def init_state() -> None:
    """The Setup defaults (or, on a session's first run, the URL's choices), made consistent with
    the backbone's task pool, and written back to the URL.

    The Setup widgets keep their values across pages with `persist_state="session"`.
    """
    first = URL_LOADED not in st.session_state
    for key, value in DEFAULTS.items():
        st.session_state.setdefault(key, value)
    options: dict[str, dict[str, str]] = {}
    if first:
        st.session_state[URL_LOADED] = True
        options = _load_url(current_params())
    groups = appstate.task_groups(appstate.pool_size(setting("backbone"), preset()))
    if setting("n_tasks") not in groups:
        st.session_state["setup.n_tasks"] = groups[0]
    modes = appstate.order_modes(int(setting("n_tasks")))
    if setting("order_mode") not in modes:
        st.session_state["setup.order_mode"] = "pool"
    if options:
        _load_url_options(options)
    write_url()
    problems = st.session_state.get(URL_PROBLEMS)
    if problems:
        st.warning("The link's parameters were partly ignored: " + "; ".join(problems))
    st.sidebar.caption(
        f"Backbone `{backbone_spec()}` · {setting('n_tasks')} tasks · order: {setting('order_mode')} · "
        f"methods: {', '.join(setting('methods')) or '–'}"
    )


def current_params() -> dict[str, str | list[str]]:
    """The URL's query parameters (a deep link's, kept by `nav` across the hand-over to app.py)."""
    pending = nav.pending_params()
    if pending is not None:
        return pending
    return {key: st.query_params.get_all(key) if key == appurl.OPTION_PARAM else st.query_params[key]
            for key in st.query_params}


def _load_url(params: dict[str, str | list[str]]) -> dict[str, dict[str, str]]:
    """Setup choices from the URL into session state; returns the method options (as text)."""
    settings, options, problems = appurl.params_to_settings(params)
    valid = {
        "backbone": lambda v: v in {choice.spec for choice in appstate.BACKBONE_CHOICES},
        "device": lambda v: v in DEVICES,
        "order_mode": lambda v: v in appstate.ORDER_MODES,
        "methods": lambda v: bool(v) and set(v) <= set(appstate.method_labels()),
        "n_tasks": lambda v: v > 0,
        "paper_index": lambda v: 1 <= v <= 10,
        "seed": lambda v: v >= 0,
        "max_eval": lambda v: v >= 0,
        "n_samples": lambda v: v >= 1,
    }
    for key, value in settings.items():
        if key in valid and not valid[key](value):
            problems.append(f"{key}={value!r} is not one of the choices")
            continue
        st.session_state[SETUP_PREFIX + key] = value
    st.session_state[URL_PROBLEMS] = problems
    return options


def _load_url_options(options: dict[str, dict[str, str]]) -> None:
    problems = st.session_state.setdefault(URL_PROBLEMS, [])
    context = context_key()
    for label, values in options.items():
        if label not in appstate.method_labels():
            problems.append(f"opt for unknown method {label!r}")
            continue
        fields = {f.name: f for f in appstate.option_fields(label, int(setting("n_tasks")))}
        for name, text in values.items():
            if name not in fields:
                problems.append(f"{label} has no option {name!r}")
                continue
            kind = fields[name].kind
            try:
                value = appurl.parse_value(text, kind if kind in ("int", "float", "bool") else "str")
            except ValueError as error:
                problems.append(f"{label}.{name}: {error}")
                continue
            st.session_state[option_key(label, name, context)] = value


def write_url(options: dict[str, dict[str, Any]] | None = None) -> None:
    """The current Setup choices (and changed method options) as the URL's query parameters."""
    if options is not None:
        st.session_state[URL_OPTIONS] = options
    settings = {key: setting(key) for key, _ in appurl.PARAMS.values()}
    defaults = {key[len(SETUP_PREFIX):]: value for key, value in DEFAULTS.items()}
    params = appurl.settings_to_params(settings, defaults, st.session_state.get(URL_OPTIONS, {}))
    if params != current_params():
        st.query_params.from_dict(params)


def preset() -> str:
    """The embedded zoo preset: "quick" with the Setup page's Quick demo, else the server's."""
    return "quick" if setting("quick") else appstate.zoo_preset()


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
    return (backbone_spec(), int(setting("n_tasks")), preset(), cache_dir(), setting("device"),
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


def duration(seconds: float) -> str:
    """An estimate as people read it: "40 s", "3 min" (minutes from 90 s on)."""
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


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
        if job.backbone.name == EMBEDDED:
            st.info("The models of this zoo are not built yet: building the default zoo takes about a minute and a "
                    "half on 2 idle cores (longer when they are busy). **Quick demo** (Setup) builds a small zoo in "
                    "about 10 seconds.")
        if st.button("Build the models" if job.backbone.name == EMBEDDED else "Load the models",
                     key="prepare.start", type="primary"):
            job.start()
            st.rerun()
        return False

    def poll() -> None:
        if job.state != "running":
            st.rerun()  # the whole page: the models are ready (or failed)
        eta = job.eta_seconds()
        left = ""
        if eta is not None:
            left = f" · about {duration(eta)} left"
        st.progress(job.fraction, text=f"Building / loading the models: {job.message}{left}")
        st.caption("This runs in the background: you can keep choosing settings or switch pages.")

    st.fragment(poll, run_every=1.0)()
    return False


def autostart(spec: str) -> bool:
    """Build the embedded zoo without a click when its preset was chosen (Quick demo, or the server's
    `$NUFILT_ZOO_PRESET`); the default zoo takes minutes, so a first visit waits for a click and a
    Quick demo never queues behind it."""
    return spec == EMBEDDED and (bool(setting("quick")) or bool(os.environ.get(ENV_PRESET, "").strip()))


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
        backbone_spec(), len(order), order, methods, overrides, preset=preset(), cache_dir=cache_dir(),
        device=setting("device"), track_losses=bool(setting("track_losses")), n_samples=int(setting("n_samples")),
        max_eval=max_eval(), data_dir=backbone_args()[-1],
    )
    config.specs(backbone)  # validates every option
    write_url({label: dict(values) for label, values in config.overrides})
    return config


def context_key() -> str:
    """Option widgets are keyed by backbone and task count, so their defaults follow those."""
    return hashlib.sha1(repr(backbone_args()[:3]).encode()).hexdigest()[:8]


def option_key(label: str, name: str, context: str) -> str:
    return f"{SETUP_PREFIX}opt.{label}.{name}.{context}"


# id(run) -> its job, for `merge_controls(run, ...)` (weak: an evicted, finished job goes with its run)
_JOBS: weakref.WeakValueDictionary[int, RunJob] = weakref.WeakValueDictionary()


@st.cache_resource(max_entries=16, show_spinner=False)
def job_for(key: str, folder: str, _config: appstate.RunConfig, _backbone) -> RunJob:
    """The run of one configuration (`key` = repr of the config) and its background job, shared by
    every session and tab with that configuration; restored from `folder` when it was saved."""
    run = appstate.MultiRun(_backbone, _config.order, _config.specs(_backbone), _config.track_losses,
                            _config.n_samples)
    restored = runstore.load_run(run, _config, folder)
    job = RunJob(run, save=lambda run, target: runstore.save_run(run, _config, target, folder),
                 forget=lambda: runstore.forget_run(_config, folder))
    if restored and restored["target"] > restored["steps"]:  # the server stopped during a background run
        job.interrupted_at, job.target = restored["steps"], restored["target"]
    _JOBS[id(run)] = job
    return job


def require_run() -> tuple[appstate.RunConfig, Any, appstate.MultiRun]:
    """(config, backbone, run) for the Setup choices, or stop the page with the reason shown."""
    backbone, job = current_backbone()
    if backbone is None:
        st.page_link("pages/setup.py", label="Go to Setup", icon=":material/tune:")
        st.stop()
    if not prepare_panel(job, autostart=autostart(backbone.name)):
        st.page_link("pages/setup.py", label="Setup", icon=":material/tune:")
        st.stop()
    try:
        config = config_from_settings(backbone)
        folder = str(runstore.runs_dir(config.cache_dir))
        run_job = job_for(repr(config), folder, config, backbone)
    except (ValueError, TypeError) as error:
        st.error(f"The Setup choices are not valid: {error}")
        st.page_link("pages/setup.py", label="Fix them on the Setup page", icon=":material/tune:")
        st.stop()
    except Exception as error:
        st.error(f"Could not start the run: {type(error).__name__}: {error}")
        st.stop()
    if run_job.running:
        st.sidebar.caption(f"Merging in the background: step {run_job.steps_done + 1} of {len(config.order)} "
                           f"(to step {run_job.target}).")
    return config, backbone, run_job.run


def table(frame: pd.DataFrame, number_format: str = "%.2f", **kwargs: Any) -> None:
    """`st.dataframe` with every float column in `number_format` (78.33, not 78.3333)."""
    formats = {column: st.column_config.NumberColumn(format=number_format)
               for column in frame.columns if pd.api.types.is_float_dtype(frame[column])}
    st.dataframe(frame, hide_index=True, column_config=formats, **kwargs)


def chart(fig: go.Figure, table: pd.DataFrame, name: str, narrow: bool = False) -> None:
    """A Plotly chart with a CSV download of exactly the data it shows.

    `narrow`: the chart sits in a narrow column, where Plotly's tool bar wraps to two rows over
    the title (seen at 1000 px); the title then starts below the tool bar."""
    if narrow:
        top = max(int(fig.layout.margin.t or 0), 110)
        fig.update_layout(title={"yref": "container", "y": 1, "yanchor": "top", "pad": {"t": 58}},
                          margin={"t": top})
    st.plotly_chart(fig, key=f"chart.{name}", config={"displaylogo": False})
    st.download_button(
        "⬇ CSV", table.to_csv(index=False), file_name=f"{name}.csv", mime="text/csv", key=f"csv.{name}",
        on_click="ignore", help=f"the data of this figure ({len(table)} rows)",
    )


# how often a page polls a running job (a fragment rerun; `runner.postScriptGC = false` in
# .streamlit/config.toml keeps such reruns cheap for the job's threads)
WATCH_SECONDS = float(os.environ.get("NUFILT_WATCH_SECONDS", "1.0"))


def work_job(name: str) -> WorkJob:
    """This session's background job for a page's long work (`appstate.WorkJob`): it goes on when
    the visitor switches pages, and the page shows it again when they come back."""
    return st.session_state.setdefault(f"{name}.job", WorkJob())


def work_panel(job: WorkJob, key: str, working: str) -> None:
    """While `job` runs: its button drawn disabled as `working`, a Stop button, and a progress bar
    kept fresh by a fragment that reruns the page when the job has ended."""
    row = st.container(horizontal=True, gap="small")
    row.button(working, key=f"{key}.busy", disabled=True)
    row.button("Stop", key=f"{key}.stop", on_click=job.stop, help="End the work after the item in progress")

    def tick() -> None:
        if not job.running:
            st.rerun(scope="app")
        st.progress(job.fraction, text=f"{job.message} (it goes on if you leave this page)")

    st.fragment(tick, run_every=WATCH_SECONDS)()


def work_notes(job: WorkJob) -> None:
    """How the job's last start ended, when it ended early."""
    if job.error:
        st.error(job.error)
    if job.stopped and not job.running:
        done = job.message.replace(" (stopped)", "")
        st.info(f"Stopped after the item in progress: {done}. What was computed is kept, and the button goes on "
                "with the rest.")


def _request(job: RunJob, prefix: str, shown: int, steps: int | None) -> None:
    st.session_state[f"{prefix}.refusal"] = job.request(shown, steps)


def _reset(job: RunJob, prefix: str) -> None:
    st.session_state[f"{prefix}.refusal"] = job.reset()


def _progress_text(job: RunJob) -> str:
    return f"Merging: {job.message} (it goes on if you leave this page)"


def watch(job: RunJob, shown: int) -> None:
    """While the job runs: a fragment that keeps the progress bar fresh and reruns the whole page
    (every chart) once a step is done. The page's own run ends as usual (so Streamlit clears the
    previous step's elements, takes a click at once and the buttons stay live), and the job hears
    when the page is drawn (`RunJob.drawn`, after the page) so a watched run shows every step."""

    def tick() -> None:
        if not job.running or job.steps_done != shown:
            st.rerun(scope="app")
        job.watching()
        st.progress(job.fraction, text=_progress_text(job))

    st.fragment(tick, run_every=WATCH_SECONDS)()
    nav.after_page(lambda: job.drawn(shown))


def merge_controls(run: appstate.MultiRun, prefix: str) -> None:
    """'Merge next task' / 'Run to the end' / 'Stop' / 'Reset' over the run's background job.

    A click starts work in the job and returns; while it runs the buttons are off and `watch`
    reruns the whole page (every chart redrawn) after each step. A click carries the step the page
    showed, so a stale click (double click) is refused with a reason.
    """
    job = _JOBS[id(run)]
    busy, done, total = job.running, run.steps_done, len(run.order)
    # buttons sized to their labels in a row that wraps (fixed columns clipped them to "Merge…" at 1000 px)
    buttons = st.container(horizontal=True, gap="small")
    buttons.button("Merge next task", key=f"{prefix}.step", type="primary", disabled=run.finished or busy,
                   on_click=_request, args=(job, prefix, done, 1))
    buttons.button("Run to the end", key=f"{prefix}.end", disabled=run.finished or busy,
                   on_click=_request, args=(job, prefix, done, None))
    buttons.button("Stop", key=f"{prefix}.stop", disabled=not busy, on_click=job.stop,
                   help="End a running 'Run to the end' after the step in progress")
    buttons.button("Reset", key=f"{prefix}.reset", disabled=done == 0 or busy, on_click=_reset,
                   args=(job, prefix))
    upcoming = run.next_task()
    st.markdown(
        f"**Step {done} / {total}** · "
        + (f"next task: `{upcoming}`" if upcoming else "all tasks merged")
        + (f" · last step took {run.last_step_seconds:.2f} s ({run.last_step_cpu_seconds:.2f} s CPU)"
           if run.last_step_seconds else "")
    )
    # Everything that comes and goes sits in containers drawn on every run: while a run streams, each
    # step's rerun then replaces the charts below in place (a shifted element tree left the previous
    # step's charts on the page, faded, beside the new ones, until the run's last step)
    notes, progress = st.container(), st.container()
    refusal = st.session_state.get(f"{prefix}.refusal")
    if refusal:
        notes.warning(refusal)
    if job.error:
        notes.error(f"The merge step failed: {job.error}")
    if job.stopped_at is not None and not busy:
        notes.info(f"Stopped after step {job.stopped_at} (Stop pressed); 'Run to the end' goes on from there.")
    if job.interrupted_at is not None and not busy:
        notes.info(f"This run was heading for step {job.target} when the server stopped; it stopped at step "
                   f"{job.interrupted_at}. 'Run to the end' goes on from there.")
    if busy:
        with progress:
            watch(job, done)
    for message in run.messages:
        notes.warning(message)
