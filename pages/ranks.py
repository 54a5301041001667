"""Ranks: NUFILT's sensitivity to r_p, r_l and r_v (Fig. 4); every computed point is cached and reused."""
# ruff: noqa: E402  (the title is drawn before the heavy imports, so a cold start shows the page at once)

import streamlit as st

from pages import nav

nav.require_app()

st.title("Rank sensitivity")

import pandas as pd

from nufilt import appstate, figures
from nufilt.analysis import rank_sweep, summarize_sweep, sweep_settings
from pages import ui

ui.init_state()
RANKS = ("r_p", "r_l", "r_v")

config, backbone, run = ui.require_run()
narrow, wide = appstate.layer_widths(backbone)
st.caption(f"NUFILT on this run's order ({len(run.order)} tasks), one full run per point (ACC/BWT after the last "
           f"task). The paper's sweeps (d_in = 768) are scaled to this backbone's layer width d_in = {narrow}"
           + (f"–{wide}" if wide != narrow else "") + "; ranks above a layer's size are clamped.")


@st.cache_data(show_spinner=False, max_entries=512)
def sweep_point(key: tuple, order: tuple[str, ...], parameter: str, value: int, fixed: tuple, options: tuple,
                device: str, seed: int, _backbone, _computed: dict | None = None) -> dict:
    """ACC/BWT of one NUFILT run with `parameter = value` (cached: a point is computed once);
    `_computed`: the point as the page's background job computed it, stored under the same key."""
    if _computed is not None:
        return _computed
    table = rank_sweep(_backbone, parameter, [value], dict(fixed), [list(order)], {"nufilt": dict(options)},
                       device=device, seed=seed)
    return table.iloc[0].to_dict()


def _listed(values: list[int], shown: int = 12) -> str:
    text = ", ".join(map(str, values[:shown]))
    return text + (f", … ({len(values)} in all)" if len(values) > shown else "")


parameter = st.radio("Rank to sweep", RANKS, horizontal=True, key="ranks.parameter")
default_values, default_fixed = sweep_settings(parameter, narrow)
columns = st.columns(3)
text = columns[0].text_input(f"{parameter} values (commas, or LOW-HIGH:STEP)", ", ".join(map(str, default_values)),
                             key=f"ranks.values.{parameter}")
fixed = {
    name: int(column.number_input(f"fixed {name}", value=default_fixed[name], step=1,
                                  key=f"ranks.fixed.{parameter}.{name}"))
    for column, name in zip(columns[1:], [r for r in RANKS if r != parameter], strict=True)
}
try:
    values = appstate.parse_values(text)
    if any(value < 0 for value in fixed.values()):
        raise ValueError(f"fixed ranks must be >= 0, got {fixed}")
except ValueError as error:
    st.error(f"Bad ranks: {error}")
    st.stop()
if max(values) > wide:  # a rank above the layer size is the layer size: compute and plot it there
    clamped = [value for value in values if value > wide]
    values = sorted({min(value, wide) for value in values})
    st.warning(f"{parameter} = {', '.join(map(str, clamped))} exceed{'s' if len(clamped) == 1 else ''} the layer "
               f"size and {'is' if len(clamped) == 1 else 'are'} clamped to {wide} (the point at {wide}).")

# NUFILT's other options as chosen on Setup (steps, lr, ...); the ranks come from the sweep
options = tuple(sorted((k, v) for k, v in config.options_for("nufilt").items() if k not in RANKS))
base = (config.backbone_key(), tuple(run.order), parameter)
computed: list = st.session_state.setdefault("ranks.computed", [])


def point_key(value: int) -> tuple:
    return (*base, value, tuple(sorted(fixed.items())), options, config.seed)


def store(key: tuple, row: dict) -> None:
    """A point the background job computed, into the page's cache under its key."""
    (backbone_key, order, name, value, fixed_items, opts, seed), device = key
    sweep_point(backbone_key, order, name, value, fixed_items, opts, device, seed, backbone, row)
    if key[0] not in computed:
        computed.append(key[0])


job = ui.work_job("ranks")  # the points are computed in the background; the page polls it
for key, row in job.take().items():
    store(key, row)
if job.seconds:
    st.session_state["ranks.seconds_per_point"] = sum(job.seconds) / len(job.seconds)
ui.work_notes(job)

missing = [value for value in values if point_key(value) not in computed]
per_point = st.session_state.get("ranks.seconds_per_point")
if per_point is None:  # before the first point: from this run's NUFILT steps, if it has any
    steps = run.metrics()
    steps = steps[steps["method"].isin([s.label for s in config.specs(backbone) if s.method == "nufilt"])]
    if len(steps):
        per_point = len(run.order) * float(steps["merge_seconds"].mean()) + 2 * float(steps["eval_seconds"].mean())
estimate = f", about {ui.duration(len(missing) * per_point)}" if per_point else ""


def point_items(values_to_compute: list[int]) -> list:
    """The job's items: one per point in this process, or one for all of them on Ray workers."""
    sweep = dict(parameter=parameter, fixed=dict(fixed), orders=[list(run.order)],
                 overrides={"nufilt": dict(options)}, device=config.device, seed=config.seed)
    workers = appstate.grid_workers(config, len(values_to_compute), per_point)

    def keep_rows(keep, table) -> None:
        for row in table.to_dict("records"):
            keep((point_key(int(row["value"])), config.device), row)

    if workers is not None:  # every point at once on the Ray workers (nufilt.grid)
        def on_workers(keep, progress) -> None:  # (a GridError names the cells that failed twice)
            keep_rows(keep, rank_sweep(backbone, values=values_to_compute, progress=progress, workers=workers,
                                       **sweep))

        return [(f"{len(values_to_compute)} points on {workers.count} workers", on_workers)]

    def one(value: int):
        return lambda keep, progress: keep_rows(keep, rank_sweep(backbone, values=[value], **sweep))

    return [(f"{parameter} = {value}: merging {len(run.order)} tasks", one(value)) for value in values_to_compute]


if job.running:
    ui.work_panel(job, "ranks.compute", "Computing points…")
elif missing and st.button(f"Compute {len(missing)} missing point(s){estimate}", type="primary", key="ranks.compute"):
    refusal = job.start(point_items(missing))
    if refusal:
        st.warning(refusal)
    else:
        st.rerun()  # drawn again with the job running: the button off, Stop and the progress on
if missing:
    st.caption(f"Not computed yet: {_listed(missing)} (each point is one full run of NUFILT over "
               f"{len(run.order)} tasks, computed in the background: you can leave this page meanwhile; Stop "
               "ends the work after the point in progress).")

rows = [
    sweep_point(config.backbone_key(), tuple(run.order), parameter, value, tuple(sorted(fixed.items())), options,
                config.device, config.seed, backbone)
    for value in values if point_key(value) in computed
]
table = pd.DataFrame(rows, columns=["parameter", "value", "order", "r_p", "r_l", "r_v", "acc", "bwt", "seconds",
                                    "eval_seconds"])
summary = summarize_sweep(table) if len(table) else pd.DataFrame(columns=["value", "acc_mean", "bwt_mean"])
nufilt_specs = [spec for spec in config.specs(backbone) if spec.method == "nufilt"]
current = nufilt_specs[0].options.get(parameter) if nufilt_specs else None
ui.chart(figures.rank_sweep_curves(summary, parameter, current), table, f"rank_sweep_{parameter}")
st.caption("Dotted line: the value this run uses. The paper's finding (Fig. 4): ACC is flat over a wide range of "
           "each rank, so the Table 9 defaults need no tuning.")
