"""Every CLI command with bad input: exit 2 and one line on stderr, never a traceback.

Runs the real entry point (`python -m nufilt`) in a subprocess, so an exception that escapes
`main` would show as a traceback and a non-2 exit code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from nufilt.cli import main
from nufilt.evaluation import task_orders

ROOT = Path(__file__).resolve().parents[1]


class _Pickled:  # a Python object: torch.load(weights_only=True) must refuse it
    pass


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Small broken and unusual inputs, made once."""
    root = tmp_path_factory.mktemp("bad-inputs")
    good = {"layer.weight": torch.randn(4, 4), "layer.bias": torch.randn(4)}
    save_file(good, str(root / "good.safetensors"))
    save_file({k: v + 0.1 for k, v in good.items()}, str(root / "task.safetensors"))
    save_file({"other.weight": torch.randn(4, 4)}, str(root / "other.safetensors"))
    save_file({"layer.weight": torch.randn(5, 4), "layer.bias": torch.randn(4)}, str(root / "wrong-shape.safetensors"))
    (root / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    data = (root / "good.safetensors").read_bytes()
    (root / "cut.safetensors").write_bytes(data[: len(data) // 2])
    torch.save(good, root / "good.pt")
    (root / "cut.pt").write_bytes((root / "good.pt").read_bytes()[:100])
    torch.save({"model": _Pickled()}, root / "pickled.pt")
    (root / "text.bin").write_text("these are not weights\n")
    (root / "empty-folder").mkdir()
    two = root / "two-weight-files"
    two.mkdir()
    save_file(good, str(two / "a.safetensors"))
    save_file(good, str(two / "b.safetensors"))
    index = root / "broken-index"
    index.mkdir()
    weight_map = {"weight_map": {"layer.weight": "gone.safetensors"}}
    (index / "model.safetensors.index.json").write_text(json.dumps(weight_map))
    bad_json = root / "bad-json-index"
    bad_json.mkdir()
    (bad_json / "model.safetensors.index.json").write_text("{")
    local = root / "local-bad-config"
    (local / "pretrained").mkdir(parents=True)
    (local / "pretrained" / "config.json").write_text("{ not json")
    local_type = root / "local-unknown-type"
    (local_type / "pretrained").mkdir(parents=True)
    (local_type / "pretrained" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    local_weights = root / "local-corrupt-weights"
    (local_weights / "pretrained").mkdir(parents=True)
    (local_weights / "pretrained" / "config.json").write_text(json.dumps({"model_type": "clip"}))
    (local_weights / "pretrained" / "model.safetensors").write_bytes(b"garbage")
    (local_weights / "mnist").mkdir()
    (local_weights / "mnist" / "model.safetensors").write_bytes(b"garbage")
    (root / "a-file").write_text("x")
    return root


def _cases(f: Path, micro: Path) -> list[tuple[str, list[str]]]:
    merge = ["merge", "--method", "task_arithmetic"]
    out = ["--out", str(f / "never-written")]
    good, task = str(f / "good.safetensors"), str(f / "task.safetensors")
    micro_run = ["run", "--preset", "micro", "--tasks", "3", "--cache-dir", str(micro), "--quiet",
                 "--methods", "weight_average"]
    return [
        ("merge: missing pre-trained", [*merge, "--pretrained", str(f / "nope"), "--task", task, *out]),
        ("merge: missing task", [*merge, "--pretrained", good, "--task", str(f / "nope.safetensors"), *out]),
        ("merge: no task", [*merge, "--pretrained", good, *out]),
        ("merge: corrupt safetensors", [*merge, "--pretrained", good, "--task", str(f / "corrupt.safetensors"), *out]),
        ("merge: cut safetensors", [*merge, "--pretrained", good, "--task", str(f / "cut.safetensors"), *out]),
        ("merge: cut .pt", [*merge, "--pretrained", good, "--task", str(f / "cut.pt"), *out]),
        ("merge: pickled object", [*merge, "--pretrained", good, "--task", str(f / "pickled.pt"), *out]),
        ("merge: text as .bin", [*merge, "--pretrained", good, "--task", str(f / "text.bin"), *out]),
        ("merge: empty folder", [*merge, "--pretrained", good, "--task", str(f / "empty-folder"), *out]),
        ("merge: two weight files", [*merge, "--pretrained", good, "--task", str(f / "two-weight-files"), *out]),
        ("merge: index names a missing shard", [*merge, "--pretrained", good, "--task", str(f / "broken-index"), *out]),
        ("merge: index is not JSON", [*merge, "--pretrained", good, "--task", str(f / "bad-json-index"), *out]),
        ("merge: other architecture", [*merge, "--pretrained", good, "--task", str(f / "other.safetensors"), *out]),
        ("merge: wrong shape", [*merge, "--pretrained", good, "--task", str(f / "wrong-shape.safetensors"), *out]),
        ("merge: unknown method", ["merge", "--method", "fisher", "--pretrained", good, "--task", task, *out]),
        ("merge: unknown option", [*merge, "--option", "rank=3", "--pretrained", good, "--task", task, *out]),
        ("merge: out is an input", [*merge, "--pretrained", good, "--task", task, "--out", task, "--overwrite"]),
        ("merge: out is a file", [*merge, "--pretrained", good, "--task", task, "--out", str(f / "a-file")]),
        ("merge: bad threads", [*merge, "--threads", "0", "--pretrained", good, "--task", task, *out]),
        ("merge: bad device", [*merge, "--device", "tpu", "--pretrained", good, "--task", task, *out]),
        ("run: local folder missing", ["run", "--backbone", f"local:{f / 'nonexistent'}", "--tasks", "3"]),
        ("run: local folder empty", ["run", "--backbone", f"local:{f / 'empty-folder'}", "--tasks", "3"]),
        ("run: local config not JSON", ["run", "--backbone", f"local:{f / 'local-bad-config'}", "--tasks", "1"]),
        ("run: local unknown family", ["run", "--backbone", f"local:{f / 'local-unknown-type'}", "--tasks", "1"]),
        ("run: local corrupt weights", ["run", "--backbone", f"local:{f / 'local-corrupt-weights'}", "--tasks", "1",
                                        "--data-dir", str(f / "empty-folder")]),
        ("run: openclip folder missing", ["run", "--backbone", f"openclip:{f / 'nonexistent'}", "--tasks", "2"]),
        ("run: unknown backbone", ["run", "--backbone", "resnet", "--tasks", "3"]),
        ("run: order index too large", [*micro_run, "--orders", "7"]),
        ("run: order not a number", [*micro_run, "--orders", "one"]),
        ("run: out is a folder", [*micro_run, "--order", "bar-position,blob-quadrant,ring-count",
                                  "--out", str(f / "empty-folder")]),
        ("run: cache dir is a file", ["run", "--preset", "micro", "--tasks", "3", "--cache-dir", str(f / "a-file"),
                                      "--methods", "weight_average", "--quiet"]),
        ("run: threads negative", [*micro_run, "--threads", "-1"]),
        ("run: workers zero", [*micro_run, "--workers", "0"]),
        ("run: workers not a number", [*micro_run, "--workers", "abc"]),
        ("run: no Ray cluster at the address", [*micro_run, "--ray-address", "127.0.0.1:1", *out]),
        ("run: Ray address not HOST:PORT", [*micro_run, "--ray-address", "head-node", *out]),
        ("analyze: local folder missing", ["analyze", "--backbone", f"local:{f / 'nonexistent'}", "--tasks", "3"]),
        ("analyze: bad sweep", ["analyze", "--preset", "micro", "--tasks", "3", "--cache-dir", str(micro),
                                "--sweep", "r_x", "--quiet"]),
        ("analyze: workers without a sweep", ["analyze", "--preset", "micro", "--tasks", "3", "--cache-dir", str(micro),
                                              "--workers", "2", "--quiet"]),
        ("analyze: workers zero", ["analyze", "--preset", "micro", "--tasks", "3", "--cache-dir", str(micro),
                                   "--sweep", "r_p", "--workers", "0", "--quiet"]),
        ("analyze: unknown task in order", ["analyze", "--preset", "micro", "--tasks", "3", "--cache-dir", str(micro),
                                            "--order", "sun397,mnist,cars", "--quiet"]),
    ]


CASE_NAMES = [name for name, _ in _cases(Path("."), Path("."))]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_bad_input_exits_2_with_one_line(files, micro_zoo_dir, name, capsys, monkeypatch):
    """In-process: an exception escaping `main` fails the test like a traceback would."""
    argv = dict(_cases(files, micro_zoo_dir))[name]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("NUFILT_DEBUG", raising=False)
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (code, err)
    assert len(lines) == 1 and lines[0].startswith(f"nufilt {argv[0]}: error: "), err
    assert not (files / "never-written").exists()


def test_the_entry_point_prints_one_line_not_a_traceback(files):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("NUFILT_DEBUG", None)
    done = subprocess.run([sys.executable, "-m", "nufilt", "run", "--backbone", f"local:{files / 'nonexistent'}",
                           "--tasks", "3"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [f"nufilt run: error: local backbone folder not found: "
                                                f"{files / 'nonexistent'}"]


def test_any_task_count_gets_orders(micro_zoo_dir, tmp_path):
    """--tasks N for N outside the paper's 8/14/20: order 1 as given, then seeded permutations."""
    out = tmp_path / "r.json"
    env = {**os.environ, "NUFILT_THREADS": "1"}
    argv = ["run", "--preset", "micro", "--tasks", "3", "--cache-dir", str(micro_zoo_dir), "--orders", "all",
            "--methods", "task_arithmetic", "--quiet", "--out", str(out)]
    done = subprocess.run([sys.executable, "-m", "nufilt", *argv], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    orders = [run["order"] for run in json.loads(out.read_text())["runs"]]
    assert len(orders) == 6 and len({tuple(o) for o in orders}) == 6  # all 3! orders, none twice
    assert orders[0] == ["bar-position", "blob-quadrant", "ring-count"]  # the zoo's own order first


def test_seeded_orders_are_fixed_and_distinct():
    names = [f"t{i}" for i in range(5)]
    orders = task_orders(names)
    assert orders == task_orders(names) and len(orders) == 10 and orders[0] == names
    assert len({tuple(o) for o in orders}) == 10 and all(sorted(o) == names for o in orders)
    assert task_orders(["a"]) == [["a"]]
    paper_file = json.loads((ROOT.parent / "shared" / "paper" / "task_orders.json").read_text()) if (
        ROOT.parent / "shared" / "paper" / "task_orders.json").is_file() else None
    eight = [f"d{i}" for i in range(1, 9)]
    if paper_file is not None:  # the paper's own orders for 8 tasks, dataset id i -> d{i}
        assert task_orders(eight) == [[f"d{i}" for i in order] for order in paper_file["orders"]["8"]]
