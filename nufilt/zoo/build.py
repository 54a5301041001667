"""Pre-train, probe, fine-tune, save and load the embedded zoo (a tiny CLIP vision encoder).

Recipe (the analog of the paper's CLIP setting, scaled to 2 CPU cores):
1. pre-train a `CLIPVisionModel` on a mix of `PRETRAIN_TASKS` (one head each, discarded);
2. per evaluation task, fit a linear head on pre-trained features of a few labelled examples
   and freeze it (the analog of CLIP's zero-shot text head);
3. per task, fine-tune the encoder only, with small steps, against the frozen head.

Cache layout (all under `cache_dir`, see `nufilt.cache`; each <key> hashes a config stage):
    tiny-vit-<pretrain key>/pretrained/              encoder/ (save_pretrained), pretrained.json
    tiny-vit-<pretrain key>/heads-<key>/             heads.safetensors, heads.json
    tiny-vit-<pretrain key>/finetuned-<key>/<task>/  encoder/ (save_pretrained), task.json
    tiny-vit-<pretrain key>/finetuned-<key>/manifest.json   tasks, classes, accuracies, config

Shipped encoders (`SHIPPED_DIR`, in the repository): `tiny-vit-<pretrain key>.safetensors` with
`tiny-vit-<pretrain key>.json` beside it (pre-training config, sha256, seconds) are encoders this
module pre-trained (`ship_pretrained`). A cache without the encoder copies a shipped one whose key,
config and sha256 match instead of pre-training; any other config pre-trains as before.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn
from tqdm.auto import tqdm
from transformers import CLIPVisionConfig, CLIPVisionModel

from ..cache import (
    CacheWarning,
    atomic_save_tensors,
    atomic_write_bytes,
    atomic_write_json,
    check_integrity,
    config_hash,
    default_cache_dir,
    ensure_entry,
    file_sha256,
)
from .config import ZooConfig
from .tasks import make_split, stable_seed, task_spec

# progress(message, fraction of the current build stage in [0, 1])
ProgressFn = Callable[[str, float], None]
Head = tuple[torch.Tensor, torch.Tensor]  # weight (classes, width), bias (classes,)


def _no_progress(message: str, fraction: float) -> None:
    pass


@contextmanager
def _quiet_transformers():
    """Hide transformers' own progress bars while saving/loading our tiny models."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


# ---------------------------------------------------------------- model and data


from ..threads import torch_threads  # noqa: E402 (re-exported for the backbone)

BUILD_THREADS = 1  # training runs single-threaded: the zoo must not depend on the caller's thread count


def _build_threads():
    """Train with `BUILD_THREADS` torch threads, whatever the caller set.

    Multi-threaded kernels sum in a thread-count-dependent order, so the same config would give
    slightly different weights (measured: 20-task pre-trained / individual accuracy 59.0 / 86.6
    with one thread, 58.6 / 86.0 with two) under one cache key. These small matrices gain little
    from a second thread anyway (20-task build 7 min 44 s vs 6 min 36 s).
    """
    return torch_threads(BUILD_THREADS)


def encoder_config(config: ZooConfig) -> CLIPVisionConfig:
    return CLIPVisionConfig(
        hidden_size=config.width,
        intermediate_size=4 * config.width,
        num_hidden_layers=config.layers,
        num_attention_heads=config.attention_heads,
        num_channels=config.channels,
        image_size=16,
        patch_size=config.patch_size,
        projection_dim=config.width,
    )


def new_encoder(config: ZooConfig) -> CLIPVisionModel:
    torch.manual_seed(stable_seed("nufilt-zoo-init", config.seed) % 2**31)
    return CLIPVisionModel(encoder_config(config)).eval()


def encoder_from_state(config: ZooConfig, state: Mapping[str, torch.Tensor]) -> CLIPVisionModel:
    encoder = CLIPVisionModel(encoder_config(config))
    encoder.load_state_dict(dict(state))
    return encoder.eval()


def _attention(attention: nn.Module, queries: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """A CLIP attention layer's output for the tokens `queries`, attending over `inputs` (no mask)."""
    batch, heads, width = inputs.shape[0], attention.num_heads, attention.head_dim

    def split(tokens: torch.Tensor) -> torch.Tensor:  # (n, tokens, width) -> (n, heads, tokens, head width)
        return tokens.view(batch, -1, heads, width).transpose(1, 2)

    mixed = nn.functional.scaled_dot_product_attention(
        split(attention.q_proj(queries)), split(attention.k_proj(inputs)), split(attention.v_proj(inputs)),
        scale=attention.scale)
    return attention.out_proj(mixed.transpose(1, 2).reshape(batch, queries.shape[1], heads * width))


def _cls_features(encoder: CLIPVisionModel, images: torch.Tensor) -> torch.Tensor:
    """`encoder(pixel_values=images).pooler_output`, computing the last block for the CLS token only.

    The pooled output reads nothing but the CLS token after the last block, so that block's
    queries, attention output and MLP are needed for one token of each image, not all of them
    (its keys and values still come from every token): about 17% fewer operations on the zoo's
    5-token encoder. The blocks are the encoder's own modules (layer norms, projections, MLP) and
    its attention is the same scaled dot product, so the result is the full forward's to float
    rounding (tests/zoo/test_build.py compares the two).
    """
    vision = getattr(encoder, "vision_model", encoder)  # transformers 4.x nests the modules one level deeper
    hidden = vision.pre_layrnorm(vision.embeddings(images))
    layers = list(vision.encoder.layers)
    for index, layer in enumerate(layers):
        normed = layer.layer_norm1(hidden)
        if index == len(layers) - 1:  # from here on only the CLS token matters
            hidden = hidden[:, :1] + _attention(layer.self_attn, normed[:, :1], normed)
        else:
            hidden = hidden + _attention(layer.self_attn, normed, normed)
        hidden = hidden + layer.mlp(layer.layer_norm2(hidden))
    return vision.post_layernorm(hidden[:, 0])


@torch.no_grad()
def features(encoder: CLIPVisionModel, images: torch.Tensor, batch: int = 2048) -> torch.Tensor:
    """Pooled (post-LayerNorm CLS) features, (n, width): the encoder's `pooler_output`, with the
    last block computed for the CLS token alone (`_cls_features`)."""
    return torch.cat([_cls_features(encoder, images[i : i + batch]) for i in range(0, len(images), batch)])


def head_logits(feats: torch.Tensor, head: Head) -> torch.Tensor:
    """Logits of a head on L2-normalised features (as CLIP scores image against text)."""
    weight, bias = head
    return nn.functional.normalize(feats, dim=-1) @ weight.T + bias


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return 100.0 * float((logits.argmax(dim=1) == labels).float().mean())


def colorize(images: torch.Tensor, task: str, split: str, config: ZooConfig) -> torch.Tensor:
    """Grey images (n, 1, 16, 16) in [-1, 1] rendered in `config.channels` channels, in [-1, 1].

    An evaluation task draws every image in its own mix of the channels (a fixed Dirichlet(0.5)
    draw per task, scaled to a largest weight of 1, jittered ±0.1 per image), so different tasks
    excite different input directions; a pre-training image gets a fresh mix each, so the encoder
    learns every channel. Each channel is the grey image (in [-1, 1]) times the channel's weight,
    so a pixel is its grey value along the image's mix: a channel the mix leaves out stays 0. (A
    first version kept the background at -1 in every channel: the constant then dominated the
    patches and the 8-channel encoder's pre-training collapsed to one feature vector.)
    """
    count = config.channels
    pretraining = task in config.pretrain_tasks
    rng = np.random.default_rng(stable_seed("nufilt-zoo-colour", config.seed, task, split))
    if pretraining:
        mixes = rng.dirichlet(np.full(count, 0.5), size=len(images))
    else:
        base = np.random.default_rng(stable_seed("nufilt-zoo-task-colour", config.seed, task)).dirichlet(
            np.full(count, 0.5))
        mixes = base[None, :] + 0.1 * rng.standard_normal((len(images), count)) * base.max()
    mixes = np.clip(mixes, 0.0, None)
    mixes = mixes / np.maximum(mixes.max(axis=1, keepdims=True), 1e-6)
    weights = torch.from_numpy(mixes.astype(np.float32))[:, :, None, None]
    return images * weights


class TaskData:
    """Generated train/test splits of the zoo's tasks, made on first use and kept in memory."""

    def __init__(self, config: ZooConfig):
        self.config = config
        self._splits: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._guard = threading.Lock()

    def get(self, task: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The split, generated once: threads asking for the same split at once wait for one
        generation (some take most of a second), others go on."""
        key = (task, split)
        if key in self._splits:
            return self._splits[key]
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            if key not in self._splits:
                size = self.config.n_train if split == "train" else self.config.n_test
                if task in self.config.pretrain_tasks and split == "train":
                    size = self.config.pretrain_samples
                images, labels = make_split(task_spec(task), split, size, self.config.seed)
                if self.config.channels > 1:
                    images = colorize(images, task, split, self.config)
                self._splits[key] = images, labels
        return self._splits[key]

    def __getstate__(self) -> dict:  # (locks do not pickle; a copy gets its own)
        return {"config": self.config, "_splits": dict(self._splits)}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["config"])
        self._splits.update(state["_splits"])


def _warmup_cosine(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


# ---------------------------------------------------------------- the three training stages


def pretrain(config: ZooConfig, data: TaskData, progress: ProgressFn = _no_progress) -> CLIPVisionModel:
    """Multi-task supervised pre-training on `config.pretrain_tasks`; returns the encoder."""
    encoder = new_encoder(config).train()
    pools = [data.get(name, "train") for name in config.pretrain_tasks]
    images = torch.cat([x for x, _ in pools])
    sizes = [len(task_spec(name).classes) for name in config.pretrain_tasks]
    offsets = np.cumsum([0, *sizes])
    labels = torch.cat([y + int(offsets[i]) for i, (_, y) in enumerate(pools)])
    owner = torch.cat([torch.full((len(y),), i) for i, (_, y) in enumerate(pools)])
    # one joint head; each sample's logits are restricted to its own task's classes
    class_owner = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    head = nn.Linear(config.width, int(offsets[-1]))
    parameters = list(encoder.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=config.pretrain_lr, weight_decay=0.05)
    warmup = max(1, config.pretrain_steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: _warmup_cosine(step, config.pretrain_steps, warmup)
    )
    generator = torch.Generator().manual_seed(stable_seed("pretrain-batches", config.seed) % 2**63)
    bar = tqdm(range(config.pretrain_steps), desc="pre-training", leave=False, disable=None)
    for step in bar:
        index = torch.randint(0, len(images), (config.pretrain_batch,), generator=generator)
        logits = head(encoder(pixel_values=images[index]).pooler_output)
        logits = logits.masked_fill(class_owner[None, :] != owner[index, None], float("-inf"))
        loss = nn.functional.cross_entropy(logits, labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        if step % 25 == 0 or step == config.pretrain_steps - 1:
            bar.set_postfix(loss=f"{loss.item():.3f}")
            progress(f"pre-training step {step + 1}/{config.pretrain_steps}", (step + 1) / config.pretrain_steps)
    return encoder.eval()


def fit_head(encoder: CLIPVisionModel, config: ZooConfig, data: TaskData, task: str) -> Head:
    """A frozen head from `head_shots` labelled examples per class, scaled to `head_scale`.

    "prototype": the normalised mean feature of each class (what a zero-shot text embedding is
    to CLIP), no bias. "logistic": a logistic-regression probe on the normalised features.
    """
    images, labels = data.get(task, "train")
    rng = np.random.default_rng(stable_seed("head-shots", config.seed, task))
    n_classes = int(labels.max()) + 1
    shots = np.concatenate(
        [rng.choice(np.flatnonzero(labels.numpy() == c), config.head_shots, replace=False) for c in range(n_classes)]
    )
    feats = nn.functional.normalize(features(encoder, images[shots]), dim=-1)
    if config.head_kind == "prototype":
        means = torch.stack([feats[labels[shots] == c].mean(dim=0) for c in range(n_classes)])
        weight, bias = nn.functional.normalize(means, dim=-1), torch.zeros(n_classes)
    else:
        weight, bias = logistic_regression(feats, labels[shots], n_classes, inverse_l2=1.0)
        norm = weight.norm(dim=1).mean().clamp_min(1e-12)
        weight, bias = weight / norm, bias / norm
    return config.head_scale * weight, config.head_scale * bias


def logistic_regression(
    feats: torch.Tensor, labels: torch.Tensor, n_classes: int, inverse_l2: float, iterations: int = 200
) -> Head:
    """Multinomial logistic regression minimising Σ CE + ‖W‖² / (2 C) (sklearn's objective, C =
    `inverse_l2`; the bias is not penalised), solved by L-BFGS in float64."""
    x, y = feats.double(), labels
    weight = torch.zeros(n_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=iterations, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(x @ weight.T + bias, y, reduction="sum")
        loss = loss + weight.pow(2).sum() / (2 * inverse_l2)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return weight.detach().float(), bias.detach().float()


def finetune(
    pretrained: Mapping[str, torch.Tensor],
    head: Head,
    config: ZooConfig,
    data: TaskData,
    task: str,
    progress: ProgressFn = _no_progress,
) -> dict[str, torch.Tensor]:
    """Fine-tune the encoder (all of it) on `task` against the frozen head; returns its state."""
    encoder = encoder_from_state(config, pretrained).train()
    images, labels = data.get(task, "train")
    optimizer = torch.optim.Adam(encoder.parameters(), lr=config.finetune_lr)
    warmup = max(1, config.finetune_steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: _warmup_cosine(step, config.finetune_steps, warmup)
    )
    generator = torch.Generator().manual_seed(stable_seed("finetune-batches", config.seed, task) % 2**63)
    bar = tqdm(range(config.finetune_steps), desc=f"fine-tuning {task}", leave=False, disable=None)
    for step in bar:
        index = torch.randint(0, len(images), (config.finetune_batch,), generator=generator)
        logits = head_logits(_cls_features(encoder, images[index]), head)  # the pooled output, ~17% cheaper
        loss = nn.functional.cross_entropy(logits, labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 20 == 0 or step == config.finetune_steps - 1:
            bar.set_postfix(loss=f"{loss.item():.3f}")
            progress(f"fine-tuning {task}: step {step + 1}/{config.finetune_steps}", (step + 1) / config.finetune_steps)
    return {key: value.detach().clone() for key, value in encoder.state_dict().items()}


def task_vector_ratio(pretrained: Mapping[str, torch.Tensor], finetuned: Mapping[str, torch.Tensor]) -> float:
    """‖θt − θ0‖ / ‖θ0‖ over all parameters."""
    delta = sum(float((finetuned[k] - pretrained[k]).pow(2).sum()) for k in pretrained)
    base = sum(float(pretrained[k].pow(2).sum()) for k in pretrained)
    return math.sqrt(delta / base)


# ---------------------------------------------------------------- cache: save / load


def zoo_folder(config: ZooConfig, cache_dir: str | Path | None = None) -> Path:
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / f"tiny-vit-{pretrain_key(config)}"


def pretrained_folder(config: ZooConfig, cache_dir: str | Path | None = None) -> Path:
    return zoo_folder(config, cache_dir) / "pretrained"


def heads_folder(config: ZooConfig, cache_dir: str | Path | None = None) -> Path:
    return zoo_folder(config, cache_dir) / f"heads-{config_hash(config.stage_fields('heads'))}"


def finetuned_root(config: ZooConfig, cache_dir: str | Path | None = None) -> Path:
    return zoo_folder(config, cache_dir) / f"finetuned-{config_hash(config.stage_fields('finetune'))}"


def _save_encoder(config: ZooConfig, state: Mapping[str, torch.Tensor], folder: Path) -> None:
    with _quiet_transformers():
        encoder_from_state(config, state).save_pretrained(folder, safe_serialization=True)


def load_state(folder: str | Path) -> dict[str, torch.Tensor]:
    """The encoder state saved by `save_pretrained` in `folder`."""
    return load_file(Path(folder) / "model.safetensors")


def load_heads(folder: str | Path) -> dict[str, Head]:
    tensors = load_file(Path(folder) / "heads.safetensors")
    names = sorted({key.rsplit(".", 1)[0] for key in tensors})
    return {name: (tensors[f"{name}.weight"], tensors[f"{name}.bias"]) for name in names}


SHIPPED_DIR = Path(__file__).resolve().parent / "pretrained"
ENV_SHIPPED = "NUFILT_ZOO_SHIPPED"  # "0": ignore shipped encoders and pre-train (to re-make or check them)


def pretrain_key(config: ZooConfig) -> str:
    """The hash of the pre-training stage: names the cache folder and the shipped encoder."""
    return config_hash(config.stage_fields("pretrain"))


def _jsonable(value: object) -> object:
    """`value` as it reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps(value, default=list))


def shipped_files(config: ZooConfig, shipped_dir: str | Path | None = None) -> tuple[Path, Path]:
    """(weights, info) paths of the shipped encoder for `config`, whether or not they exist."""
    folder = Path(shipped_dir) if shipped_dir is not None else SHIPPED_DIR
    stem = f"tiny-vit-{pretrain_key(config)}"
    return folder / f"{stem}.safetensors", folder / f"{stem}.json"


def shipped_encoder(config: ZooConfig, shipped_dir: str | Path | None = None) -> tuple[Path, dict] | None:
    """The shipped encoder of `config` and its info, if one matches its pre-training stage.

    None when `$NUFILT_ZOO_SHIPPED` is "0", when no file carries this config's key, or when the
    recorded config differs; a file whose sha256 differs from the recorded one is reported (a
    `CacheWarning`) and not used.
    """
    if os.environ.get(ENV_SHIPPED, "").strip() == "0":
        return None
    weights, info_path = shipped_files(config, shipped_dir)
    if not (weights.is_file() and info_path.is_file()):
        return None
    info = json.loads(info_path.read_text())
    if info.get("pretrain_key") != pretrain_key(config) or info.get("config") != _jsonable(
        config.stage_fields("pretrain")
    ):
        return None
    if file_sha256(weights) != info.get("sha256"):
        warnings.warn(f"shipped encoder {weights} does not match its recorded sha256; pre-training instead",
                      CacheWarning, stacklevel=2)
        return None
    return weights, info


def ensure_pretrained(
    config: ZooConfig,
    cache_dir: str | Path | None = None,
    data: TaskData | None = None,
    progress: ProgressFn = _no_progress,
) -> Path:
    """The verified folder of the pre-trained encoder (built if needed: copied from a matching
    shipped encoder, else pre-trained)."""
    data = data or TaskData(config)

    def build(folder: Path) -> None:
        shipped = shipped_encoder(config)
        if shipped is not None:
            weights, info = shipped
            progress(f"pre-trained encoder from {weights.name} (shipped)", 1.0)
            state, seconds, source = load_file(weights), info["seconds"], "shipped"
        else:
            start = time.perf_counter()
            with _build_threads():
                state = pretrain(config, data, progress).state_dict()
            seconds, source = time.perf_counter() - start, "pre-trained"
        _save_encoder(config, state, folder / "encoder")
        atomic_write_json(folder / "pretrained.json",
                          {"config": config.stage_fields("pretrain"), "seconds": seconds, "source": source})

    folder, _ = ensure_entry(pretrained_folder(config, cache_dir), build)
    return folder


def _cpu_name() -> str:
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def ship_pretrained(
    config: ZooConfig, cache_dir: str | Path | None = None, shipped_dir: str | Path | None = None
) -> Path:
    """Copy the cache's encoder of `config` to the shipped files (weights + info); returns the
    weights' path. The encoder must have been pre-trained in that cache, not copied from a
    shipped file: run with `$NUFILT_ZOO_SHIPPED=0` into an empty cache."""
    folder = ensure_pretrained(config, cache_dir)
    info = json.loads((folder / "pretrained.json").read_text())
    if info.get("source", "pre-trained") != "pre-trained":  # entries made before "source" were pre-trained
        raise ValueError(f"the encoder in {folder} was not pre-trained there (source {info.get('source')!r}); "
                         f"build it with {ENV_SHIPPED}=0 into an empty cache")
    weights, info_path = shipped_files(config, shipped_dir)
    atomic_write_bytes(weights, (folder / "encoder" / "model.safetensors").read_bytes())
    atomic_write_json(info_path, {
        "pretrain_key": pretrain_key(config),
        "config": config.stage_fields("pretrain"),
        "sha256": file_sha256(weights),
        "seconds": info["seconds"],
        "torch": torch.__version__,
        "cpu": _cpu_name(),  # the weights are reproducible per CPU kind (docs/benchmark.md)
    })
    return weights


def ensure_heads(
    config: ZooConfig,
    cache_dir: str | Path | None = None,
    data: TaskData | None = None,
    progress: ProgressFn = _no_progress,
) -> Path:
    """The verified folder of the frozen heads of `config.tasks` and the pre-trained accuracies."""
    data = data or TaskData(config)
    encoder_folder = ensure_pretrained(config, cache_dir, data, progress) / "encoder"

    def build(folder: Path) -> None:
        encoder = encoder_from_state(config, load_state(encoder_folder))
        with _build_threads():
            heads = {task: fit_head(encoder, config, data, task) for task in config.tasks}
            pretrained = {}
            for task, head in heads.items():
                images, labels = data.get(task, "test")
                pretrained[task] = accuracy(head_logits(features(encoder, images), head), labels)
        tensors = {f"{task}.weight": w for task, (w, _) in heads.items()}
        tensors.update({f"{task}.bias": b for task, (_, b) in heads.items()})
        atomic_save_tensors(folder / "heads.safetensors", tensors)
        atomic_write_json(folder / "heads.json", {"config": config.stage_fields("heads"), "accuracy": pretrained})

    folder, _ = ensure_entry(heads_folder(config, cache_dir), build)
    return folder


def ensure_task(
    config: ZooConfig,
    task: str,
    cache_dir: str | Path | None = None,
    data: TaskData | None = None,
    progress: ProgressFn = _no_progress,
) -> Path:
    """The verified folder of the encoder fine-tuned on `task` (built if needed)."""
    if task not in config.tasks:
        raise ValueError(f"task {task!r} is not in this zoo; known tasks: {', '.join(config.tasks)}")
    data = data or TaskData(config)
    heads = ensure_heads(config, cache_dir, data, progress)

    def build(folder: Path) -> None:
        pretrained = load_state(pretrained_folder(config, cache_dir) / "encoder")
        head = load_heads(heads)[task]
        with _build_threads():
            start = time.perf_counter()
            state = finetune(pretrained, head, config, data, task, progress)
            seconds = time.perf_counter() - start
            images, labels = data.get(task, "test")
            encoder = encoder_from_state(config, state)
            score = accuracy(head_logits(features(encoder, images), head), labels)
        info = {
            "task": task,
            "classes": list(task_spec(task).classes),
            "accuracy": score,
            "task_vector_ratio": task_vector_ratio(pretrained, state),
            "finetune_seconds": seconds,
        }
        _save_encoder(config, state, folder / "encoder")
        atomic_write_json(folder / "task.json", info)

    folder, _ = ensure_entry(finetuned_root(config, cache_dir) / task, build)
    return folder


def _finetune_task(config: ZooConfig, task: str, cache_dir: str | Path | None) -> str:
    """Worker-process entry: build one fine-tuned task model into the shared cache."""
    ensure_task(config, task, cache_dir)
    return task


def _finetune_in_processes(
    config: ZooConfig, tasks: Sequence[str], cache_dir: str | Path | None, workers: int, report: ProgressFn
) -> None:
    """Fine-tune `tasks` in `workers` spawned processes, each on one torch thread.

    Every task model is trained single-threaded either way, so the result is bit-identical to a
    sequential build; processes only use the machine's other cores (a second torch thread per
    kernel gains little on these small matrices). Entries are atomic, so a failed or killed
    worker leaves nothing half-written behind.
    """
    import multiprocessing
    import warnings
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    context = multiprocessing.get_context("spawn")  # no fork of a process holding torch threads
    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            futures = [pool.submit(_finetune_task, config, task, cache_dir) for task in tasks]
            for done, future in enumerate(as_completed(futures), start=1):
                task = future.result()  # re-raises a worker's error here
                report(f"fine-tuned {task} ({done}/{len(tasks)}, {workers} processes)", done / len(tasks))
    except BrokenProcessPool as error:  # e.g. a script without `if __name__ == "__main__":` guard
        warnings.warn(f"zoo build: worker processes failed ({error}); fine-tuning the remaining tasks "
                      "in this process", RuntimeWarning, stacklevel=3)


def build_workers(config: ZooConfig, missing: int) -> int:
    """Processes for fine-tuning `missing` task models: `$NUFILT_BUILD_WORKERS`, else up to two
    CPUs for a zoo whose tasks take seconds each (spawning costs ~5 s; the micro zoo stays serial)."""
    value = os.environ.get("NUFILT_BUILD_WORKERS", "").strip()
    if value:
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"NUFILT_BUILD_WORKERS must be a positive integer, got {value!r}")
        wanted = int(value)
    else:
        cost = config.finetune_steps * config.finetune_batch * config.width**2  # ~ seconds per task
        wanted = min(2, os.cpu_count() or 1) if cost >= 200 * 32 * 128**2 else 1
    return max(1, min(wanted, missing))


def pretrain_share(config: ZooConfig, pretrain_needed: bool, finetunes: int, workers: int = 1) -> float:
    """The pre-training's share of a build's time: training images processed, pre-training
    (steps x batch) against the missing fine-tunings (steps x batch each, spread over `workers`
    processes at the 1.98x measured for two on the idle machine on 2026-12-05, 1.56x earlier).
    Measured on the 2-core machine (bench/zoo_build.py): 1.5 ms per pre-training image, 1.52 ms
    per fine-tuning image (one thread each; fine-tuning computes the last block for the CLS token
    only)."""
    if not pretrain_needed:
        return 0.0
    pretraining = 1.5 * config.pretrain_steps * config.pretrain_batch
    speedup = 1.0 if workers <= 1 else 1.98 * workers / 2
    finetuning = 1.52 * finetunes * config.finetune_steps * config.finetune_batch / speedup
    return pretraining / (pretraining + finetuning) if pretraining + finetuning > 0 else 1.0


def build_zoo(
    config: ZooConfig,
    tasks: Sequence[str] | None = None,
    cache_dir: str | Path | None = None,
    progress: ProgressFn = _no_progress,
    workers: int | None = 1,
) -> dict:
    """Build (or verify) the pre-trained model, the heads and the fine-tuned `tasks`; returns the
    manifest. `progress(message, fraction)` receives the overall fraction done, each stage
    weighted by its measured cost (`pretrain_share`). Missing task models are fine-tuned in
    `workers` processes (None: `build_workers` decides, as the CLI and the app do), with the same
    result as one by one. The default stays in this process: spawned workers re-import the
    caller's main script, which must then be guarded by `if __name__ == "__main__":`."""
    tasks = list(config.tasks if tasks is None else tasks)
    data = TaskData(config)
    root = finetuned_root(config, cache_dir)
    missing = [t for t in tasks if check_integrity(root / t, deep=False) is not None]
    workers = build_workers(config, len(missing)) if workers is None else min(workers, len(missing))
    pretrain_needed = not pretrained_folder(config, cache_dir).exists() and shipped_encoder(config) is None
    pre_share = pretrain_share(config, pretrain_needed, len(missing), max(workers, 1))
    heads = ensure_heads(config, cache_dir, data, lambda message, f: progress(message, pre_share * f))
    if workers > 1:
        progress(f"starting {workers} processes to fine-tune {len(missing)} task models", pre_share)
        _finetune_in_processes(config, missing, cache_dir, workers,
                               lambda message, f: progress(message, pre_share + (1 - pre_share) * f))
    folders = {}
    for i, task in enumerate(tqdm(tasks, desc="zoo tasks", leave=False, disable=None)):

        def report(message: str, fraction: float, i: int = i) -> None:
            progress(message, pre_share + (1 - pre_share) * (i + fraction) / len(tasks))

        folders[task] = ensure_task(config, task, cache_dir, data, report)
    progress("zoo ready", 1.0)
    # the file lists every task built so far (a later, smaller build must not hide the others)
    built = {t: root / t for t in config.tasks if check_integrity(root / t, deep=False) is None}
    atomic_write_json(root / "manifest.json", _manifest(config, cache_dir, heads, built))
    return _manifest(config, cache_dir, heads, folders)


def _manifest(config: ZooConfig, cache_dir: str | Path | None, heads: Path, folders: Mapping[str, Path]) -> dict:
    pre = pretrained_folder(config, cache_dir)
    pretrained_info = json.loads((pre / "pretrained.json").read_text())
    pretrained_accuracy = json.loads((heads / "heads.json").read_text())["accuracy"]
    tasks = []
    for task, folder in folders.items():
        info = json.loads((folder / "task.json").read_text())
        tasks.append(
            {
                "name": task,
                "classes": info["classes"],
                "pretrained_accuracy": pretrained_accuracy[task],
                "individual_accuracy": info["accuracy"],
                "task_vector_ratio": info["task_vector_ratio"],
                "finetune_seconds": info["finetune_seconds"],
                "encoder": str(folder / "encoder"),
            }
        )
    return {
        "backbone": "tiny-vit",
        "config": asdict(config),
        "pretrained": {"encoder": str(pre / "encoder"), "heads": str(heads / "heads.safetensors")},
        "pretrain_seconds": pretrained_info["seconds"],
        "tasks": tasks,
    }
