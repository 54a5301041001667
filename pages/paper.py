"""Compare with the paper: this run's ACC/BWT beside Table 1 (CLIP) / Table 2 (Flan-T5)."""
# ruff: noqa: E402  (the title is drawn before the heavy imports, so a cold start shows the page at once)

import streamlit as st

from pages import nav

nav.require_app()

st.title("Compare with the paper")

import pandas as pd

from nufilt import appstate, figures
from nufilt.evaluation import Run, paper_orders, reference_summary, run_order, summarize
from nufilt.grid import Cell, GridError, run_grid
from nufilt.paper import paper_reference
from pages import ui

ui.init_state()
config, backbone, run = ui.require_run()
reference_backbone, reference_tasks = appstate.reference_column(config.backbone, config.n_tasks)
embedded = reference_backbone != config.backbone
column = None if embedded else getattr(backbone, "paper_column", None)
paper_rows = paper_reference(reference_backbone, reference_tasks, column)


@st.cache_data(show_spinner=False, max_entries=256)
def order_run(key: tuple, label: str, order: tuple[str, ...], _spec, _backbone, _computed: dict | None = None) -> dict:
    """One method on one order, every step scored (cached per backbone, method options and order);
    `_computed`: the run as Ray workers computed it, stored under the same key."""
    return _computed if _computed is not None else run_order(_backbone, _spec, list(order)).to_json()


@st.cache_data(show_spinner=False)
def reference_means(key: tuple, tasks: tuple[str, ...], _backbone) -> dict[str, float]:
    """Mean pre-trained and individual accuracy over the run's tasks."""
    return reference_summary(_backbone.reference(), list(tasks))


# ---------------------------------------------------------------- this run's numbers
specs = config.specs(backbone)
results = {row.method: {"acc": row.acc, "bwt": row.bwt} for row in run.summary().itertuples() if row.steps}
source = f"this session's run ({run.steps_done}/{len(run.order)} tasks merged)"
if config.n_tasks in (8, 14, 20):
    with st.expander("Average over several of the paper's task orders (like Table 1)"):
        count = st.number_input("Number of the paper's orders (1..10)", 1, 10, 3, key="paper.orders")
        orders = paper_orders([t.name for t in backbone.tasks], list(range(1, int(count) + 1)))
        # (cache key, spec, order) per run; the session remembers which keys were computed
        jobs = [((config.backbone_key(), repr(spec), tuple(order)), spec, tuple(order)) for spec in specs
                for order in orders]
        done: list = st.session_state.setdefault("paper.computed", [])
        missing = [job for job in jobs if job[0] not in done]
        if missing and st.button(f"Run every method on orders 1..{int(count)} ({len(missing)} runs)",
                                 key="paper.run"):
            bar = st.progress(0.0)
            workers = appstate.grid_workers(config)
            if workers is None:
                for i, (key, spec, order) in enumerate(missing):
                    bar.progress(i / len(missing), text=f"{spec.label}, order {orders.index(list(order)) + 1}")
                    order_run(key, spec.label, order, spec, backbone)
                    done.append(key)
            else:  # every missing run at once on the Ray workers (nufilt.grid)
                bar.progress(0.0, text=f"starting {workers.count} workers")
                cells = [Cell(run_order, spec, order, f"{spec.label}, order {orders.index(list(order)) + 1}")
                         for _, spec, order in missing]
                try:
                    values = run_grid(cells, workers, progress=lambda message, fraction: bar.progress(fraction,
                                                                                                      message)).values
                except GridError as error:  # keep the runs that completed
                    st.error(str(error))
                    values = [error.values.get(i) for i in range(len(cells))]
                for (key, spec, order), computed in zip(missing, values, strict=True):
                    if computed is not None:
                        order_run(key, spec.label, order, spec, backbone, computed.to_json())
                        done.append(key)
            bar.empty()
            missing = [job for job in jobs if job[0] not in done]
            if not missing:
                st.rerun()  # redraw without the (now stale) button
        if not missing:
            runs = [Run(**order_run(key, spec.label, order, spec, backbone)) for key, spec, order in jobs]
            summary = summarize(runs)
            results = {label: {"acc": s["acc_mean"], "acc_std": s["acc_std"], "bwt": s["bwt_mean"],
                               "bwt_std": s["bwt_std"]} for label, s in summary.items()}
            source = f"mean ± std over the paper's orders 1..{int(count)}"
st.caption(f"Run numbers: {source}.")

if not results:
    st.info("Merge at least one task (Merge page) or run the paper's orders above to compare.")
    st.stop()

# ---------------------------------------------------------------- against the paper
if embedded:
    st.warning(
        "The embedded tiny-vit zoo is not one of the paper's backbones, so its numbers are not comparable to "
        f"Table 1. Below, the comparison is qualitative: against Table 1's ViT-B/32 column for {reference_tasks} "
        "tasks, checking the paper's claims on this run."
    )
    checks = appstate.qualitative_checks(results, paper_rows)
    st.dataframe(checks.replace({True: "yes", False: "no", None: "–"}), hide_index=True)
    st.download_button("⬇ CSV", checks.to_csv(index=False), file_name="qualitative_checks.csv", mime="text/csv",
                       key="csv.qualitative_checks", on_click="ignore")
elif not paper_rows:
    st.info(f"The paper has no numbers for {config.backbone} with {config.n_tasks} tasks.")

table = appstate.comparison_table(results, paper_rows)
ui.chart(figures.paper_comparison_bars(table), table, "paper_comparison")

rows = []
for row in paper_rows:
    mine = results.get(row["label"] or "", {})
    rows.append({"paper row": row["method"], "paper ACC": row["acc"], "paper BWT": row["bwt"],
                 "run ACC": mine.get("acc"), "run BWT": mine.get("bwt")})
try:
    means = reference_means(config.backbone_key(), tuple(run.order), backbone)
    for name, value in means.items():
        rows.append({"paper row": f"this backbone: {name}", "paper ACC": None, "paper BWT": None,
                     "run ACC": value, "run BWT": None})
except Exception as error:  # hub backbones may lack test data here; the table still shows
    st.caption(f"Reference accuracies unavailable: {error}")
st.markdown(f"**Table {'2 (Flan-T5)' if reference_backbone.startswith('flan') else '1'}**, "
            f"{'ViT-B/32 (qualitative reference)' if embedded else reference_backbone}, {reference_tasks} tasks:")
numbers = ["paper ACC", "paper BWT", "run ACC", "run BWT"]
shown = pd.DataFrame(rows, columns=["paper row", *numbers])
shown = shown.iloc[shown["run ACC"].isna().argsort(kind="stable")]  # this run's rows first, in the paper's order
shown[numbers] = shown[numbers].apply(lambda column: column.map(lambda v: "–" if pd.isna(v) else f"{v:.1f}"))
# every row visible without scrolling inside the table; "–": no number (no BWT for reference rows)
st.dataframe(shown, hide_index=True, height=36 * (len(shown) + 1) + 2)
