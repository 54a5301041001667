"""The benchmark scripts stay runnable: `--help` of each, and the zoo-build benchmark end to end
on the micro zoo (its table and accuracies; no timing is asserted)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p for p in (ROOT / "bench").glob("*.py") if not p.name.startswith("_"))  # _x.py: shared modules


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.stem for s in SCRIPTS])
def test_every_bench_script_has_a_help(script):
    result = _run(str(script), "--help")
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout and "--quick" in result.stdout


def test_the_zoo_build_benchmark_builds_the_micro_zoo_and_cleans_up(tmp_path):
    kept = tmp_path / "zoo"
    result = _run("bench/zoo_build.py", "--quick", "--keep", str(kept))
    assert result.returncode == 0, result.stderr
    for stage in ("task data", "pre-training", "heads", "fine-tuning 3 tasks", "second run"):
        assert re.search(rf"^{stage}.*\d+\.\d$", result.stdout, re.MULTILINE), (stage, result.stdout)
    pretrained, individual = map(float, re.search(r"pre-trained ([\d.]+), individual ([\d.]+)", result.stdout).groups())
    assert individual > pretrained  # the micro zoo's fine-tuned models beat their heads on pre-trained features
    assert any(kept.rglob("model.safetensors"))
    again = _run("bench/zoo_build.py", "--quick", "--keep", str(kept))
    assert again.returncode == 2 and "not empty" in again.stderr  # never builds over an existing cache


def test_the_zoo_study_prints_and_records_one_row_per_variant(tmp_path):
    import json

    out = tmp_path / "study.jsonl"
    result = _run("bench/zoo_study.py", "--quick", "--cache", str(tmp_path / "cache"), "--orders", "1",
                  "--variant", "default", "--variant", "head_scale=15,finetune_steps=20", "--out", str(out))
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["overrides"] for row in rows] == [{}, {"head_scale": 15.0, "finetune_steps": 20}]
    for row in rows:
        assert row["variant"] in result.stdout
        assert 0 <= row["pretrained"] <= 100 and 0 <= row["individual"] <= 100
        assert set(row["acc"]) == {"task_arithmetic", "opcm", "nufilt", "naive", "null_space_only", "no_filter",
                                   "lora_only"}
        gap = row["individual"] - row["pretrained"]
        assert row["recovered"] == pytest.approx((row["acc"]["nufilt"] - row["pretrained"]) / gap)
        assert 0 <= row["affinity_off_diagonal"] <= 1 and 0 <= row["affinity_diagonal"] <= 1
    # the second variant changes only heads and fine-tuning: same pre-trained encoder, other heads
    assert rows[0]["individual"] != rows[1]["individual"]
    bad = _run("bench/zoo_study.py", "--quick", "--cache", str(tmp_path / "cache"), "--variant", "widht=3")
    assert bad.returncode == 2 and "widht" in bad.stderr


def test_the_app_step_benchmark_prints_a_row_per_step_whose_parts_fit_in_it(micro_zoo_dir):
    import os

    env = {**os.environ, "NUFILT_CACHE_DIR": str(micro_zoo_dir), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "bench/app_step.py", "--quick", "--spectra"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines() if re.match(r"^\s+\d+\s", line)]
    assert [int(row[0]) for row in rows] == [1, 2, 3]
    for row in rows:
        cpu, parts = float(row[2]), [float(v) for v in row[4:7]]  # eval, geometry, losses
        assert all(value >= 0 for value in parts) and sum(parts) <= cpu + 0.05
    assert "angles and spectra on" in result.stdout and result.stdout.rstrip().splitlines()[-1].startswith("mean")
