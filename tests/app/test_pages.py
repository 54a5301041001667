"""Every page of the app through its main path with AppTest, on the micro zoo (3 tasks)."""

from __future__ import annotations

import time

import pytest

from tests.app.helpers import APP, assert_clean, chart, chart_titles, forget_session_resources, settle, values

MERGE_CHARTS = ("Accuracy matrix", "ACC and BWT so far", "Per-task accuracy", "Energy removed", "LoRA loss")


def open_page(at, name: str):
    return at.switch_page(f"pages/{name}.py").run()


def heatmap_cells(at) -> list[float]:
    """The accuracy-matrix cells that hold a value (NaN and empty cells dropped)."""
    spec = chart(at, "Accuracy matrix")
    cells = [cell for trace in spec["data"] for cell in values(trace["z"])]
    return [cell for cell in cells if cell is not None and cell == cell]


# ---------------------------------------------------------------- Setup


def test_setup_shows_the_ready_zoo_the_order_and_the_default_methods(app):
    assert_clean(app)
    assert app.title[0].value == "Setup"
    assert any("3 task models ready" in s.value for s in app.success)
    assert app.session_state["setup.n_tasks"] == 3  # the micro pool has 3 tasks, not the paper's 8
    assert app.radio(key="setup.order_mode").value == "pool"  # the paper has no 3-task orders
    assert app.multiselect(key="setup.methods").value == ["nufilt", "opcm"]
    assert any("Run: 3 tasks" in i.value for i in app.info)
    assert "CPU" in " ".join(c.value for c in app.caption) or "CUDA" in " ".join(c.value for c in app.caption)


def test_a_bad_custom_order_is_an_error_and_the_page_keeps_working(app):
    app.radio(key="setup.order_mode").set_value("custom").run()
    app.text_area(key="setup.custom").set_value("ring-count, nonsense").run()
    assert not app.exception
    assert any("Bad task order" in e.value and "nonsense" in e.value for e in app.error)
    app.text_area(key="setup.custom").set_value("3, 1, 2").run()
    assert_clean(app)
    assert "`ring-count` → `bar-position` → `blob-quadrant`" in [m.value for m in app.markdown]


def test_a_bad_rank_is_an_error_with_the_reason(app):
    key = next(k for k in app.session_state.keys() if k.startswith("setup.opt.nufilt.r_p."))
    app.number_input(key=key).set_value(-4).run()
    assert not app.exception
    assert any("r_p must be >= 0" in e.value for e in app.error)
    open_page(app, "merge")  # the other pages say so too, instead of failing
    assert not app.exception
    assert any("not valid" in e.value for e in app.error)


def test_choices_survive_a_trip_to_another_page(app):
    app.multiselect(key="setup.methods").set_value(["nufilt", "task_arithmetic"]).run()
    open_page(app, "merge")
    open_page(app, "setup")
    assert app.multiselect(key="setup.methods").value == ["nufilt", "task_arithmetic"]


def test_a_hub_backbone_without_access_shows_why(app, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    app.selectbox(key="setup.backbone").set_value("clip-vit-b32").run()
    assert not app.exception
    app.button(key="prepare.start").click().run()
    deadline = time.monotonic() + 60
    while not app.error and time.monotonic() < deadline:  # the load runs in a background thread
        time.sleep(0.5)
        app.run()
    assert not app.exception
    assert any("Loading the backbone failed" in e.value and "openai/clip-vit-base-patch32" in e.value
               for e in app.error), [e.value for e in app.error]
    open_page(app, "merge")
    assert not app.exception  # no run without models: the page says where to go instead
    assert not app.get("plotly_chart")


# ---------------------------------------------------------------- Merge


def test_merge_page_steps_change_the_accuracy_matrix(app):
    open_page(app, "merge")
    assert_clean(app)
    titles = chart_titles(app)
    for expected in MERGE_CHARTS:
        assert any(t.startswith(expected) for t in titles), (expected, titles)
    assert heatmap_cells(app) == []  # no step yet

    settle(app.button(key="merge.step").click().run())
    assert_clean(app)
    after = heatmap_cells(app)
    assert len(after) == 2 and all(0 <= cell <= 100 for cell in after)  # a_1(θ̄_1) of each method
    assert any("Step 1 / 3" in m.value for m in app.markdown)
    assert len(app.metric) == 2  # ACC/BWT of nufilt and opcm
    assert all(m.label.endswith("after 1 task") and not m.delta for m in app.metric)  # no BWT at step 1

    settle(app.button(key="merge.end").click().run())
    assert_clean(app)
    assert any("Step 3 / 3" in m.value for m in app.markdown)
    assert all(m.label.endswith("after 3 tasks") and "BWT" in m.delta for m in app.metric)
    assert len(heatmap_cells(app)) == 2 * 6  # the lower triangle of 3x3, per method
    curves = chart(app, "LoRA loss")
    assert curves["data"], "NUFILT's LoRA loss curves are drawn at step 3"
    assert app.button(key="merge.step").disabled

    app.button(key="merge.reset").click().run()
    assert any("Step 0 / 3" in m.value for m in app.markdown)


def test_every_chart_offers_its_data_as_csv(app):
    open_page(app, "merge")
    settle(app.button(key="merge.step").click().run())
    keys = {button.key for button in app.get("download_button")}
    for name in ("accuracy_matrix", "acc_bwt", "task_accuracy", "removed_energy", "lora_loss"):
        assert f"csv.{name}" in keys
    assert {"merge.zip", "merge.safetensors"} <= keys


def test_the_merged_model_can_be_saved_to_a_folder(app, tmp_path, monkeypatch):
    open_page(app, "merge")
    settle(app.button(key="merge.step").click().run())
    target = tmp_path / "merged"
    app.text_input(key="merge.folder").set_value(str(target)).run()
    app.button(key="merge.save").click().run()  # tmp_path is outside the folder the server started in
    assert any("outside the folders this app may use" in e.value for e in app.error) and not target.exists()
    monkeypatch.setenv("NUFILT_ALLOWED_ROOTS", str(tmp_path))
    app.button(key="merge.save").click().run()
    assert_clean(app)
    assert any(str(target) in s.value for s in app.success)
    assert (target / "README.md").is_file() and (target / "nufilt_merge.json").is_file()
    app.button(key="merge.save").click().run()  # the folder is not empty any more
    assert any("Could not save" in e.value and "type a new or empty folder" in e.value for e in app.error)
    assert not any("overwrite=True" in e.value for e in app.error)  # the page has no such control


def test_folder_inputs_are_confined_to_the_allowed_roots(app, tmp_path, monkeypatch):
    """A visitor cannot make the server read a folder the operator did not allow, and with no
    allowed roots the Save control is gone."""
    monkeypatch.setenv("NUFILT_ALLOWED_ROOTS", str(tmp_path / "allowed"))
    app.selectbox(key="setup.backbone").set_value("local:").run()
    app.text_input(key="setup.path").set_value("/etc").run()
    open_page(app, "merge")
    assert any("outside the folders this app may use" in e.value and "/etc" in e.value for e in app.error)
    monkeypatch.setenv("NUFILT_ALLOWED_ROOTS", "")
    open_page(app, "setup")
    app.selectbox(key="setup.backbone").set_value("tiny-vit").run()
    open_page(app, "merge")
    settle(app.button(key="merge.step").click().run())
    assert not [t for t in app.text_input if t.key == "merge.folder"]
    assert any("Saving to a folder on the server is off" in c.value for c in app.caption)


# ---------------------------------------------------------------- Geometry, stability, ranks, paper


def test_geometry_page_draws_affinity_heatmaps_and_ecdfs(app):
    open_page(app, "geometry")
    assert_clean(app)
    heatmaps = chart(app, "Subspace affinity")
    assert len(heatmaps["data"]) == 2  # mean and p90
    ecdf = chart(app, "ECDF")
    assert any("random subspace" in trace["name"] for trace in ecdf["data"])
    assert "layer" in ecdf["data"][0]["hovertemplate"]
    assert app.dataframe  # diagonal dominance

    app.radio(key="geometry.kind").set_value("mlp").run()
    assert_clean(app)
    app.number_input(key="geometry.r_d").set_value(100000).run()  # r_d > r_v: clamped (Eq. 5), like r_v
    assert_clean(app)
    assert any("r_d=100000" in w.value and "clamped to 8" in w.value for w in app.warning)


def test_without_task_data_the_geometry_page_shows_the_data_free_view_with_a_note(app):
    app.checkbox(key="setup.track_losses").uncheck().run()  # no task statistics in this run
    open_page(app, "geometry")
    settle(app.button(key="geometry.step").click().run())
    assert_clean(app)
    assert any("data-free view" in i.value for i in app.info)
    free = chart(app, "update vs task vector")  # the only live heatmap: update_vector_affinity
    assert len(free["data"]) == 2 and values(free["data"][0]["x"]) == ["step 1"]
    assert not any(title.startswith(("update affinity", "merged affinity")) for title in chart_titles(app))
    assert chart(app, "update vs task vector ‖V(Δt)ᵀV(τi)‖²/r_v (data-free) over layers at step 1")["data"]


def test_a_merge_step_adds_a_column_to_the_live_geometry_heatmap(app):
    open_page(app, "geometry")
    assert_clean(app)
    assert not chart(app, "update affinity")["data"]  # nothing merged yet: an empty figure
    columns = []
    for step in (1, 2):
        if step == 2:  # angles and spectra are off by default (they cost a step time); on from step 2
            assert any("turn them on" in c.value for c in app.caption)
            app.toggle(key="geometry.spectra").set_value(True).run()
        settle(app.button(key="geometry.step").click().run())
        assert_clean(app)
        spec = chart(app, "update affinity")
        assert len(spec["data"]) == 2  # one heatmap per method (nufilt, opcm), one colour scale
        assert all(trace["zmin"] == 0 and trace["zmax"] == 1 for trace in spec["data"])
        columns.append(values(spec["data"][0]["x"]))
        cells = [c for c in values(spec["data"][0]["z"]) if c is not None and c == c]
        assert cells and all(0 <= c <= 1 for c in cells)
    assert columns == [["step 1"], ["step 1", "step 2"]]
    assert [frame["name"] for frame in spec["frames"]] == ["1", "2"]  # ▶ Play animates the two steps
    assert [s["label"] for s in spec["layout"]["sliders"][0]["steps"]] == ["1", "2"]
    assert chart(app, "merged affinity")["data"]
    ecdf = chart(app, "update affinity A(V_d(i), V(Δt)) over layers at step 2")  # the ECDF of the step
    assert len(ecdf["data"]) == 2 * 2  # two methods x two seen tasks
    first = app.session_state["geometry.tasks.2"][0]
    app.multiselect(key="geometry.tasks.2").set_value([first]).run()  # the task chooser
    assert_clean(app)
    ecdf = chart(app, "update affinity A(V_d(i), V(Δt)) over layers at step 2")
    assert len(ecdf["data"]) == 2 and all(first in trace["name"] for trace in ecdf["data"])
    app.select_slider(key="geometry.step.2").set_value(1).run()  # the step slider
    assert_clean(app)
    assert chart(app, "update affinity A(V_d(i), V(Δt)) over layers at step 1")["data"]
    angles = chart(app, "Principal angles")  # angles exist from step 2 on: the per-step panel has them
    assert any(values(trace["y"]) for trace in angles["data"])
    spectra = chart(app, "Spectrum of the merged task vector")
    assert [values(trace["x"]) for trace in spectra["data"] if trace["xaxis"] == "x2"] == [[2], [2]]
    open_page(app, "merge")  # the same run: the compact panel shows both steps
    lines = chart(app, "Where each update lands")
    assert {len(values(trace["x"])) for trace in lines["data"]} == {2}


def test_stability_page_shows_both_losses_after_two_steps(app):
    open_page(app, "stability")
    assert_clean(app)
    settle(app.button(key="stability.step").click().run())
    settle(app.button(key="stability.step").click().run())
    assert_clean(app)
    lines = chart(app, "Stability, plasticity")
    assert {trace["name"] for trace in lines["data"]} == {"nufilt", "opcm"}
    summary = chart(app, "Mean over steps")
    assert summary["data"] and len(values(summary["data"][0]["x"])) == 2


@pytest.mark.slow
def test_ranks_page_estimates_the_work_from_the_runs_own_steps_before_any_point(app):
    open_page(app, "ranks")
    labels = [b.label for b in app.button if b.key == "ranks.compute"]
    assert labels and "about" not in labels[0]  # nothing measured yet: no invented estimate
    open_page(app, "merge")
    settle(app.button(key="merge.step").click().run())
    open_page(app, "ranks")
    labels = [b.label for b in app.button if b.key == "ranks.compute"]
    assert len(labels) == 1 and ", about " in labels[0] and labels[0].endswith(" s"), labels


def test_ranks_page_computes_points_once_and_reuses_them(app):
    open_page(app, "ranks")
    assert_clean(app)
    app.text_input(key="ranks.values.r_p").set_value("0, 4").run()
    settle(app.button(key="ranks.compute").click().run())
    assert_clean(app)
    curve = chart(app, "NUFILT rank sensitivity: r_p")
    assert values(curve["data"][0]["x"]) == [0, 4]
    app.text_input(key="ranks.values.r_p").set_value("0, 4, 8").run()
    labels = [b.label for b in app.button if b.key == "ranks.compute"]
    assert len(labels) == 1 and labels[0].startswith("Compute 1 missing point(s), about ")  # timed from the first two
    app.text_input(key="ranks.values.r_p").set_value("0, x").run()
    assert not app.exception
    assert any("Bad ranks" in e.value for e in app.error)
    app.text_input(key="ranks.values.r_p").set_value("1-1000:1").run()  # 1000 points: refused before any work
    assert any("at most 24" in e.value for e in app.error)
    app.text_input(key="ranks.values.r_p").set_value("4, 100000").run()
    settle(app.button(key="ranks.compute").click().run())
    assert_clean(app)
    assert any("clamped to" in w.value for w in app.warning)
    curve = chart(app, "NUFILT rank sensitivity: r_p")
    assert max(values(curve["data"][0]["x"])) < 100000  # plotted where it was computed: the layer size


@pytest.mark.slow
def test_ranks_page_computes_its_points_on_two_ray_workers(app, monkeypatch):
    ray = pytest.importorskip("ray")
    monkeypatch.setenv("NUFILT_APP_WORKERS", "2")
    open_page(app, "ranks")
    app.text_input(key="ranks.values.r_p").set_value("0, 4").run()
    try:
        settle(app.button(key="ranks.compute").click().run(timeout=300), timeout=600)
        assert ray.is_initialized()  # the grid ran on Ray, whose session the app keeps for the next job
    finally:
        ray.shutdown()
    assert_clean(app)
    assert values(chart(app, "NUFILT rank sensitivity: r_p")["data"][0]["x"]) == [0, 4]
    monkeypatch.setenv("NUFILT_APP_WORKERS", "0")  # the points are cached: adding one computes only it
    app.text_input(key="ranks.values.r_p").set_value("0, 4, 8").run()
    assert [b.label for b in app.button if b.key == "ranks.compute"][0].startswith("Compute 1 missing point(s)")

def test_paper_page_compares_the_run_qualitatively_on_the_embedded_zoo(app):
    open_page(app, "merge")
    settle(app.button(key="merge.end").click().run())
    open_page(app, "paper")
    assert_clean(app)
    assert any("qualitative" in w.value for w in app.warning)
    bars = chart(app, "This run beside the paper")
    assert {trace["name"] for trace in bars["data"]} == {"paper", "this run"}
    claims = app.dataframe[0].value
    assert "NUFILT has the highest ACC of the continual methods" in list(claims["claim"])
    # two methods cannot be ranked: the reason is on the page, not only in a column off screen
    assert any("Kendall" in c.value and "at least 3 methods" in c.value for c in app.caption)
    # Table 1 beside the run, with the share of each backbone's pre-trained -> individual gap
    table = app.dataframe[1].value.set_index("paper row")
    assert table.loc["NUFILT (Ours)", "paper ACC / BWT"] == "83.6 / -2.7"
    assert table.loc["NUFILT (Ours)", "paper gap %"] == "83.9"  # ViT-B/32, 8 tasks: (83.6 - 48.1) / (90.4 - 48.1)
    assert (table.loc["Pre-Trained", "paper gap %"], table.loc["Individual", "paper gap %"]) == ("0.0", "100.0")
    pretrained, individual, nufilt = (float(table.loc[row, "run ACC / BWT"].split(" / ")[0]) for row in
                                      ("this backbone: pretrained", "this backbone: individual", "NUFILT (Ours)"))
    assert individual > pretrained
    # the shown numbers are rounded to 0.1: the share lies within what their ±0.05 allow
    corners = [100 * (n - p) / (i - p) for n in (nufilt - 0.05, nufilt + 0.05)
               for p in (pretrained - 0.05, pretrained + 0.05) for i in (individual - 0.05, individual + 0.05)]
    assert min(corners) - 0.05 <= float(table.loc["NUFILT (Ours)", "run gap %"]) <= max(corners) + 0.05
    assert table.loc["this backbone: individual", "run gap %"] == "100.0"
    assert table.loc["Ties-Merging", "run gap %"] == table.loc["Ties-Merging", "run ACC / BWT"] == "–"  # not run


def test_paper_page_sets_a_partial_run_against_the_references_of_its_merged_tasks(app, micro_zoo):
    """After one step the run's ACC is the first task's accuracy: the reference rows and the gap
    are that task's, not the whole order's."""
    open_page(app, "merge")
    settle(app.button(key="merge.step").click().run())
    open_page(app, "paper")
    assert_clean(app)
    table = app.dataframe[1].value.set_index("paper row")
    reference = micro_zoo.reference()
    first = micro_zoo.tasks[0].name  # the micro pool's order starts with its first task
    for row in ("pretrained", "individual"):  # shown to one decimal
        shown = table.loc[f"this backbone: {row}", "run ACC / BWT"]
        assert shown.endswith(" / –")  # a reference row has no BWT
        assert float(shown.split(" / ")[0]) == pytest.approx(reference[row][first], abs=0.051)
    whole = {row: sum(scores.values()) / len(scores) for row, scores in reference.items()}
    assert abs(whole["pretrained"] - reference["pretrained"][first]) > 0.5  # the check can tell the two apart
    # NUFILT's gap % is against the first task's references too
    nufilt = float(table.loc["NUFILT (Ours)", "run ACC / BWT"].split(" / ")[0])
    pretrained, individual = reference["pretrained"][first], reference["individual"][first]
    shares = [100 * (n - pretrained) / (individual - pretrained) for n in (nufilt - 0.05, nufilt + 0.05)]
    assert min(shares) - 0.05 <= float(table.loc["NUFILT (Ours)", "run gap %"]) <= max(shares) + 0.05


def test_a_missing_zoo_is_built_in_the_background_with_progress(micro_zoo_dir, tmp_path, monkeypatch):
    """A fresh cache without one task model: the Setup page starts the build and shows its progress."""
    import shutil

    from streamlit.testing.v1 import AppTest

    from nufilt.zoo.build import finetuned_root
    from nufilt.zoo.config import resolve_config

    cache = tmp_path / "cache"
    shutil.copytree(micro_zoo_dir, cache)
    config = resolve_config("micro")
    shutil.rmtree(finetuned_root(config, cache) / config.tasks[-1])  # one fine-tuned model to rebuild
    monkeypatch.setenv("NUFILT_ZOO_PRESET", "micro")
    monkeypatch.setenv("NUFILT_CACHE_DIR", str(cache))
    forget_session_resources()
    at = AppTest.from_file(str(APP), default_timeout=120).run()
    assert not at.exception
    assert at.get("progress"), "the build shows a progress bar"
    deadline = time.monotonic() + 300
    while not at.success and time.monotonic() < deadline:
        time.sleep(1.0)
        at.run()
    assert_clean(at)
    assert any("3 task models ready (built/checked in" in s.value for s in at.success)
