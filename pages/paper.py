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
from nufilt.paper import gap_share, paper_gap, paper_reference
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
summary_rows = [row for row in run.summary().itertuples() if row.steps]
results = {row.method: {"acc": row.acc, "bwt": row.bwt} for row in summary_rows}
source = f"this session's run ({run.steps_done}/{len(run.order)} tasks merged)"
# the tasks each method's ACC averages over (a method can be a step ahead after a failed step)
scored = {row.method: tuple(run.order[:row.steps]) for row in summary_rows}
if config.n_tasks in (8, 14, 20):
    with st.expander("Average over several of the paper's task orders (like Table 1)"):
        count = st.number_input("Number of the paper's orders (1..10)", 1, 10, 3, key="paper.orders")
        orders = paper_orders([t.name for t in backbone.tasks], list(range(1, int(count) + 1)))
        # (cache key, spec, order) per run; the session remembers which keys were computed
        jobs = [((config.backbone_key(), repr(spec), tuple(order)), spec, tuple(order)) for spec in specs
                for order in orders]
        done: list = st.session_state.setdefault("paper.computed", [])
        work = ui.work_job("paper")  # the runs go on in the background; the page polls them
        for (key, label, order), document in work.take().items():
            spec = next((spec for spec in specs if spec.label == label), None)
            if spec is not None and key not in done:  # (None: the method was dropped on Setup meanwhile)
                order_run(key, label, order, spec, backbone, document)
                done.append(key)
        if work.seconds:
            st.session_state["paper.seconds_per_run"] = sum(work.seconds) / len(work.seconds)
        ui.work_notes(work)
        missing = [job for job in jobs if job[0] not in done]

        def run_items(runs: list) -> list:
            """The job's items: one per run in this process, or one for all of them on Ray workers."""
            workers = appstate.grid_workers(config, len(runs), st.session_state.get("paper.seconds_per_run"))
            names = [f"{spec.label}, order {orders.index(list(order)) + 1}" for _, spec, order in runs]
            if workers is None:
                def one(key, spec, order):
                    return lambda keep, progress: keep((key, spec.label, order),
                                                       run_order(backbone, spec, list(order)).to_json())
                return [(name, one(*run)) for name, run in zip(names, runs, strict=True)]

            def on_workers(keep, progress) -> None:
                cells = [Cell(run_order, spec, order, name) for (_, spec, order), name in zip(runs, names, strict=True)]
                try:
                    values = run_grid(cells, workers, progress=progress).values
                except GridError as error:  # keep the runs that completed, then report the others
                    values = [error.values.get(i) for i in range(len(cells))]
                    failure = error
                else:
                    failure = None
                for (key, spec, order), computed in zip(runs, values, strict=True):
                    if computed is not None:
                        keep((key, spec.label, order), computed.to_json())
                if failure is not None:
                    raise failure

            return [(f"{len(runs)} runs on {workers.count} workers", on_workers)]

        if work.running:
            ui.work_panel(work, "paper.run", "Running the orders…")
        elif missing and st.button(f"Run every method on orders 1..{int(count)} ({len(missing)} runs)",
                                   key="paper.run"):
            refusal = work.start(run_items(missing))
            if refusal:
                st.warning(refusal)
            else:
                st.rerun()  # drawn again with the job running: the button off, Stop and the progress on
        if not missing:
            runs = [Run(**order_run(key, spec.label, order, spec, backbone)) for key, spec, order in jobs]
            summary = summarize(runs)
            results = {label: {"acc": s["acc_mean"], "acc_std": s["acc_std"], "bwt": s["bwt_mean"],
                               "bwt_std": s["bwt_std"]} for label, s in summary.items()}
            source = f"mean ± std over the paper's orders 1..{int(count)}"
            scored = dict.fromkeys(results, tuple(run.order))
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
    for claim, note in zip(checks["claim"], checks["note"], strict=True):  # the note column is off screen at 1000 px
        if note:
            st.caption(f"{claim}: {note}.")
    st.download_button("⬇ CSV", checks.to_csv(index=False), file_name="qualitative_checks.csv", mime="text/csv",
                       key="csv.qualitative_checks", on_click="ignore")
elif not paper_rows:
    st.info(f"The paper has no numbers for {config.backbone} with {config.n_tasks} tasks.")

table = appstate.comparison_table(results, paper_rows)
ui.chart(figures.paper_comparison_bars(table), table, "paper_comparison")

try:
    means = {tasks: reference_means(config.backbone_key(), tasks, backbone) for tasks in set(scored.values())}
except Exception as error:  # hub backbones may lack test data here; the table still shows
    means = {}
    st.caption(f"Reference accuracies unavailable: {error}")
# the share of the pre-trained -> individual gap a method closes: comparable across backbones of any size
paper_refs = paper_gap(paper_rows)
rows = []
for row in paper_rows:
    mine = results.get(row["label"] or "", {})
    own = means.get(scored.get(row["label"] or ""), {})  # the references of the tasks this method merged
    rows.append({"paper row": row["method"], "paper ACC": row["acc"], "paper BWT": row["bwt"],
                 "paper gap %": gap_share(row["acc"], paper_refs.get("pretrained"), paper_refs.get("individual")),
                 "run ACC": mine.get("acc"), "run BWT": mine.get("bwt"),
                 "run gap %": gap_share(mine.get("acc"), own.get("pretrained"), own.get("individual"))})
common = means.get(min(scored.values(), key=len), {})  # the tasks every method has merged
for name, value in common.items():
    rows.append({"paper row": f"this backbone: {name}", "run ACC": value,
                 "run gap %": gap_share(value, common.get("pretrained"), common.get("individual"))})
st.markdown(f"**Table {'2 (Flan-T5)' if reference_backbone.startswith('flan') else '1'}**, "
            f"{'ViT-B/32 (qualitative reference)' if embedded else reference_backbone}, {reference_tasks} tasks:")
numbers = ["paper ACC", "paper BWT", "paper gap %", "run ACC", "run BWT", "run gap %"]
table = pd.DataFrame(rows, columns=["paper row", *numbers])
table = table.iloc[table["run ACC"].isna().argsort(kind="stable")]  # this run's rows first, in the paper's order
text = table[numbers].apply(lambda column: column.map(lambda v: "–" if pd.isna(v) else f"{v:.1f}"))
# ACC and BWT share a column, so that all five fit a 1000 px window beside the sidebar;
# "–": no number (no BWT for reference rows)
pair = {side: (text[f"{side} ACC"] + " / " + text[f"{side} BWT"]).replace("– / –", "–") for side in ("paper", "run")}
shown = pd.DataFrame({"paper row": table["paper row"], "paper ACC / BWT": pair["paper"],
                      "paper gap %": text["paper gap %"], "run ACC / BWT": pair["run"], "run gap %": text["run gap %"]})
# every row visible without scrolling inside the table
st.dataframe(shown, hide_index=True, height=36 * (len(shown) + 1) + 2)
st.caption("gap %: the share of the gap from pre-trained to individual accuracy a method closes, "
           "100 (ACC − pre-trained) / (individual − pre-trained), each on its own backbone's numbers: "
           "comparable across backbones of any size, where ACC is not.")
