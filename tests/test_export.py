"""Export: model card content, folder safety, and the fallbacks for backbones without a format."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from nufilt.backbones.base import Backbone
from nufilt.export import model_card, save_merged


class PlainBackbone(Backbone):
    """A backbone whose encoder is a plain nn.Module (no save_pretrained anywhere)."""

    name = "plain"
    family = "clip"
    tasks = []

    def pretrained_state(self):
        return nn.Linear(3, 2).state_dict()

    def finetuned_state(self, task):
        raise NotImplementedError

    def evaluate(self, state, tasks):
        return {}

    def build_encoder(self, state):
        module = nn.Linear(3, 2)
        module.load_state_dict(state)
        return module

    def activation_batches(self, task, n_samples, split="test"):
        return iter(())


def test_model_card_names_method_options_order_and_scores():
    card = model_card(
        {
            "backbone": "clip-vit-b32",
            "base_model": "openai/clip-vit-base-patch32",
            "method": "nufilt",
            "options": {"r_p": 128, "r_l": 64},
            "order": ["mnist", "svhn", "dtd"],
            "scores": {"mnist": 97.25, "svhn": 80.0},
            "acc": 83.61,
            "bwt": -1.04,
        }
    )
    assert card.startswith("---\n") and "base_model: openai/clip-vit-base-patch32" in card
    assert "`r_l=64`, `r_p=128`" in card and "mnist → svhn → dtd" in card
    assert "| mnist | 97.2 |" in card and "ACC: 83.6" in card and "BWT: -1.0" in card
    assert "base_model" not in model_card({"method": "opcm"})


def test_plain_encoder_falls_back_to_model_safetensors(tmp_path):
    backbone = PlainBackbone()
    state = backbone.pretrained_state()
    out = save_merged(backbone, state, tmp_path / "merged", {"method": "opcm", "order": ["a"]})
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "model.safetensors", "nufilt_merge.json"]
    assert all(torch.equal(load_file(str(out / "model.safetensors"))[k], v) for k, v in state.items())
    info = json.loads((out / "nufilt_merge.json").read_text())
    assert info["backbone"] == "plain" and info["method"] == "opcm"


def test_existing_folders_are_not_overwritten_unless_asked(tmp_path):
    backbone = PlainBackbone()
    out = tmp_path / "merged"
    out.mkdir()
    (out / "keep.txt").write_text("user file")
    with pytest.raises(FileExistsError, match="not empty"):
        save_merged(backbone, backbone.pretrained_state(), out)
    assert (out / "keep.txt").is_file()
    save_merged(backbone, backbone.pretrained_state(), out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()


def test_a_failed_export_leaves_nothing_behind(tmp_path):
    backbone = PlainBackbone()
    with pytest.raises(RuntimeError):
        save_merged(backbone, {"weight": torch.zeros(5, 5)}, tmp_path / "merged")
    assert list(tmp_path.iterdir()) == []


def test_written_files_and_folders_honour_the_umask(tmp_path):
    """mkstemp/mkdtemp make 0600/0700 entries; a merged model must be readable by others as a
    save_pretrained folder would be (0644/0755 under umask 022, 0640/0750 under 027)."""
    import os
    import stat

    from nufilt.checkpoints import merge_checkpoints
    from nufilt.io import save_safetensors

    base = {"w": torch.randn(3, 3)}
    save_safetensors(base, tmp_path / "base.safetensors")
    save_safetensors({"w": base["w"] + 1}, tmp_path / "task.safetensors")
    for umask, file_mode, dir_mode in ((0o022, 0o644, 0o755), (0o027, 0o640, 0o750)):
        old = os.umask(umask)
        try:
            out = tmp_path / f"merged-{umask:o}"
            merge_checkpoints(tmp_path / "base.safetensors", [tmp_path / "task.safetensors"], "task_arithmetic", out)
            single = tmp_path / f"merged-{umask:o}.safetensors"
            merge_checkpoints(tmp_path / "base.safetensors", [tmp_path / "task.safetensors"], "task_arithmetic",
                              single)
        finally:
            os.umask(old)
        assert stat.S_IMODE(out.stat().st_mode) == dir_mode
        for path in [*out.iterdir(), single]:
            assert stat.S_IMODE(path.stat().st_mode) == file_mode, path.name
