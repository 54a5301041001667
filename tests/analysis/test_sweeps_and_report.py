"""Rank sweeps (Fig. 4), the one-pass dynamics and the JSON report, on the micro zoo."""

import json
import math

import pytest

from nufilt.analysis import analyze
from nufilt.analysis.runs import CachedBackbone, resolve_spec
from nufilt.analysis.sweeps import SWEEP_COLUMNS, acc_bwt_run, rank_sweep, summarize_sweep, sweep_settings
from nufilt.evaluation import run_order


def test_sweep_settings_are_the_papers_at_768_and_scale_with_width():
    assert sweep_settings("r_p", 768) == ([0, 32, 64, 128, 256, 384, 512], {"r_l": 0, "r_v": 0})
    assert sweep_settings("r_l", 768) == ([0, 4, 8, 16, 32, 64, 128], {"r_p": 128, "r_v": 8})
    assert sweep_settings("r_v", 768) == ([0, 2, 4, 8, 16, 32, 64], {"r_p": 128, "r_l": 16})
    assert sweep_settings("r_p", 128) == ([0, 5, 11, 21, 43, 64, 85], {"r_l": 0, "r_v": 0})
    assert sweep_settings("r_l", 128) == ([0, 1, 3, 5, 11, 21], {"r_p": 21, "r_v": 8})
    assert sweep_settings("r_v", 32) == ([0, 2, 4, 8, 16, 32], {"r_p": 5, "r_l": 1})
    with pytest.raises(ValueError, match="parameter"):
        sweep_settings("r_q", 768)


def test_a_sweep_point_scores_only_what_acc_and_bwt_need_and_agrees_with_the_full_run(micro_zoo):
    cached = CachedBackbone(micro_zoo)
    order = [t.name for t in cached.tasks][::-1]
    spec = resolve_spec(cached, "nufilt", 3, {"nufilt": {"steps": 3}})
    calls = []
    evaluate = micro_zoo.evaluate
    micro_zoo.evaluate = lambda state, tasks: calls.append(list(tasks)) or evaluate(state, tasks)
    point = acc_bwt_run(cached, spec, order)
    assert calls == [[order[0]], [order[1]], order]  # 2T - 1 task scores
    full = run_order(cached, spec, order)
    assert point["acc"] == pytest.approx(full.acc) and point["bwt"] == pytest.approx(full.bwt)


def test_rank_sweep_reports_acc_bwt_per_value_and_loads_models_once(micro_zoo):
    loads = []
    original = micro_zoo.finetuned_state
    micro_zoo.finetuned_state = lambda task: loads.append(task) or original(task)
    table = rank_sweep(micro_zoo, "r_l", values=[0, 2], overrides={"nufilt": {"steps": 3}})
    assert list(table.columns) == list(SWEEP_COLUMNS)
    assert table["value"].tolist() == [0, 2] and table["r_l"].tolist() == [0, 2]
    assert table["r_p"].tolist() == [5, 5] and table["r_v"].tolist() == [8, 8]  # the paper's 128 and 8, at d_in 32
    assert table["acc"].between(0, 100).all() and table["bwt"].between(-100, 100).all()
    assert sorted(loads) == sorted(t.name for t in micro_zoo.tasks)
    summary = summarize_sweep(table)
    assert summary["acc_mean"].tolist() == table["acc"].tolist() and (summary["acc_std"] == 0).all()
    fixed = rank_sweep(micro_zoo, "r_p", values=[3], fixed={"r_l": 2, "r_v": 4}, overrides={"nufilt": {"steps": 3}})
    assert fixed[["r_p", "r_l", "r_v"]].iloc[0].tolist() == [3, 2, 4]


def test_analyze_returns_strict_json_with_every_part(micro_zoo, tmp_path):
    document = analyze(micro_zoo, n_samples=32, r_d=2, r_v=4, top_k=4, cache_dir=tmp_path,
                       methods=("nufilt", "task_arithmetic"))
    text = json.dumps(document, allow_nan=False)  # NaN became null
    assert json.loads(text)["order"] == [t.name for t in micro_zoo.tasks]
    n_layers, n_tasks = len(document["layers"]), len(document["tasks"])
    affinity = document["affinity"]
    assert len(affinity["layers"]) == n_tasks * n_tasks * n_layers
    assert set(affinity["matrices"]) == {"all", "attention", "mlp"}
    assert len(affinity["matrices"]["all"]["p90"]["values"]) == n_tasks
    assert {row["kind"] for row in affinity["dominance"]} == {"all", "attention", "mlp"}

    losses = document["stability_plasticity"]
    assert len(losses["layers"]) == 2 * n_tasks * n_layers
    nufilt_first = [r for r in losses["layers"] if r["method"] == "nufilt" and r["step"] == 1]
    assert all(r["plasticity"] == 0.0 and r["stability"] is None for r in nufilt_first)  # θ̄1 = θ1
    assert {r["method"] for r in losses["summary"]} == {"nufilt", "task_arithmetic"}
    assert all(r["steps"] == n_tasks - 1 and r["harmonic"] > 0 for r in losses["summary"])

    corollary = document["corollary"]
    assert {(r["method"], r["check"]) for r in corollary["summary"]} == {
        (m, c) for m in ("nufilt", "task_arithmetic") for c in ("stability", "plasticity")
    }
    assert all(r["hold_rate_rank_rd"] == 1.0 for r in corollary["summary"])  # the corollary itself
    assert all(0.0 <= r["hold_rate"] <= 1.0 for r in corollary["summary"])
    trace = document["trace"]
    assert len(trace["steps"]) == 2 * n_tasks and len(trace["loss_curves"]) > 0
    assert "sweeps" not in document and set(document["timings"]) == {"activations", "affinity", "dynamics"}
    assert not any(math.isnan(r["affinity"]) for r in affinity["layers"])
    with pytest.raises(ValueError, match="r_d <= r_v"):
        analyze(micro_zoo, r_d=5, r_v=4, cache_dir=tmp_path)


def test_backbone_affinity_is_the_table_of_the_reports_settings(micro_zoo, tmp_path):
    from nufilt.analysis import backbone_affinity

    table = backbone_affinity(micro_zoo, r_d=2, r_v=4, n_samples=32, cache_dir=tmp_path)
    document = analyze(micro_zoo, n_samples=32, r_d=2, r_v=4, cache_dir=tmp_path, methods=("task_arithmetic",))
    assert table["affinity"].tolist() == pytest.approx([row["affinity"] for row in document["affinity"]["layers"]])
    two = backbone_affinity(micro_zoo, tasks=[t.name for t in micro_zoo.tasks[:2]], r_d=2, r_v=4, n_samples=32,
                            cache_dir=tmp_path)
    assert len(two) == 4 * len(document["layers"])
