"""The app's Streamlit-free logic: orders, option widgets, run configs, the step-by-step run, exports."""

from __future__ import annotations

import io
import zipfile

import pandas as pd
import pytest
from safetensors.torch import load as load_safetensors

from nufilt import appstate
from nufilt.evaluation import acc_bwt, paper_orders

TASKS = [f"t{i}" for i in range(1, 9)]


# ---------------------------------------------------------------- orders


def test_orders_paper_random_custom_and_pool():
    assert appstate.resolve_order(TASKS, "paper", 2) == paper_orders(TASKS, [2])[0]
    shuffled = appstate.resolve_order(TASKS, "random", seed=3)
    assert sorted(shuffled) == sorted(TASKS) and shuffled == appstate.resolve_order(TASKS, "random", seed=3)
    assert shuffled != appstate.resolve_order(TASKS, "random", seed=4)
    assert appstate.resolve_order(TASKS, "custom", custom="8,7 6 5 -> 4, t3\nt2 → 1") == TASKS[::-1]
    assert appstate.resolve_order(TASKS[:3], "pool") == TASKS[:3]
    assert appstate.order_modes(3) == ["random", "custom", "pool"]  # no paper orders for 3 tasks


@pytest.mark.parametrize("text, reason", [
    ("", "empty"),
    ("t1, t2, nope", "unknown task"),
    ("t1, t1, t2, t3, t4, t5, t6, t7", "more than once"),
    ("t1, t2", "expected 8"),
    ("9", "out of range"),
])
def test_bad_custom_orders_say_why(text, reason):
    with pytest.raises(ValueError, match=reason):
        appstate.resolve_order(TASKS, "custom", custom=text)


def test_paper_orders_need_a_paper_group():
    with pytest.raises(ValueError, match="8, 14, 20"):
        appstate.resolve_order(TASKS[:5], "paper")


def test_task_groups_follow_the_pool():
    assert appstate.task_groups(20) == [8, 14, 20]
    assert appstate.task_groups(3) == [3]


# ---------------------------------------------------------------- options and configs


def test_option_fields_come_from_the_dataclass_with_paper_defaults_and_choices():
    fields = {f.name: f for f in appstate.option_fields("task_arithmetic", 14)}
    assert fields["scale"].kind == "float" and fields["scale"].value == 0.1  # Table 9 for 14 tasks
    nufilt = {f.name: f for f in appstate.option_fields("nufilt", 8, {"nufilt": {"r_p": 42}})}
    assert nufilt["r_p"].value == 42 and nufilt["r_p"].kind == "int"
    assert nufilt["filter"].kind == "choice" and nufilt["filter"].choices == ("null-space", "identity", "zero")
    assert nufilt["other_params"].kind == "choice" and "keep-pretrained" in nufilt["other_params"].choices
    assert "null-space rank" in nufilt["r_p"].help
    ablation = {f.name: f for f in appstate.option_fields("null_space_only", 8)}
    assert ablation["r_l"].value == 0
    assert {f.name: f for f in appstate.option_fields("lora_only", 8)}["filter"].value == "zero"
    assert appstate.option_fields("weight_average", 8) == []


def test_only_changed_options_are_overrides_and_configs_are_hashable():
    fields = appstate.option_fields("opcm", 8)
    assert appstate.changed_options(fields, {"alpha": 0.5}) == {}
    assert appstate.changed_options(fields, {"alpha": 0.7}) == {"alpha": 0.7}
    config = appstate.make_config("tiny-vit", 3, ["a", "b", "c"], ["opcm", "nufilt"], {"opcm": {"alpha": 0.7}})
    assert hash(config) == hash(appstate.make_config("tiny-vit", 3, ["a", "b", "c"], ["opcm", "nufilt"],
                                                     {"opcm": {"alpha": 0.7}}))
    assert config.options_for("opcm") == {"alpha": 0.7} and config.options_for("nufilt") == {}
    with pytest.raises(ValueError, match="at least one"):
        appstate.make_config("tiny-vit", 3, ["a"], [])
    with pytest.raises(ValueError, match="unknown method"):
        appstate.make_config("tiny-vit", 3, ["a"], ["nope"])


def test_parse_rank_values():
    assert appstate.parse_values("8, 0 4,4") == [0, 4, 8]
    assert appstate.parse_values("0-16:8") == [0, 8, 16]
    for bad in ("", "-1", "a", "8-4:2", "1-1000:1", ",".join(map(str, range(30)))):
        with pytest.raises(ValueError):
            appstate.parse_values(bad)
    assert len(appstate.parse_values("1-1000:50")) == 20


# ---------------------------------------------------------------- the run on the micro zoo


@pytest.fixture
def backbone(micro_zoo_dir):
    return appstate.open_backbone("tiny-vit", 3, preset="micro", cache_dir=str(micro_zoo_dir))


def make_run(backbone, methods=("nufilt", "task_arithmetic"), **options):
    order = [t.name for t in backbone.tasks][::-1]
    config = appstate.make_config("tiny-vit", 3, order, methods, options)
    return appstate.MultiRun(backbone, order, config.specs(backbone))


def test_the_embedded_zoo_is_ready_and_the_job_says_so(backbone):
    assert appstate.zoo_ready(backbone)
    job = appstate.PrepareJob(backbone)
    assert job.state == "ready"
    job.start()  # nothing to do
    assert job.wait(5) == "ready"


def test_a_failing_preparation_is_reported_not_raised():
    class Broken:
        name = "broken"

        def prepare(self):
            raise OSError("no network")

    job = appstate.PrepareJob(Broken())
    assert job.state == "idle"
    job.start()
    assert job.wait(10) == "failed" and "no network" in job.error


def test_multirun_steps_all_methods_and_records_every_table(backbone):
    run = make_run(backbone)
    assert run.steps_done == 0 and run.next_task() == run.order[0]
    messages = []
    run.step(lambda message, fraction: messages.append(fraction))
    assert run.steps_done == 1 and messages[-1] == 1.0
    run.run_to_end()
    assert run.finished and run.steps_done == 3 and run.next_task() is None
    accuracy = run.accuracy()
    assert len(accuracy) == 2 * 6 and set(accuracy["method"]) == {"nufilt", "task_arithmetic"}
    metrics = run.metrics()
    for label in run.labels:
        matrix = run.matrix(label)
        assert [len(row) for row in matrix] == [1, 2, 3]
        final = metrics[(metrics["method"] == label) & (metrics["step"] == 3)].iloc[0]
        assert (final["acc"], final["bwt"]) == pytest.approx(acc_bwt(matrix))
    layers = run.layers()  # NUFILT's filter, from its report: nothing is filtered at step 1 (θ̄1 = θ1)
    assert set(layers["method"]) == {"nufilt"} and set(layers["step"]) == {2, 3}
    assert layers["removed_energy"].between(0, 1).all() and set(layers["layer"]) == set(run.keys)
    assert (layers["r_p"] == run.specs["nufilt"].options["r_p"]).all()
    curves = run.loss_curves()
    assert set(curves["method"]) == {"nufilt"} and set(curves["step"]) == {2, 3}  # no LoRA fit at step 1
    losses = run.losses()
    assert losses[losses["step"] == 1]["stability"].isna().all()  # nothing merged before step 1
    assert (losses[losses["step"] > 1][["stability", "plasticity"]] >= 0).all().all()
    per_step, summary = run.loss_summary()
    assert list(summary["method"]) == ["nufilt", "task_arithmetic"]
    assert run.merged_state("nufilt") is not None


def test_old_task_statistics_are_a_running_mean(backbone):
    """The stability loss at step 3 uses the mean input covariance of tasks 1 and 2 (Eq. 3)."""
    from nufilt.analysis.activations import activation_statistics

    run = make_run(backbone, methods=("task_arithmetic",))
    run.run_to_end()
    old = run._old_covariance(3)[0]
    stats = [activation_statistics(run.backbone, task, keys=run.keys, n_samples=run.n_samples)
             for task in run.order[:2]]
    key = run.keys[0]
    expected = (stats[0][key].covariance.double() + stats[1][key].covariance.double()) / 2
    assert old[key].covariance.allclose(expected)


def test_reset_and_an_interrupted_step_is_finished_by_the_next(backbone):
    run = make_run(backbone)
    run.step()
    run._advance("nufilt")  # as if a rerun stopped step 2 after the first method
    assert run.steps_done == 1
    run.step()  # finishes step 2 for the other method only
    assert run.steps_done == 2
    assert list(run.metrics().groupby("method")["step"].max()) == [2, 2]
    run.reset()
    assert run.steps_done == 0 and run.accuracy().empty and run.messages == []


def test_a_failed_evaluation_leaves_the_multirun_unchanged_and_a_retry_succeeds(backbone, monkeypatch):
    run = make_run(backbone)
    run.step()
    tables = {name: list(rows) for name, rows in run._rows.items()}
    merged = {label: run.merged_state(label) for label in run.labels}
    original = run.backbone.evaluate

    def failing(state, tasks):
        raise RuntimeError("injected evaluation failure")

    monkeypatch.setattr(run.backbone, "evaluate", failing)
    with pytest.raises(RuntimeError, match="injected"):
        run.step()
    assert run.steps_done == 1 and {name: list(rows) for name, rows in run._rows.items()} == tables
    assert all(run.merged_state(label) is merged[label] for label in run.labels)
    assert all(run._methods[label].engine.steps_done == 1 for label in run.labels)
    monkeypatch.setattr(run.backbone, "evaluate", original)
    run.run_to_end()  # no "task 2 has exactly the weights of task 1"
    assert run.finished and [len(row) for row in run.matrix("nufilt")] == [1, 2, 3]


def _tables(run):
    """The run's tables without its timings (NaN equal to NaN)."""
    return {name: pd.DataFrame(rows).drop(columns=["merge_seconds", "eval_seconds", "analysis_seconds"],
                                          errors="ignore")
            for name, rows in run._rows.items()}


def test_methods_stepped_side_by_side_give_the_serial_run_exactly(micro_zoo_dir):
    # three methods on two threads: a pool thread runs two methods one after the other, and the
    # scoring backbone is shared (a fresh backbone each, so neither reuses the other's encoders)
    runs = []
    for workers in (1, 2):
        fresh = appstate.open_backbone("tiny-vit", 3, preset="micro", cache_dir=str(micro_zoo_dir), max_eval=40)
        run = make_run(fresh, methods=("nufilt", "opcm", "task_arithmetic"), nufilt={"r_p": 10_000})
        run.workers = workers
        assert run._worker_count(3) == workers
        run.run_to_end()
        runs.append(run)
    serial, parallel = runs
    expected = _tables(serial)
    for name, table in _tables(parallel).items():  # rows, values (bit for bit) and their order
        assert table.equals(expected[name]), name
    for label in serial.labels:
        merged, expected = parallel.merged_state(label), serial.merged_state(label)
        assert all(merged[key].equal(expected[key]) for key in expected)
    # the clamped-rank warning is raised in a step thread and still reaches the run, once, under its method
    assert parallel.messages == serial.messages and any("r_p=10000" in m for m in parallel.messages)
    assert [m["method"] for m in parallel._rows["metrics"][:3]] == ["nufilt", "opcm", "task_arithmetic"]


def test_a_method_failing_beside_others_commits_them_and_is_retried_alone(backbone, monkeypatch):
    run = make_run(backbone, methods=("nufilt", "opcm", "task_arithmetic"))
    run.workers = 3
    run.step()
    engine = run._methods["opcm"].engine
    original = engine.step

    def failing():
        raise RuntimeError("injected opcm failure")

    monkeypatch.setattr(engine, "step", failing)
    with pytest.raises(RuntimeError, match="injected opcm"):
        run.step()
    steps = {label: run._methods[label].steps for label in run.labels}
    assert steps == {"nufilt": 2, "opcm": 1, "task_arithmetic": 2} and run.steps_done == 1
    monkeypatch.setattr(engine, "step", original)
    run.step()  # finishes step 2 for opcm only
    assert {label: run._methods[label].steps for label in run.labels} == dict.fromkeys(run.labels, 2)
    assert sorted(m["method"] for m in run._rows["metrics"] if m["step"] == 2) == sorted(run.labels)


@pytest.mark.parametrize("track", [True, False])
def test_multirun_records_the_step_geometry_with_data_or_data_free(backbone, track):
    order = [t.name for t in backbone.tasks][::-1]
    config = appstate.make_config("tiny-vit", 3, order, ("nufilt", "task_arithmetic"), {})
    run = appstate.MultiRun(backbone, order, config.specs(backbone), track_losses=track)
    run.step()
    run.step()
    geometry = run.geometry()
    for step in (1, 2):
        part = geometry[(geometry["step"] == step) & (geometry["method"] == "nufilt")]
        assert len(part) == step * len(run.keys) and set(part["task"]) == set(order[:step])
    assert geometry["update_vector_affinity"].between(0, 1 + 1e-9).all()
    assert run.geometry_has_data == track
    assert geometry["update_affinity"].notna().all() == track and geometry["merged_affinity"].isna().all() != track
    run.reset()
    assert run.geometry().empty


def test_angles_and_spectra_are_recorded_once_turned_on_and_a_reset_run_repeats_the_geometry(backbone,
                                                                                           monkeypatch):
    order = [t.name for t in backbone.tasks]
    config = appstate.make_config("tiny-vit", 3, order, ("nufilt", "opcm"), {})
    run = appstate.MultiRun(backbone, order, config.specs(backbone))
    run.step()
    assert run.geometry_angles().empty and run.geometry_spectra().empty  # off by default
    run.track_spectra = True
    run.step()
    angles, spectra = run.geometry_angles(), run.geometry_spectra()
    assert set(angles["step"]) == set(spectra["step"]) == {2} and set(angles["method"]) == {"nufilt", "opcm"}
    assert angles["angle_degrees"].between(0, 90 + 1e-9).all() and (spectra["value"] >= 0).all()
    first = run.geometry()
    calls = []
    original = appstate.vector_bases
    monkeypatch.setattr(appstate, "vector_bases", lambda *a, **k: calls.append(a) or original(*a, **k))
    run.reset()  # the task-vector bases depend on the checkpoints only: kept, not recomputed
    run.track_spectra = False
    run.step()
    run.step()
    assert not calls
    pd.testing.assert_frame_equal(run.geometry(), first)  # the same numbers, bit for bit


def test_clamped_ranks_are_reported_once(backbone):
    run = make_run(backbone, methods=("nufilt",), nufilt={"r_p": 10_000})
    run.run_to_end()
    assert any("r_p=10000 exceeds" in message for message in run.messages)
    assert len(run.messages) == len(set(run.messages))


def test_fewer_test_images_per_task_when_scoring(micro_zoo_dir):
    full = appstate.open_backbone("tiny-vit", 3, preset="micro", cache_dir=str(micro_zoo_dir))
    fewer = appstate.open_backbone("tiny-vit", 3, preset="micro", cache_dir=str(micro_zoo_dir), max_eval=16)
    state = full.pretrained_state()
    names = [t.name for t in full.tasks]
    scores = fewer.evaluate(state, names)
    assert all(value * 16 / 100 == pytest.approx(round(value * 16 / 100)) for value in scores.values())
    assert full.evaluate(state, names) == pytest.approx(full.inner.inner.evaluate(state, names))


def test_export_zip_and_safetensors_hold_the_merged_model(backbone, tmp_path):
    run = make_run(backbone, methods=("task_arithmetic",))
    run.step()
    state, card = run.merged_state("task_arithmetic"), run.card_info("task_arithmetic")
    assert card["order"] == run.order[:1] and set(card["scores"]) == {run.order[0]}
    archive = zipfile.ZipFile(io.BytesIO(appstate.export_zip(backbone, state, card)))
    names = archive.namelist()
    assert "merged/README.md" in names and "merged/nufilt_merge.json" in names
    assert any(name.endswith(".safetensors") for name in names)
    tensors = load_safetensors(appstate.export_safetensors(state, card))
    assert set(tensors) == set(state)
    saved = appstate.save_to_folder(backbone, state, str(tmp_path / "out"), card)
    assert (saved / "README.md").is_file()
    with pytest.raises(FileExistsError):
        appstate.save_to_folder(backbone, state, str(tmp_path / "out"), card)
    with pytest.raises(ValueError, match="type a folder"):
        appstate.save_to_folder(backbone, state, "  ", card)


# ---------------------------------------------------------------- geometry and paper adapters


def test_ecdf_with_layers_matches_the_library_ecdf():
    table = pd.DataFrame({
        "data_task": ["a"] * 3, "vector_task": ["a"] * 3, "layer": ["l0", "l1", "l2"],
        "block": [0, 0, 1], "kind": ["attention", "mlp", "attention"], "d_in": [16, 64, 16], "r_d": 8, "r_v": 8,
        "affinity": [0.7, 0.2, 0.5], "baseline": [0.5, 0.125, 0.5],
    })
    ecdf = appstate.ecdf_with_layers(table, [("a", "a")])
    assert list(ecdf["layer"]) == ["l1", "l2", "l0"] and list(ecdf["affinity"]) == [0.2, 0.5, 0.7]
    assert list(ecdf["baseline"]) == [0.125, 0.5, 0.5] and list(ecdf["ecdf"]) == pytest.approx([1 / 3, 2 / 3, 1])
    assert list(appstate.ecdf_with_layers(table, [("a", "a")], "attention")["layer"]) == ["l2", "l0"]
    assert appstate.ecdf_with_layers(table, []).empty


def test_qualitative_checks_against_the_paper_rows():
    from nufilt.paper import paper_reference

    rows = paper_reference(*appstate.reference_column("tiny-vit", 8))
    run = {"nufilt": {"acc": 70, "bwt": -1}, "opcm": {"acc": 65, "bwt": -3}, "task_arithmetic": {"acc": 60, "bwt": -5}}
    checks = appstate.qualitative_checks(run, rows).set_index("claim")
    assert checks["paper"].tolist() == [True, True, True, True]
    assert checks["run"].tolist() == [True, True, True, True]
    worse = {**run, "nufilt": {"acc": 50, "bwt": -9}, "opcm": {"acc": 65, "bwt": 2}}
    assert appstate.qualitative_checks(worse, rows)["run"].tolist() == [False, False, False, False]
    assert checks.loc[appstate.QUALITATIVE_CLAIMS[3], "note"].startswith("τ = 1.00 over 3 methods")
    two = appstate.qualitative_checks({"nufilt": run["nufilt"], "opcm": run["opcm"]}, rows).set_index("claim")
    assert two.loc[appstate.QUALITATIVE_CLAIMS[3], "run"] is None
    assert "at least 3 methods" in two.loc[appstate.QUALITATIVE_CLAIMS[3], "note"] and "nufilt, opcm" in two.loc[
        appstate.QUALITATIVE_CLAIMS[3], "note"]
    alone = appstate.qualitative_checks({"opcm": run["opcm"]}, rows).set_index("claim")
    assert "needs nufilt" in alone.loc[appstate.QUALITATIVE_CLAIMS[0], "note"]
    table = appstate.comparison_table(run, rows)
    assert set(table["source"]) == {"paper", "this run"} and len(table) == 6
    assert appstate.reference_column("clip-vit-b16", 14) == ("clip-vit-b16", 14)
    assert appstate.reference_column("tiny-vit", 3) == ("clip-vit-b32", 8)


def test_app_jobs_go_to_ray_workers_only_when_they_outlast_the_start_up(monkeypatch):
    pytest.importorskip("ray")
    monkeypatch.delenv(appstate.APP_WORKERS_ENV, raising=False)
    order = [f"task{i}" for i in range(8)]
    cheap = appstate.make_config("tiny-vit", 8, order, ["nufilt"], preset="quick")
    default = appstate.make_config("tiny-vit", 8, order, ["nufilt"], preset="default")
    assert appstate.grid_workers(cheap, cells=30) is None  # a micro zoo's runs take about a second
    assert appstate.grid_workers(default, cells=30).count == 2  # not measured yet: the default zoo's runs are long
    assert appstate.grid_workers(default, cells=1) is None
    assert appstate.grid_workers(default, cells=30, seconds_per_cell=1.0) is None  # 30 s: less than Ray's start-up
    assert appstate.grid_workers(cheap, cells=30, seconds_per_cell=5.0).count == 2  # measured long after all
    monkeypatch.setenv(appstate.APP_WORKERS_ENV, "2")  # asked for explicitly: always on workers
    assert appstate.grid_workers(cheap, cells=3, seconds_per_cell=0.1).count == 2
    monkeypatch.setenv(appstate.APP_WORKERS_ENV, "0")
    assert appstate.grid_workers(default, cells=30) is None
    monkeypatch.setenv(appstate.APP_WORKERS_ENV, "two")
    with pytest.raises(ValueError, match="NUFILT_APP_WORKERS"):
        appstate.grid_workers(default, cells=30)


def test_a_step_scores_on_test_inputs_made_before_it(micro_zoo_dir, monkeypatch):
    """The run makes its order's test inputs in a background thread when it is opened, so a
    step only scores (one zoo task's generator takes ~0.8 s, which used to land inside a step)."""
    import threading

    from nufilt.zoo import build

    made: list[tuple[str, str, str]] = []
    real = build.make_split

    def counted(spec, split, size, seed):
        made.append((spec.name, split, threading.current_thread().name))
        return real(spec, split, size, seed)

    for thread in threading.enumerate():  # a run opened by an earlier test may still make its inputs
        if thread.name == "nufilt-warm":
            thread.join(60)
    monkeypatch.setattr(build, "make_split", counted)
    backbone = appstate.open_backbone("tiny-vit", 3, preset="micro", cache_dir=str(micro_zoo_dir), max_eval=16)
    run = make_run(backbone)
    for thread in threading.enumerate():
        if thread.name == "nufilt-warm":
            thread.join(60)
    assert sorted(made) == sorted((name, "test", "nufilt-warm") for name in run.order)
    made.clear()
    run.step()
    run.step()
    assert made == [] and run.steps_done == 2
