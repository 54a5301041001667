"""The app's shared state under two sessions (threads) at once."""

from __future__ import annotations

import threading
import time

import torch

from nufilt import appstate
from nufilt.analysis import activations
from nufilt.analysis.runs import CachedBackbone
from nufilt.backbones.base import Backbone, TaskInfo


class SlowBackbone(Backbone):
    """Counts calls and how many run at once; `prepare` fails the first `fail` times."""

    name, family = "slow", "test"

    def __init__(self, fail: int = 0) -> None:
        self.calls = {"prepare": 0, "pretrained": 0, "finetuned": 0}
        self.active = self.most_active = 0
        self.fail = fail
        self._count = threading.Lock()

    def _enter(self, what: str) -> None:
        with self._count:
            self.calls[what] += 1
            self.active += 1
            self.most_active = max(self.most_active, self.active)
        time.sleep(0.05)
        with self._count:
            self.active -= 1

    @property
    def tasks(self) -> list[TaskInfo]:
        return [TaskInfo(name="a", classes=("x", "y"))]

    def prepare(self) -> None:
        self._enter("prepare")
        if self.calls["prepare"] <= self.fail:
            raise RuntimeError("the first build fails")

    def reference(self):
        self.prepare()
        return {"pretrained": {"a": 50.0}, "individual": {"a": 90.0}}

    def pretrained_state(self):
        self._enter("pretrained")
        return {"w": torch.zeros(2, 2)}

    def finetuned_state(self, task: str):
        self._enter("finetuned")
        return {"w": torch.ones(2, 2)}

    def evaluate(self, state, tasks):
        return {t: 0.0 for t in tasks}

    def build_encoder(self, state):
        raise NotImplementedError

    def activation_batches(self, task, n_samples, split="test"):
        raise NotImplementedError


def _together(count: int, target) -> None:
    barrier = threading.Barrier(count)

    def run() -> None:
        barrier.wait()
        target()

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_two_sessions_pressing_try_again_start_one_build():
    backbone = SlowBackbone(fail=1)
    job = appstate.PrepareJob(backbone)
    job.start()
    assert job.wait(5) == "failed" and backbone.calls["prepare"] == 1
    _together(2, job.start)  # both sessions see "failed" and press "Try again"
    assert job.wait(5) == "ready"
    assert backbone.calls["prepare"] == 2 and backbone.most_active == 1


def test_models_are_loaded_once_when_two_sessions_ask_at_once():
    cached = CachedBackbone(SlowBackbone())
    twin = CachedBackbone(cached)  # a second wrapper shares the cache (and its lock)
    _together(4, lambda: (cached.finetuned_state("a"), twin.finetuned_state("a"), twin.pretrained_state()))
    assert cached.inner.calls["finetuned"] == 1 and cached.inner.calls["pretrained"] == 1


def test_reference_never_runs_a_second_build_beside_a_running_one():
    inner = SlowBackbone()
    app_backbone = appstate.AppBackbone.__new__(appstate.AppBackbone)  # no zoo config needed
    appstate.DelegatingBackbone.__init__(app_backbone, inner)
    app_backbone.max_eval, app_backbone._lock = None, threading.RLock()
    job = appstate.PrepareJob(app_backbone)
    _together(3, lambda: (job.start(), app_backbone.reference()))
    job.wait(5)
    assert inner.most_active == 1  # prepare() never ran twice at the same time


def test_the_statistics_memo_survives_concurrent_sessions():
    activations.clear_memory_cache()
    errors = []
    stats = {"layer": None}

    def hammer(offset: int) -> None:
        try:
            for i in range(3000):
                key = f"k{(i + offset) % (activations._MEMORY_SIZE + 8)}"
                if activations._recall(key) is None:
                    activations._remember(key, stats)
        except Exception as error:  # a KeyError from check-then-move without the lock
            errors.append(error)

    barrier = threading.Barrier(6)
    threads = [threading.Thread(target=lambda o=o: (barrier.wait(), hammer(o))) for o in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    activations.clear_memory_cache()
    assert not errors
    assert len(activations._MEMORY) == 0
