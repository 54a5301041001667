"""The run engine: one step merges, scores and analyses, atomically (on the micro zoo)."""

import pytest
import torch

from nufilt.analysis.runs import CachedBackbone, resolve_spec
from nufilt.engine import RunEngine, score_none
from nufilt.evaluation import run_order
from nufilt.merge import Merger


class _FailingOnce(CachedBackbone):
    """Evaluation raises the first time it is asked after `fail_at` evaluations."""

    def __init__(self, inner, fail_at):
        super().__init__(inner)
        self.calls = 0
        self.fail_at = fail_at

    def evaluate(self, merged, tasks):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("injected evaluation failure")
        return self.inner.evaluate(merged, tasks)


def _snapshot(engine):
    merger = engine.merger
    method = {k: v for k, v in vars(merger.method).items() if k != "options"}
    return merger.step, merger.merged, dict(merger._fingerprints), repr(method), engine.merged


@pytest.mark.parametrize("method", ["nufilt", "task_arithmetic", "opcm"])
def test_a_failed_evaluation_leaves_the_run_unchanged_and_a_retry_succeeds(micro_zoo, method):
    order = [t.name for t in micro_zoo.tasks]
    spec = resolve_spec(micro_zoo, method, len(order))
    reference = run_order(CachedBackbone(micro_zoo), spec, order)
    backbone = _FailingOnce(micro_zoo, fail_at=2)
    engine = RunEngine(backbone, spec, order)
    first = engine.step()
    before = _snapshot(engine)
    with pytest.raises(RuntimeError, match="injected"):
        engine.step()
    assert _snapshot(engine) == before and engine.steps_done == 1 and engine.merged is first.merged
    rows = [[first.scores[t] for t in order[:1]]]
    rows += [[record.scores[t] for t in order[: record.step]] for record in engine]  # retry, then the rest
    assert engine.steps_done == len(order)
    assert rows == reference.accuracy_matrix  # the retried run is the uninterrupted one


def test_a_failed_analysis_rolls_back_too_and_records_chain(micro_zoo):
    order = [t.name for t in micro_zoo.tasks]
    spec = resolve_spec(micro_zoo, "task_arithmetic", len(order))
    failures = iter([False, True])

    def analyze(record):
        if next(failures, False):
            raise ValueError("injected statistics failure")
        return record.step * 10

    engine = RunEngine(CachedBackbone(micro_zoo), spec, order, score=score_none, analyze=analyze)
    first = engine.step()
    assert first.analysis == 10 and first.scores == {} and first.previous is first.pretrained
    with pytest.raises(ValueError, match="statistics"):
        engine.step()
    second = engine.step()
    assert second.step == 2 and second.analysis == 20 and second.previous is first.merged
    engine.step()
    assert engine.finished
    with pytest.raises(ValueError, match="finished"):
        engine.step()


def test_a_merger_transaction_restores_the_method_statistics(micro_zoo):
    pretrained = micro_zoo.pretrained_state()
    tasks = [micro_zoo.finetuned_state(t.name) for t in micro_zoo.tasks]
    merger = Merger("opcm", pretrained)
    merger.add(tasks[0])
    state = {k: v for k, v in vars(merger.method).items() if k != "options"}
    with pytest.raises(KeyError), merger.transaction():
        merger.add(tasks[1])
        raise KeyError("after the merge")
    assert merger.step == 1
    assert {k: v for k, v in vars(merger.method).items() if k != "options"}.keys() == state.keys()
    assert repr({k: v for k, v in vars(merger.method).items() if k != "options"}) == repr(state)
    merged = merger.add(tasks[1])  # not "task 2 has exactly the weights of task 1"
    assert merger.step == 2 and all(torch.isfinite(v).all() for v in merged.values() if v.is_floating_point())
    with merger.transaction(), pytest.raises(RuntimeError, match="nest"), merger.transaction():
        pass


def test_a_spilled_run_keeps_its_previous_file_until_the_step_succeeds(micro_zoo, tmp_path):
    pretrained = micro_zoo.pretrained_state()
    tasks = [micro_zoo.finetuned_state(t.name) for t in micro_zoo.tasks]
    merger = Merger("task_arithmetic", pretrained, spill_dir=tmp_path)
    first = dict(merger.add(tasks[0]))
    with pytest.raises(KeyError), merger.transaction():
        merger.add(tasks[1])
        raise KeyError("after the merge")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged-step1.safetensors"]
    assert all(torch.equal(merger.merged[k], first[k]) for k in first)
    with merger.transaction():
        merger.add(tasks[1])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged-step2.safetensors"]
