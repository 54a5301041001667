"""Layer presets across the CLIP, T5 and open_clip naming families."""

import pytest
import torch

from nufilt.statedict import PAPER_NUFILT_PATTERNS, is_linear_weight, select_keys


def _state(keys):
    return {k: torch.zeros(shape) for k, shape in keys.items()}


T5_KEYS = {
    "shared.weight": (32, 8),
    "encoder.block.0.layer.0.SelfAttention.q.weight": (8, 8),
    "encoder.block.0.layer.0.SelfAttention.o.weight": (8, 8),
    "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight": (4, 2),
    "encoder.block.0.layer.0.layer_norm.weight": (8,),
    "encoder.block.0.layer.1.DenseReluDense.wi.weight": (16, 8),
    "encoder.block.0.layer.1.DenseReluDense.wo.weight": (8, 16),
    "decoder.block.0.layer.1.EncDecAttention.k.weight": (8, 8),
    "lm_head.weight": (32, 8),
}
OPENCLIP_KEYS = {
    "visual.conv1.weight": (8, 3, 4, 4),
    "visual.positional_embedding": (5, 8),
    "visual.transformer.resblocks.0.attn.in_proj_weight": (24, 8),
    "visual.transformer.resblocks.0.attn.in_proj_bias": (24,),
    "visual.transformer.resblocks.0.attn.out_proj.weight": (8, 8),
    "visual.transformer.resblocks.0.mlp.c_fc.weight": (32, 8),
    "visual.transformer.resblocks.0.mlp.c_proj.weight": (8, 32),
}


def test_t5_paper_preset_selects_attention_and_feed_forward_linears():
    selected = select_keys(_state(T5_KEYS), "paper", PAPER_NUFILT_PATTERNS, matrix_rule=True)
    assert selected == {
        "encoder.block.0.layer.0.SelfAttention.q.weight",
        "encoder.block.0.layer.0.SelfAttention.o.weight",
        "encoder.block.0.layer.1.DenseReluDense.wi.weight",
        "encoder.block.0.layer.1.DenseReluDense.wo.weight",
        "decoder.block.0.layer.1.EncDecAttention.k.weight",
    }


def test_openclip_paper_preset_selects_fused_attention_out_proj_and_c_fc():
    selected = select_keys(_state(OPENCLIP_KEYS), "paper", PAPER_NUFILT_PATTERNS, matrix_rule=True)
    assert selected == {
        "visual.transformer.resblocks.0.attn.in_proj_weight",
        "visual.transformer.resblocks.0.attn.out_proj.weight",
        "visual.transformer.resblocks.0.mlp.c_fc.weight",
    }


def test_all_linear_excludes_embeddings_norms_and_convolutions():
    state = _state(T5_KEYS | OPENCLIP_KEYS)
    selected = select_keys(state, "all-linear", PAPER_NUFILT_PATTERNS, matrix_rule=True)
    assert "shared.weight" not in selected and "visual.positional_embedding" not in selected
    assert "visual.conv1.weight" not in selected
    assert "encoder.block.0.layer.0.layer_norm.weight" not in selected
    assert "visual.transformer.resblocks.0.mlp.c_proj.weight" in selected
    assert "lm_head.weight" in selected
    assert not is_linear_weight("x.weight", torch.zeros(3, 3, dtype=torch.int64))


def test_paper_preset_on_an_unknown_architecture_says_what_to_do():
    with pytest.raises(ValueError, match="layers='all-linear'"):
        select_keys(_state({"backbone.dense.weight": (4, 4)}), "paper", PAPER_NUFILT_PATTERNS, matrix_rule=True)
