"""Evaluation: ACC/BWT arithmetic, task orders, option precedence, accuracy matrices."""

import json
from pathlib import Path

import pytest

import nufilt
from nufilt.evaluation import (
    acc_bwt,
    check_order,
    format_table,
    mean_std,
    method_spec,
    paper_orders,
    parse_order_indices,
    run_benchmark,
    run_order,
    summarize,
)
from nufilt.methods import paper_options

ORDERS = json.loads((Path(nufilt.__file__).parent / "data" / "task_orders.json").read_text())


# ---------------------------------------------------------------- metrics


def test_acc_is_the_final_row_mean_and_bwt_divides_by_t_minus_one():
    matrix = [[90.0], [80.0, 70.0], [60.0, 50.0, 40.0]]
    acc, bwt = acc_bwt(matrix)
    assert acc == pytest.approx((60 + 50 + 40) / 3)
    assert bwt == pytest.approx(((60 - 90) + (50 - 70)) / 2)  # the last task is not counted


def test_bwt_of_a_single_task_is_zero_and_no_forgetting_is_zero():
    assert acc_bwt([[70.0]]) == (70.0, 0.0)
    assert acc_bwt([[50.0], [50.0, 60.0]])[1] == 0.0


@pytest.mark.parametrize("matrix", [[], [[1.0], [2.0]]])
def test_malformed_matrices_are_rejected(matrix):
    with pytest.raises(ValueError):
        acc_bwt(matrix)


def test_mean_std_is_the_population_std():
    assert mean_std([1.0, 3.0]) == (2.0, 1.0)
    assert mean_std([5.0]) == (5.0, 0.0)


# ---------------------------------------------------------------- orders


@pytest.mark.parametrize("n", [8, 14, 20])
def test_paper_orders_map_dataset_ids_to_tasks_by_position(n):
    tasks = [f"task{i}" for i in range(1, n + 1)]
    orders = paper_orders(tasks)
    assert len(orders) == 10
    for order, ids in zip(orders, ORDERS["orders"][str(n)], strict=True):
        assert order == [f"task{i}" for i in ids]
        assert sorted(order) == sorted(tasks)
    assert paper_orders(tasks, [3, 1]) == [orders[2], orders[0]]


def test_paper_orders_reject_bad_requests():
    assert len(paper_orders(["a", "b", "c"])) == 6  # not a paper group: the 3! seeded orders
    with pytest.raises(ValueError, match=r"order index must be in 1..6 \(6 seeded orders of 3 tasks\)"):
        paper_orders(["a", "b", "c"], [7])
    tasks = [f"t{i}" for i in range(8)]
    for which in ([0], [11], [1, 1], []):
        with pytest.raises(ValueError):
            paper_orders(tasks, which)


def test_custom_orders_are_validated():
    tasks = ["a", "b", "c"]
    assert check_order(("c", "a"), tasks) == ["c", "a"]
    with pytest.raises(ValueError, match="unknown task"):
        check_order(["a", "z"], tasks)
    with pytest.raises(ValueError, match="more than once"):
        check_order(["a", "b", "a"], tasks)
    with pytest.raises(ValueError, match="at least one"):
        check_order([], tasks)
    with pytest.raises(ValueError, match="expected 3"):
        check_order(["a", "b"], tasks, length=3)


def test_order_indices_parse():
    assert parse_order_indices("1,2,3") == [1, 2, 3]
    assert parse_order_indices("2-4, 7") == [2, 3, 4, 7]
    assert parse_order_indices("all") == list(range(1, 11))
    for bad in ("", "one", "1-x"):
        with pytest.raises(ValueError):
            parse_order_indices(bad)


# ---------------------------------------------------------------- method options


def test_option_precedence_paper_then_recommended_then_overrides():
    recommended = {"nufilt": {"r_p": 10, "r_l": 5}, "task_arithmetic": {"scale": 0.2}}
    assert method_spec("task_arithmetic", 8).options == paper_options("task_arithmetic", 8)
    assert method_spec("task_arithmetic", 8, recommended).options["scale"] == 0.2
    spec = method_spec("nufilt", 8, recommended, {"nufilt": {"r_p": 7}})
    assert (spec.method, spec.options["r_p"], spec.options["r_l"]) == ("nufilt", 7, 5)


def test_ablations_are_nufilt_settings_that_beat_method_overrides():
    overrides = {"nufilt": {"r_l": 9, "steps": 3}, "no_filter": {"steps": 4}}
    naive = method_spec("naive", 8, {"nufilt": {"r_p": 10}}, overrides)
    assert naive.method == "nufilt"
    assert (naive.options["r_l"], naive.options["filter"], naive.options["steps"]) == (0, "identity", 3)
    assert method_spec("no_filter", 8, None, overrides).options["steps"] == 4
    # the older spelling null_space=False (filter "identity") reaches nufilt, but an ablation's filter wins
    legacy = {"nufilt": {"null_space": False}}
    assert method_spec("nufilt", 8, None, legacy).options["filter"] == "identity"
    assert method_spec("lora_only", 8, None, legacy).options["filter"] == "zero"
    assert method_spec("null_space_only", 8, None, legacy).options["filter"] == "identity"


def test_unknown_methods_and_options_fail_before_any_model_is_loaded():
    with pytest.raises(ValueError, match="unknown method"):
        method_spec("fisher", 8)
    with pytest.raises(ValueError, match="unknown option"):
        method_spec("opcm", 8, None, {"opcm": {"rank": 3}})
    with pytest.raises((ValueError, TypeError)):
        method_spec("nufilt", 8, None, {"nufilt": {"r_p": -1}})


# ---------------------------------------------------------------- runs on the micro zoo


def test_accuracy_matrix_is_lower_triangular_and_consistent(micro_zoo):
    order = ["ring-count", "bar-position", "blob-quadrant"]
    run = run_order(micro_zoo, method_spec("weight_average", 3), order)
    assert [len(row) for row in run.accuracy_matrix] == [1, 2, 3]
    assert (run.acc, run.bwt) == pytest.approx(acc_bwt(run.accuracy_matrix))
    reference = micro_zoo.reference()
    # weight averaging starts from θ̄1 = θ1: the first entry is the individual accuracy
    assert run.accuracy_matrix[0][0] == pytest.approx(reference["individual"]["ring-count"])
    # the last row scores the final merged model on every task of the order
    merged = micro_zoo.pretrained_state()
    for count, task in enumerate(order, start=1):
        finetuned = micro_zoo.finetuned_state(task)
        merged = {k: ((count - 1) * merged[k] + finetuned[k]) / count if count > 1 else finetuned[k] for k in merged}
    final = micro_zoo.evaluate(merged, order)
    assert run.accuracy_matrix[-1] == pytest.approx([final[t] for t in order], abs=1.0)


def test_benchmark_document_and_summary(micro_zoo):
    names = [t.name for t in micro_zoo.tasks]
    specs = [method_spec(m, 3, micro_zoo.recommended_options) for m in ("task_arithmetic", "null_space_only")]
    result = run_benchmark(micro_zoo, specs, [names, names[::-1]])
    assert {"backbone", "tasks", "runs", "summary", "reference"} <= set(result)
    assert [r["method"] for r in result["runs"]] == ["task_arithmetic"] * 2 + ["null_space_only"] * 2
    accs = [r["acc"] for r in result["runs"][:2]]
    summary = result["summary"]["task_arithmetic"]
    assert summary["acc_mean"] == pytest.approx(sum(accs) / 2)
    assert summary["acc_std"] == pytest.approx(abs(accs[0] - accs[1]) / 2)
    assert result["runs"][2]["options"]["r_l"] == 0 and result["runs"][2]["base_method"] == "nufilt"
    table = format_table(result)
    for row in ("pretrained", "individual", "task_arithmetic", "null_space_only"):
        assert row in table


def test_benchmark_rejects_empty_inputs(micro_zoo):
    names = [t.name for t in micro_zoo.tasks]
    with pytest.raises(ValueError, match="no methods"):
        run_benchmark(micro_zoo, [], [names])
    with pytest.raises(ValueError, match="no task orders"):
        run_benchmark(micro_zoo, [method_spec("magmax", 3)], [])
    with pytest.raises(ValueError, match="more than once"):
        run_order(micro_zoo, method_spec("magmax", 3), [names[0], names[0]])


def test_summarize_groups_by_label_in_first_seen_order(micro_zoo):
    names = [t.name for t in micro_zoo.tasks]
    runs = [run_order(micro_zoo, method_spec(m, 3), names[:2]) for m in ("magmax", "ties", "magmax")]
    assert list(summarize(runs)) == ["magmax", "ties"]
    assert summarize(runs)["magmax"]["n_orders"] == 2
