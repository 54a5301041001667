"""Hooks capture the right layers and shapes; statistics are cached per backbone/task/layers/samples."""

import pytest
import torch
from torch import nn
from transformers import CLIPVisionModel

from nufilt.analysis import activations
from nufilt.analysis.activations import (
    activation_statistics,
    clear_memory_cache,
    collect_statistics,
    find_linear_modules,
    selected_layers,
)
from tests.factories import tiny_clip_config


def _encoder() -> CLIPVisionModel:
    torch.manual_seed(0)
    return CLIPVisionModel(tiny_clip_config()).eval()  # width 32, 2 layers, 8x8 images, patch 4: 5 tokens


def _batches(sizes=(8, 4), seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"pixel_values": torch.randn(n, 1, 8, 8, generator=g)} for n in sizes]


def test_selected_layers_are_nufilts_and_hooks_find_their_modules_with_or_without_prefix():
    encoder = _encoder()
    state = encoder.state_dict()
    keys = selected_layers(state)
    assert {k.split("layers.0.")[-1] for k in keys[:5]} == {
        "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.q_proj.weight",
        "self_attn.out_proj.weight", "mlp.fc1.weight",
    }
    assert len(keys) == 10 and not any("fc2" in k for k in keys)
    modules = find_linear_modules(encoder, keys)
    assert all(isinstance(m, nn.Linear) and m.weight.shape == state[k].shape for k, m in modules.items())
    # state-dict keys may carry a wrapper's prefix (older transformers: "vision_model.")
    prefixed = ["vision_model." + k for k in keys]
    assert list(find_linear_modules(encoder, prefixed).values()) == list(modules.values())
    with pytest.raises(ValueError, match="matches 0 modules"):
        find_linear_modules(encoder, ["encoder.layers.7.mlp.fc1.weight"])
    with pytest.raises(ValueError, match="not the weight"):
        find_linear_modules(encoder, ["encoder.layers.0.mlp.fc1.bias"])


def test_statistics_match_an_independent_computation_of_the_layer_inputs():
    encoder = _encoder()
    keys = selected_layers(encoder.state_dict())
    batches = _batches()
    stats = collect_statistics(encoder, batches, keys)
    assert list(stats) == keys
    for key, layer in stats.items():
        d_in = encoder.state_dict()[key].shape[1]
        assert layer.covariance.shape == (d_in, d_in) and layer.covariance.dtype == torch.float64
        assert layer.tokens == 12 * 5  # 12 images x (4 patches + CLS)
        assert (layer.eigenvalues[:-1] >= layer.eigenvalues[1:]).all()
        torch.testing.assert_close(layer.eigenvectors.mT @ layer.eigenvectors, torch.eye(d_in, dtype=torch.float64))
        rebuilt = layer.eigenvectors @ torch.diag(layer.eigenvalues) @ layer.eigenvectors.mT
        torch.testing.assert_close(rebuilt, layer.covariance)

    # q/k/v of block 0 see LayerNorm1 of the pre-LayerNormed embeddings: recompute that directly
    vision = getattr(encoder, "vision_model", encoder)  # transformers 4 wraps the tower, 5 does not
    with torch.no_grad():
        hidden = [vision.pre_layrnorm(vision.embeddings(b["pixel_values"])) for b in batches]
        x = torch.cat([vision.encoder.layers[0].layer_norm1(h).reshape(-1, 32) for h in hidden]).double()
    for proj in ("q_proj", "k_proj", "v_proj"):
        key = next(k for k in keys if k.endswith(f"layers.0.self_attn.{proj}.weight"))
        torch.testing.assert_close(stats[key].covariance, x.mT @ x / len(x))
    # fc1 of block 1, captured by a plain forward hook on the module
    seen = []
    fc1 = vision.encoder.layers[1].mlp.fc1
    handle = fc1.register_forward_hook(lambda module, args, out: seen.append(args[0].reshape(-1, 32).double()))
    with torch.no_grad():
        for batch in batches:
            encoder(**batch)
    handle.remove()
    x = torch.cat(seen)
    key = next(k for k in keys if k.endswith("layers.1.mlp.fc1.weight"))
    torch.testing.assert_close(stats[key].covariance, x.mT @ x / len(x))
    # different layers see different inputs
    assert not torch.allclose(stats[keys[4]].covariance, stats[keys[0]].covariance)  # fc1 vs an attention input


def test_hooks_are_removed_even_when_the_forward_pass_fails():
    encoder = _encoder()
    keys = selected_layers(encoder.state_dict())
    collect_statistics(encoder, _batches((3,)), keys[:2], keep=4)
    assert all(not module._forward_pre_hooks for module in encoder.modules())
    with pytest.raises(Exception):  # noqa: B017 - whatever the model raises for a bad input
        collect_statistics(encoder, [{"pixel_values": torch.zeros(2, 3, 5, 5)}], keys)
    assert all(not module._forward_pre_hooks for module in encoder.modules())
    assert collect_statistics(encoder, _batches((3,)), keys[:1], keep=4)[keys[0]].eigenvectors.shape == (32, 4)


class _Masked(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(3, 2)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.proj(input_ids)


def test_padding_tokens_are_left_out():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 3, generator=g)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    stats = collect_statistics(_Masked(), [{"input_ids": x, "attention_mask": mask}], ["proj.weight"])
    kept = x[mask.bool()].double()
    assert stats["proj.weight"].tokens == 5
    torch.testing.assert_close(stats["proj.weight"].covariance, kept.mT @ kept / 5)


def test_statistics_are_cached_per_task_samples_and_source(micro_zoo, tmp_path, monkeypatch):
    clear_memory_cache()
    task = micro_zoo.tasks[0].name
    first = activation_statistics(micro_zoo, task, n_samples=16, cache_dir=tmp_path)
    keys = selected_layers(micro_zoo.pretrained_state())
    assert list(first) == keys and len(list((tmp_path / "activations").glob("tiny-vit-*"))) == 1
    assert first[keys[0]].tokens == 16 * 17  # 16x16 images, patch 4: 16 patches + CLS

    def fail(*args, **kwargs):
        raise AssertionError("statistics were recomputed")

    monkeypatch.setattr(activations, "collect_statistics", fail)
    again = activation_statistics(micro_zoo, task, n_samples=16, cache_dir=tmp_path)  # memory
    clear_memory_cache()
    from_disk = activation_statistics(micro_zoo, task, n_samples=16, cache_dir=tmp_path)  # disk
    for key in keys:
        torch.testing.assert_close(again[key].covariance, first[key].covariance)
        torch.testing.assert_close(from_disk[key].covariance, first[key].covariance.float().double(),
                                   rtol=1e-6, atol=1e-7)
    monkeypatch.undo()

    other_samples = activation_statistics(micro_zoo, task, n_samples=8, cache_dir=tmp_path)
    pretrained = activation_statistics(micro_zoo, task, n_samples=16, source="pretrained", cache_dir=tmp_path)
    assert len(list((tmp_path / "activations").glob("tiny-vit-*"))) == 3
    assert not torch.allclose(other_samples[keys[0]].covariance, first[keys[0]].covariance)
    assert not torch.allclose(pretrained[keys[-1]].covariance, first[keys[-1]].covariance)
    with pytest.raises(ValueError, match="source"):
        activation_statistics(micro_zoo, task, source="merged", cache_dir=tmp_path)
