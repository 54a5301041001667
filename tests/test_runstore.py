"""Saved runs (`nufilt.appstate.runstore`) and the background job (`nufilt.appstate.runjob`) on the micro zoo."""

from __future__ import annotations

import pytest
import torch

from nufilt import appstate
from nufilt.appstate import runstore
from nufilt.appstate.runjob import RunJob


@pytest.fixture
def config_and_backbone(micro_zoo_dir):
    backbone = appstate.open_backbone("tiny-vit", 3, "micro", str(micro_zoo_dir), max_eval=32)
    order = [task.name for task in backbone.tasks]
    config = appstate.make_config("tiny-vit", 3, order, ["nufilt", "opcm"], preset="micro",
                                  cache_dir=str(micro_zoo_dir), track_losses=False, max_eval=32)
    return config, backbone


def new_run(config, backbone) -> appstate.MultiRun:
    return appstate.MultiRun(backbone, config.order, config.specs(backbone), config.track_losses)


def test_a_saved_run_is_restored_and_goes_on_exactly_as_the_original(config_and_backbone, tmp_path):
    config, backbone = config_and_backbone
    original = new_run(config, backbone)
    original.step()
    original.step()
    path = runstore.save_run(original, config, folder=tmp_path)
    assert path.parent == tmp_path and not list(tmp_path.glob(".*.tmp"))  # written through a temporary file

    restored = new_run(config, backbone)
    assert runstore.load_run(restored, config, folder=tmp_path) == {"steps": 2, "target": 2}
    for table in ("accuracy", "metrics", "layers", "loss_curves", "geometry"):
        mine, theirs = getattr(original, table)(), getattr(restored, table)()
        assert mine.shape == theirs.shape and mine.columns.equals(theirs.columns), table
    assert restored.matrix("nufilt") == original.matrix("nufilt")
    original.step()
    restored.step()  # the third step merges from the restored models and merger statistics
    for label in original.labels:
        first, second = original.merged_state(label), restored.merged_state(label)
        assert all(torch.equal(first[key], second[key]) for key in first), label
    assert restored.matrix("opcm") == original.matrix("opcm")


def test_another_configuration_does_not_see_the_saved_run(config_and_backbone, tmp_path):
    config, backbone = config_and_backbone
    run = new_run(config, backbone)
    run.step()
    runstore.save_run(run, config, folder=tmp_path)
    other = appstate.make_config("tiny-vit", 3, list(reversed(config.order)), ["nufilt", "opcm"], preset="micro",
                                 cache_dir=config.cache_dir, track_losses=False, max_eval=32)
    assert runstore.run_path(other, tmp_path) != runstore.run_path(config, tmp_path)
    assert runstore.load_run(new_run(other, backbone), other, folder=tmp_path) is None
    runstore.forget_run(config, folder=tmp_path)
    assert runstore.load_run(new_run(config, backbone), config, folder=tmp_path) is None


def test_a_damaged_file_is_ignored_with_a_warning(config_and_backbone, tmp_path):
    config, backbone = config_and_backbone
    runstore.run_path(config, tmp_path).parent.mkdir(parents=True, exist_ok=True)
    runstore.run_path(config, tmp_path).write_bytes(b"not a run")
    run = new_run(config, backbone)
    with pytest.warns(UserWarning, match="ignoring the saved run"):
        assert runstore.load_run(run, config, folder=tmp_path) is None
    assert run.steps_done == 0


def test_the_runs_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(runstore.ENV_RUNS_DIR, raising=False)
    assert runstore.runs_dir(tmp_path) == tmp_path / "runs"
    monkeypatch.setenv(runstore.ENV_RUNS_DIR, str(tmp_path / "elsewhere"))
    assert runstore.runs_dir(tmp_path) == tmp_path / "elsewhere"


# ---------------------------------------------------------------- the background job


def test_a_job_runs_the_steps_asked_for_and_refuses_stale_or_busy_clicks(config_and_backbone, tmp_path):
    config, backbone = config_and_backbone
    saved: list[int] = []
    job = RunJob(new_run(config, backbone), save=lambda run, target: saved.append(run.steps_done))
    assert job.request(shown=0, steps=1) is None
    busy = job.request(shown=0, steps=1)  # the second click of a double click, while step 1 runs
    assert job.wait(120)
    assert job.steps_done == 1 and saved == [1]
    if busy is not None:
        assert "still running" in busy or "the page showed step 0" in busy
    stale = job.request(shown=0, steps=1)  # drawn at step 0, arriving after step 1: refused
    assert stale is not None and "showed step 0 but the run is at step 1" in stale
    assert job.steps_done == 1
    assert job.request(shown=1, steps=None) is None  # to the end
    assert job.wait(120) and job.steps_done == 3 and saved == [1, 2, 3]
    assert "All 3 tasks are merged" in job.request(shown=3)


def test_stop_ends_a_run_to_the_end_after_the_step_in_progress(config_and_backbone):
    config, backbone = config_and_backbone
    run = new_run(config, backbone)
    job = RunJob(run)
    assert job.request(shown=0, steps=None) is None
    assert "A step is running" in (job.reset() or "")  # no reset under a running step
    job.stop()
    assert job.wait(120)
    assert job.stopped_at is not None and job.steps_done == job.stopped_at < 3
    assert job.reset() is None and run.steps_done == 0


def test_a_watched_run_waits_until_each_step_is_drawn_and_an_unwatched_one_does_not(config_and_backbone):
    import threading
    import time

    config, backbone = config_and_backbone
    job = RunJob(new_run(config, backbone))
    job.pace, job.view_timeout = 0.3, 30.0
    drawn_at: dict[int, int] = {}  # step drawn -> the run's step count when the page drew it

    def page() -> None:  # what `pages/ui.follow` does for one open page: watch, draw each step late
        shown = 0
        while job.running or job.steps_done > shown:
            if job.steps_done > shown:
                time.sleep(0.5)  # a slow browser: the step reaches the screen half a second later
                shown = job.steps_done
                drawn_at[shown] = job.run.steps_done
                job.drawn(shown)
            else:
                job.watching()
                time.sleep(0.02)

    assert job.request(shown=0, steps=None) is None
    viewer = threading.Thread(target=page)
    viewer.start()
    assert job.wait(120)
    viewer.join(30)
    # every step was drawn before the next one was merged: the page saw 1, 2, 3 in turn
    assert drawn_at == {1: 1, 2: 2, 3: 3}
    assert job.waited >= 2 * (0.5 + 0.3) - 0.1  # two waits (after steps 1 and 2), each drawing + pace
    assert "showing each step" in job.message

    assert job.reset() is None
    job.view_timeout = 30.0
    assert job.request(shown=0, steps=None) is None  # nobody watching: no waiting
    assert job.wait(120) and job.steps_done == 3 and job.waited == 0.0
