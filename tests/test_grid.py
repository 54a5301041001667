"""Grids on Ray workers (nufilt.grid): the same results as in-process, a dead worker's cell retried,
a failing cell reported while the rest completes, Ctrl-C stops the workers.

One Ray session (2 CPUs) serves the module: starting Ray takes seconds on the 2-core machine."""

from __future__ import annotations

import json
import logging
import os
import time
from functools import partial

import pytest

from nufilt.analysis.sweeps import rank_sweep
from nufilt.backbones import get_backbone
from nufilt.cli import main
from nufilt.evaluation import method_spec, paper_orders, run_benchmark, run_order
from nufilt.grid import FAULT_ENV, Cell, GridError, Workers, run_grid, without_timings

ray = pytest.importorskip("ray")
METHODS = ("task_arithmetic", "opcm", "nufilt")


@pytest.fixture(scope="module")
def ray_session():
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    yield
    ray.shutdown()


@pytest.fixture
def grid(micro_zoo_dir):
    """(backbone, specs, orders, workers) of a 3-method x 2-order grid on the micro zoo."""
    recipe = partial(get_backbone, "tiny-vit", preset="micro", n_tasks=3, cache_dir=micro_zoo_dir)
    backbone = recipe()
    names = [task.name for task in backbone.tasks]
    recommended = backbone.recommended_options
    specs = [method_spec(label, len(names), recommended, device="cpu") for label in METHODS]
    return backbone, specs, paper_orders(names, [1, 2]), Workers(recipe, 2)




def _cells(specs, orders):
    return [Cell(run_order, spec, tuple(order), f"{spec.label}, order {j + 1}")
            for spec in specs for j, order in enumerate(orders)]


def test_two_workers_give_the_serial_json_cell_by_cell(ray_session, grid):
    backbone, specs, orders, workers = grid
    serial = run_benchmark(backbone, specs, orders)
    lines = []
    parallel = run_benchmark(backbone, specs, orders, lambda message, fraction: lines.append((message, fraction)),
                             workers=workers)
    assert "workers" not in serial
    assert [(run["method"], run["order"]) for run in parallel["runs"]] == [(s.label, o) for s in specs for o in orders]
    for mine, theirs in zip(parallel["runs"], serial["runs"], strict=True):
        assert without_timings(mine) == without_timings(theirs)
    assert without_timings(parallel) == without_timings(serial)
    record = parallel["workers"]
    assert record["count"] == 2 and len(record["per_worker"]) == 2
    assert sum(worker["cells"] for worker in record["per_worker"]) == len(specs) * len(orders)
    pids = {worker["pid"] for worker in record["per_worker"]}
    assert len(pids) == 2 and os.getpid() not in pids
    assert all(worker["peak_rss_mb"] > 50 for worker in record["per_worker"])
    assert [fraction for _, fraction in lines] == [(i + 1) / 6 for i in range(6)]
    assert lines[-1][0].startswith("6/6 cells done")


def test_a_sweep_on_workers_matches_the_in_process_sweep(ray_session, grid):
    backbone, _, orders, workers = grid
    serial = rank_sweep(backbone, "r_p", [1, 4], orders=orders[:1], device="cpu")
    parallel = rank_sweep(backbone, "r_p", [1, 4], orders=orders[:1], device="cpu", workers=workers)
    columns = [column for column in serial.columns if "seconds" not in column]
    assert parallel[columns].to_dict("records") == serial[columns].to_dict("records")


def test_a_killed_worker_is_replaced_and_its_cell_retried(ray_session, grid, monkeypatch, caplog):
    backbone, specs, orders, workers = grid
    monkeypatch.setenv(FAULT_ENV, "exit")  # worker 0's process exits on its first cell
    cells = _cells(specs, orders)
    with caplog.at_level(logging.WARNING, logger="nufilt.grid"):
        result = run_grid(cells, workers)
    expected = [run_order(backbone, cell.spec, list(cell.order)) for cell in cells]
    assert [without_timings(run.to_json()) for run in result.values] == \
        [without_timings(run.to_json()) for run in expected]
    died = [worker for worker in result.workers if "died" in worker]
    alive = [worker for worker in result.workers if "died" not in worker]
    assert len(died) == 1 and died[0]["worker"] == 0 and died[0]["cells"] == 0
    assert len(alive) == 2 and sum(worker["cells"] for worker in alive) == len(cells)
    assert any("retrying" in record.getMessage() for record in caplog.records)


def test_a_cell_failing_twice_is_reported_and_the_rest_complete(ray_session, grid, caplog):
    _, specs, orders, workers = grid
    cells = _cells(specs[:1], orders)
    bad = Cell(run_order, specs[0], ("no-such-task",), "broken")
    with caplog.at_level(logging.WARNING, logger="nufilt.grid"), pytest.raises(GridError) as raised:
        run_grid([cells[0], bad, cells[1]], workers)
    assert list(raised.value.failures) == [1]
    assert "no-such-task" in raised.value.failures[1][1] and "ValueError" in raised.value.failures[1][1]
    assert sorted(raised.value.values) == [0, 2]
    assert sum("broken" in record.getMessage() for record in caplog.records) == 2  # the failure and the retry's


def test_ctrl_c_stops_the_workers(ray_session, grid):
    _, specs, orders, workers = grid

    def interrupt(message, fraction):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_grid(_cells(specs, orders), workers, progress=interrupt)
    deadline = time.monotonic() + 30
    while ray.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert ray.available_resources().get("CPU", 0) == 2  # both workers' CPUs are free again


def test_the_cli_writes_the_serial_json_from_two_workers(ray_session, micro_zoo_dir, tmp_path, capsys):
    argv = ["run", "--preset", "micro", "--tasks", "3", "--cache-dir", str(micro_zoo_dir), "--orders", "1,2",
            "--methods", "weight_average,nufilt"]
    assert main([*argv, "--quiet", "--out", str(tmp_path / "serial.json")]) == 0
    capsys.readouterr()
    assert main([*argv, "--workers", "2", "--out", str(tmp_path / "grid.json")]) == 0
    err = capsys.readouterr().err
    serial, grid = (json.loads((tmp_path / name).read_text()) for name in ("serial.json", "grid.json"))
    assert without_timings(grid) == without_timings(serial)
    assert "4/4 cells done" in err
    assert [line.split(":")[0] for line in err.splitlines() if line.startswith("worker ")] == ["worker 0", "worker 1"]
