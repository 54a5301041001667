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
