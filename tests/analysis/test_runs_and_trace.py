"""Merge runs as the analyses see them, and the per-step trace (on the micro zoo)."""

import math

import pytest
import torch

from nufilt.analysis.activations import selected_layers
from nufilt.analysis.runs import CachedBackbone, merge_steps, resolve_spec
from nufilt.analysis.trace import LAYER_COLUMNS, Trace, trace_run


class _Counting(CachedBackbone):
    """Counts the loads that reach the wrapped backbone."""

    loads = 0

    def __init__(self, inner):
        super().__init__(inner)
        original = self.inner.finetuned_state

        def counted(task):
            _Counting.loads += 1
            return original(task)

        self._load = counted

    def finetuned_state(self, task):
        if task not in self._states:
            self._states[task] = self._load(task)
        return dict(self._states[task])


def test_cached_backbone_loads_each_model_once_and_delegates(micro_zoo):
    cached = _Counting(micro_zoo)
    names = [t.name for t in cached.tasks]
    for _ in range(3):
        for name in names:
            cached.finetuned_state(name)
    assert _Counting.loads == len(names)
    assert cached.recommended_options == micro_zoo.recommended_options  # delegated attribute
    assert CachedBackbone(cached)._states is cached._states  # wrapping twice shares the cache
    first = cached.finetuned_state(names[0])
    first.pop(next(iter(first)))
    assert len(cached.finetuned_state(names[0])) == len(first) + 1  # callers get their own dict


def test_merge_steps_chains_previous_and_merged_states(micro_zoo):
    cached = CachedBackbone(micro_zoo)
    order = [t.name for t in cached.tasks]
    spec = resolve_spec(cached, "task_arithmetic", len(order))
    records = list(merge_steps(cached, spec, order))
    assert [r.step for r in records] == [1, 2, 3] and [r.task for r in records] == order
    assert records[0].previous is records[0].pretrained
    for before, after in zip(records, records[1:], strict=False):
        assert after.previous is before.merged
    key = selected_layers(records[0].pretrained)[0]
    scale = spec.options["scale"]
    expected = records[0].pretrained[key] + scale * sum(r.task_state[key] - r.pretrained[key] for r in records)
    torch.testing.assert_close(records[-1].merged[key], expected)
    with pytest.raises(ValueError, match="unknown task"):
        list(merge_steps(cached, spec, ["nope"]))


def test_trace_of_a_nufilt_run_matches_the_mergers_own_diagnostics(micro_zoo):
    cached = CachedBackbone(micro_zoo)
    order = [t.name for t in cached.tasks]
    spec = resolve_spec(cached, "nufilt", len(order), {"nufilt": {"steps": 5}})
    records = list(merge_steps(cached, spec, order))
    keys = selected_layers(records[0].pretrained)
    r_p = spec.options["r_p"]
    trace = trace_run(records, keys, r_p, top_k=6)
    assert list(trace.layers.columns) == list(LAYER_COLUMNS)
    assert len(trace.steps) == 3 and len(trace.layers) == 3 * len(keys)

    layers = trace.layers.set_index(["step", "layer"])
    for record in records[1:]:
        for key, info in record.report.info["layers"].items():
            row = layers.loc[(record.step, key)]
            assert row["removed_energy"] == pytest.approx(info["removed_energy"], abs=1e-4)
            assert row["nufilt_r_p"] == info["ranks"]["r_p"] == row["r_p"]
            update = (record.merged[key] - record.previous[key]).double().norm()
            assert row["update_norm"] == pytest.approx(float(update), rel=1e-6)
            curve = trace.loss_curves[(trace.loss_curves.step == record.step) & (trace.loss_curves.layer == key)]
            assert curve["loss"].tolist() == pytest.approx(info["loss_curve"], rel=1e-6)
            assert curve["iteration"].tolist() == list(range(spec.options["steps"] + 1))
    # step 1: nothing merged before, so nothing to filter
    assert (trace.layers[trace.layers.step == 1]["removed_energy"] == 0).all()
    assert (trace.layers[trace.layers.step == 1]["previous_norm"] == 0).all()

    spectra = trace.spectra
    one = spectra[(spectra.step == 2) & (spectra.layer == keys[0]) & (spectra.matrix == "task")]
    assert one["index"].tolist() == list(range(1, 7)) and one["value"].is_monotonic_decreasing
    tau = (records[1].task_state[keys[0]] - records[1].pretrained[keys[0]]).double()
    assert one["value"].tolist() == pytest.approx(torch.linalg.svdvals(tau)[:6].tolist())


def test_trace_works_for_every_method_and_concatenates(micro_zoo):
    cached = CachedBackbone(micro_zoo)
    order = [t.name for t in cached.tasks]
    keys = selected_layers(cached.pretrained_state())
    traces = [trace_run(merge_steps(cached, resolve_spec(cached, label, 3), order), keys, r_p=4, top_k=3)
              for label in ("task_arithmetic", "opcm")]
    both = Trace.concat(traces)
    assert list(both.steps["method"].unique()) == ["task_arithmetic", "opcm"]
    assert both.loss_curves.empty and all(math.isnan(v) for v in both.layers["nufilt_r_l"])
    assert both.layers["removed_energy"].between(0, 1).all()
