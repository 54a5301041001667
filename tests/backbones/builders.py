"""Tiny random CLIP, T5 and open_clip models saved in the real on-disk formats and layouts.

Each builder writes what the Hub (or a task-vector release) would hold, so the tests run the
backbones' real loading code with only the download replaced by a local path.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from tokenizers import pre_tokenizers
from transformers import (
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPTokenizer,
    CLIPVisionModel,
    T5Config,
    T5ForConditionalGeneration,
    T5Tokenizer,
)

from nufilt.backbones.hub import quiet_transformers

IMAGE = 32


def clip_tokenizer() -> CLIPTokenizer:
    """Byte-level BPE without merges: every byte is a token, alone or ending a word."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in pre_tokenizers.ByteLevel.alphabet():
        vocab[char] = len(vocab)
        vocab[char + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[])


def _tiny_clip_config(vocab_size: int) -> CLIPConfig:
    return CLIPConfig(
        text_config=dict(
            vocab_size=vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=77,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
            projection_dim=16,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=IMAGE,
            patch_size=8,
            projection_dim=16,
        ),
        projection_dim=16,
    )


def perturbed(state: dict[str, torch.Tensor], seed: int, scale: float = 0.05) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        k: v + scale * v.std().nan_to_num(1.0).clamp(min=1e-3) * torch.randn(v.shape, generator=generator)
        if v.is_floating_point() and v.numel() > 1
        else v.clone()
        for k, v in state.items()
    }


def build_clip_hub(root: Path, tasks=("mnist", "eurosat"), seed: int = 0) -> dict[str, Path]:
    """pretrained/ (CLIPModel + tokenizer + processor), one fine-tuned folder per task.

    The first task's model is saved by `CLIPVisionModel.save_pretrained` (this transformers'
    key names), the others as transformers 4 wrote them (`vision_model.` prefix), like the
    tanganke/clip-vit-* repos.
    """
    torch.manual_seed(seed)
    tokenizer = clip_tokenizer()
    pretrained = root / "pretrained"
    with quiet_transformers():
        model = CLIPModel(_tiny_clip_config(len(tokenizer)))
        model.save_pretrained(pretrained)
    tokenizer.save_pretrained(pretrained)
    CLIPImageProcessor(size={"shortest_edge": IMAGE}, crop_size={"height": IMAGE, "width": IMAGE}).save_pretrained(
        pretrained
    )
    paths = {"pretrained": pretrained}
    vision_config = model.config.vision_config
    base = {k.removeprefix("vision_model."): v for k, v in model.state_dict().items() if k.startswith("vision_model.")}
    for i, task in enumerate(tasks):
        folder = root / f"clip-vit-tiny_{task}"
        weights = perturbed(base, seed=100 + i)
        if i == 0:
            with quiet_transformers():
                vision = CLIPVisionModel(vision_config)
            vision.load_state_dict(weights, strict=False)
            with quiet_transformers():
                vision.save_pretrained(folder)
        else:
            folder.mkdir(parents=True)
            vision_config.save_pretrained(folder)
            save_file(
                {f"vision_model.{k}": v.contiguous() for k, v in weights.items()}, str(folder / "model.safetensors")
            )
        paths[task] = folder
    return paths


def random_images(n: int, seed: int, size: int = IMAGE + 8) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def write_image_folder(folder: Path, images, labels) -> None:
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        path = folder / str(int(label)) / f"{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)


# ---------------------------------------------------------------------------- T5

T5_WORDS = ["acceptable", "unacceptable", "yes", "no", "1.0", "2.0", "3.0", "4.0", "5.0"]


def t5_tokenizer() -> T5Tokenizer:
    """A unigram vocabulary of the answer words and single characters."""
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [("▁" + word, -1.0) for word in T5_WORDS]
    vocab += [(char, -4.0) for char in "abcdefghijklmnopqrstuvwxyz0123456789.,'\"?:()"]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def _t5_model(config: T5Config, tokenizer: T5Tokenizer, seed: int) -> T5ForConditionalGeneration:
    """A random T5 whose one-token answers depend on the input and are mostly answer words:
    answer-word embeddings scaled up, cross-attention outputs scaled up."""
    torch.manual_seed(seed)
    with quiet_transformers():
        model = T5ForConditionalGeneration(config)
    with torch.no_grad():
        words = ["acceptable", "unacceptable"] + [f"{i}.0" for i in range(1, 6)]  # CoLA and STS-B answers
        model.shared.weight[tokenizer.convert_tokens_to_ids(["▁" + w for w in words])] *= 8.0
        for block in model.decoder.block:
            block.layer[1].EncDecAttention.o.weight *= 30.0
    return model


def build_t5_hub(root: Path, tasks=("cola", "stsb")) -> dict[str, Path]:
    """pretrained/ (T5ForConditionalGeneration + tokenizer) and one fine-tuned folder per task.

    The first task's model is a perturbed pre-trained model; the others are other random models
    (seeds 2, 3, ...) whose STS-B answers are varied numbers, so that Spearman's rho is not degenerate.
    """
    tokenizer = t5_tokenizer()
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        feed_forward_proj="gated-gelu",
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    model = _t5_model(config, tokenizer, seed=3)
    pretrained = root / "pretrained"
    with quiet_transformers():
        model.save_pretrained(pretrained)
    tokenizer.save_pretrained(pretrained)
    paths = {"pretrained": pretrained}
    for i, task in enumerate(tasks):
        finetuned = _t5_model(config, tokenizer, seed=2 + max(i - 1, 0) * 10)
        if i == 0:
            finetuned.load_state_dict(perturbed(model.state_dict(), seed=200, scale=0.3))
        folder = root / f"flan-t5-tiny_glue-{task}"
        with quiet_transformers():
            finetuned.save_pretrained(folder)
        paths[task] = folder
    return paths


def glue_rows(task: str, n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    words = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "is", "big", "red", "blue", "why", "how"]

    def sentence() -> str:
        return " ".join(rng.choice(words, size=int(rng.integers(3, 9))))

    if task == "stsb":
        return [{"sentence1": sentence(), "sentence2": sentence(), "label": float(rng.uniform(0, 5))} for _ in range(n)]
    return [{"sentence": sentence(), "label": int(rng.integers(0, 2))} for _ in range(n)]


def write_jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


# ---------------------------------------------------------------------------- open_clip

OPEN_CLIP_CONFIG = {
    "model_cfg": {
        "embed_dim": 16,
        "quick_gelu": True,
        "vision_cfg": {"image_size": IMAGE, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    },
    "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]},
}


def build_open_clip_folder(root: Path, tasks=("SUN397", "Cars"), seed: int = 0) -> dict[str, Path]:
    """The task-vector layout: pretrained.pt (whole CLIP, torch.save of a state dict),
    <Task>/finetuned.safetensors (ImageEncoder-style `model.visual.` keys) or <Task>.pt."""
    import open_clip

    torch.manual_seed(seed)
    model = open_clip.CLIP(**OPEN_CLIP_CONFIG["model_cfg"])
    root.mkdir(parents=True, exist_ok=True)
    (root / "open_clip_config.json").write_text(json.dumps(OPEN_CLIP_CONFIG))
    torch.save(model.state_dict(), root / "pretrained.pt")
    paths = {"pretrained": root / "pretrained.pt"}
    visual = model.visual.state_dict()
    for i, task in enumerate(tasks):
        weights = perturbed(visual, seed=300 + i)
        if i % 2 == 0:
            path = root / task / "finetuned.safetensors"
            path.parent.mkdir()
            save_file({f"model.visual.{k}": v.contiguous() for k, v in weights.items()}, str(path))
        else:
            path = root / f"{task}.pt"
            torch.save({f"visual.{k}": v for k, v in weights.items()}, path)
        paths[task] = path
    return paths
