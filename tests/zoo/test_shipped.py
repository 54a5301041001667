"""The shipped pre-trained encoder: matched by the pre-training hash, bit-identical to pre-training."""

import json

import pytest
import torch
from safetensors import safe_open

from nufilt.cache import CacheWarning, file_sha256
from nufilt.zoo import PRESETS, build
from nufilt.zoo.build import (
    encoder_config,
    ensure_pretrained,
    ensure_task,
    finetuned_root,
    pretrain_key,
    pretrained_folder,
    ship_pretrained,
    shipped_encoder,
    shipped_files,
)

# a micro zoo with fewer steps: seconds to pre-train, and a key no shipped file carries
SMALL = PRESETS["micro"].replace(pretrain_steps=20, finetune_steps=10, tasks=("bar-position", "ring-count"))


def test_the_default_config_has_a_shipped_encoder_that_fits_it(monkeypatch):
    monkeypatch.delenv(build.ENV_SHIPPED, raising=False)
    default = PRESETS["default"]
    found = shipped_encoder(default)
    assert found is not None, f"no shipped encoder for the default pre-training key {pretrain_key(default)}"
    weights, info = found
    assert info["pretrain_key"] == pretrain_key(default)
    assert weights.stat().st_size < 14 * 2**20
    expected = build.CLIPVisionModel(encoder_config(default)).state_dict()
    with safe_open(weights, framework="pt") as stored:
        assert set(stored.keys()) == set(expected)
        for key in expected:
            assert list(stored.get_slice(key).get_shape()) == list(expected[key].shape), key
    # the quick and micro presets (the tests' zoos) pre-train
    assert shipped_encoder(PRESETS["quick"]) is None and shipped_encoder(PRESETS["micro"]) is None


def _no_pretraining(*args, **kwargs):
    raise AssertionError("a matching shipped encoder must be copied, not pre-trained")


def test_a_shipped_encoder_gives_the_models_of_pre_training(tmp_path, monkeypatch):
    shipped_dir = tmp_path / "shipped"
    monkeypatch.setenv(build.ENV_SHIPPED, "0")
    weights = ship_pretrained(SMALL, tmp_path / "trained", shipped_dir)
    trained = ensure_task(SMALL, "ring-count", tmp_path / "trained")
    info = json.loads(shipped_files(SMALL, shipped_dir)[1].read_text())
    assert info["sha256"] == file_sha256(weights) and info["pretrain_key"] == pretrain_key(SMALL)

    monkeypatch.delenv(build.ENV_SHIPPED)
    monkeypatch.setattr(build, "SHIPPED_DIR", shipped_dir)
    monkeypatch.setattr(build, "pretrain", _no_pretraining)
    loaded = ensure_task(SMALL, "ring-count", tmp_path / "loaded")
    pre = pretrained_folder(SMALL, tmp_path / "loaded")
    assert json.loads((pre / "pretrained.json").read_text())["source"] == "shipped"
    for a, b in [(pretrained_folder(SMALL, tmp_path / "trained"), pre), (trained, loaded)]:
        assert (a / "encoder" / "model.safetensors").read_bytes() == (b / "encoder" / "model.safetensors").read_bytes()
    first = json.loads((trained / "task.json").read_text())
    second = json.loads((loaded / "task.json").read_text())
    assert first["accuracy"] == second["accuracy"] and first["task_vector_ratio"] == second["task_vector_ratio"]
    assert finetuned_root(SMALL, tmp_path / "loaded").name == finetuned_root(SMALL, tmp_path / "trained").name
    # a shipped file is never re-shipped as if it had been pre-trained
    with pytest.raises(ValueError, match="not pre-trained"):
        ship_pretrained(SMALL, tmp_path / "loaded", tmp_path / "again")


def test_another_config_or_a_damaged_file_pre_trains(tmp_path, monkeypatch):
    shipped_dir = tmp_path / "shipped"
    monkeypatch.setenv(build.ENV_SHIPPED, "0")
    ship_pretrained(SMALL, tmp_path / "trained", shipped_dir)
    monkeypatch.delenv(build.ENV_SHIPPED)
    monkeypatch.setattr(build, "SHIPPED_DIR", shipped_dir)
    calls = []
    real_pretrain = build.pretrain

    def counting(*args, **kwargs):
        calls.append(args[0])
        return real_pretrain(*args, **kwargs)

    monkeypatch.setattr(build, "pretrain", counting)
    other = SMALL.replace(pretrain_lr=1e-3)
    assert shipped_encoder(other) is None
    ensure_pretrained(other, tmp_path / "other")
    assert calls == [other]
    # the info file names a key, but its recorded config must match too
    weights, info_path = shipped_files(SMALL, shipped_dir)
    info = json.loads(info_path.read_text())
    info_path.write_text(json.dumps({**info, "config": {**info["config"], "pretrain_steps": 21}}))
    assert shipped_encoder(SMALL) is None
    info_path.write_text(json.dumps(info))
    assert shipped_encoder(SMALL) is not None
    data = bytearray(weights.read_bytes())
    data[-8:] = bytes(8)
    weights.write_bytes(bytes(data))
    with pytest.warns(CacheWarning, match="sha256"):
        folder = ensure_pretrained(SMALL, tmp_path / "damaged")
    assert calls == [other, SMALL]
    assert json.loads((folder / "pretrained.json").read_text())["source"] == "pre-trained"
    state = build.load_state(folder / "encoder")
    assert all(torch.isfinite(v).all() for v in state.values())
