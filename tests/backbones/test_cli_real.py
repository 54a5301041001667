"""`python -m nufilt run` on a real-format backbone: paper rows, --save export, memory, offline errors."""

from __future__ import annotations

import json
from types import SimpleNamespace

import torch
from transformers import CLIPVisionModel

from nufilt.backbones.hub import quiet_transformers
from nufilt.cli import _print_paper_reference, main


def test_run_saves_the_merged_model_and_reports_memory(clip_hub, tmp_path, capsys):
    root = tmp_path / "models"
    root.mkdir()
    (root / "pretrained").symlink_to(clip_hub["pretrained"])
    for task in ("mnist", "eurosat"):
        (root / task).symlink_to(clip_hub[task])
    out = tmp_path / "merged"
    argv = ["run", "--backbone", f"local:{root}", "--tasks", "2", "--order", "eurosat,mnist"]
    argv += ["--methods", "task_arithmetic", "--data-dir", str(clip_hub["data"]), "--device", "cpu"]
    assert main([*argv, "--save", str(out), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "task_arithmetic" in captured.out and "peak memory:" in captured.err
    info = json.loads((out / "nufilt_merge.json").read_text())
    assert info["order"] == ["eurosat", "mnist"] and info["method"] == "task_arithmetic"
    assert set(info["scores"]) == {"eurosat", "mnist"}
    with quiet_transformers():
        model = CLIPVisionModel.from_pretrained(out)
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())
    assert main([*argv, "--save", str(out), "--quiet"]) == 2  # refuses to overwrite before running


def test_hub_backbone_without_network_is_a_message_not_a_traceback(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    argv = ["run", "--backbone", "clip-vit-b32", "--tasks", "8", "--methods", "nufilt", "--quiet"]
    assert main([*argv, "--cache-dir", str(tmp_path), "--orders", "1"]) == 1
    err = capsys.readouterr().err
    assert "could not fetch" in err and "openai/clip-vit-base-patch32" in err and "Traceback" not in err


def test_paper_numbers_are_printed_beside_the_run(capsys):
    backbone = SimpleNamespace(name="clip-vit-b16", paper_column="ViT-B/16")
    summary = {"opcm": {"acc_mean": 70.0, "acc_std": 1.0, "bwt_mean": -5.0, "bwt_std": 0.5}}
    _print_paper_reference(backbone, 14, {"summary": summary})
    out = capsys.readouterr().out
    line = next(row for row in out.splitlines() if row.startswith("OPCM"))
    assert "14 tasks" in out and "70.0 ± 1.0" in line and "-5.0 ± 0.5" in line
