"""The Ranks and Compare pages' background work (`nufilt.appstate.WorkJob`), without Streamlit."""

from __future__ import annotations

import threading

from nufilt.appstate.workjob import WorkJob


def _item(name, gate=None, fail=False):
    def work(keep, progress):
        progress(f"{name}: half", 0.5)
        if gate is not None:
            gate.wait(10)
        if fail:
            raise ValueError(f"{name} is bad")
        keep(name, name.upper())

    return (name, work)


def test_items_run_in_order_and_their_results_are_taken_once():
    job = WorkJob()
    assert job.start([_item("a"), _item("b")]) is None
    assert job.wait(10)
    assert job.take() == {"a": "A", "b": "B"} and job.take() == {}
    assert len(job.seconds) == 2 and job.error is None and not job.stopped
    assert job.fraction == 1.0 and job.message == "2 of 2 done"


def test_stop_ends_after_the_item_in_progress_and_keeps_what_was_computed():
    job, gate = WorkJob(), threading.Event()
    assert job.start([_item("a", gate), _item("b"), _item("c")]) is None
    assert "still running" in job.start([_item("x")])  # a second start while it runs is refused
    job.stop()
    gate.set()
    assert job.wait(10)
    assert job.take() == {"a": "A"} and job.stopped and "(stopped)" in job.message


def test_a_failing_item_ends_the_job_with_its_reason_and_keeps_the_earlier_results():
    job = WorkJob()
    assert job.start([_item("a"), _item("b", fail=True), _item("c")]) is None
    assert job.wait(10)
    assert job.take() == {"a": "A"} and job.error == "b: b is bad" and not job.stopped
    assert job.start([_item("c")]) is None and job.wait(10)  # a new start clears the error
    assert job.error is None and job.take() == {"c": "C"}
