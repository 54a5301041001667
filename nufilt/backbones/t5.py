"""Flan-T5-base on the paper's eight GLUE tasks (Table 2), as text-to-text problems.

Pre-trained `google/flan-t5-base`; fine-tuned `tanganke/flan-t5-base_glue-<task>`. The whole
encoder-decoder is merged (the method's layer preset decides which weights are filtered). Each
validation example becomes a prompt (`nufilt/data/glue_tasks.json`); the model's greedy answer is
scored by exact match, and for STS-B by Spearman's rho between the parsed number and the label.
`data_dir=` replaces the Hub GLUE sets by local `<data_dir>/<task>/test.jsonl` files.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from ..io import LazyStateDict, open_checkpoint, pick_keys, read_jsonl
from .base import Backbone, StateDict, TaskInfo
from .clip import _no_init, select_tasks
from .hub import (
    load_hf_dataset,
    pick_device,
    quiet_transformers,
    require_tokenizer,
    resolve_model_dir,
    resolve_weights,
    seeded_subset,
)

PRETRAINED = "google/flan-t5-base"
FINETUNED_PATTERN = "tanganke/flan-t5-base_glue-{task}"
# transformers 4 files may name the shared embedding only through the tied copies
_SHARED_ALIASES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")


@functools.cache
def glue_task_specs() -> dict[str, dict]:
    text = resources.files("nufilt.data").joinpath("glue_tasks.json").read_text(encoding="utf-8")
    return {spec["name"]: spec for spec in json.loads(text)["tasks"]}


def prompt_and_target(spec: Mapping, row: Mapping) -> tuple[str, str]:
    """The text-to-text form of one GLUE example."""
    prompt = spec["prompt"].format(**{field: row[field] for field in spec["fields"]})
    targets = spec["targets"]
    if isinstance(targets, str):  # STS-B: the score itself, formatted
        return prompt, targets.format(float(row["label"]))
    return prompt, targets.get(str(int(row["label"])), "")


def spearman_rho(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (average ranks for ties); 0 when either side is constant."""
    from scipy.stats import rankdata

    rx = torch.tensor(rankdata(x), dtype=torch.float64)
    ry = torch.tensor(rankdata(y), dtype=torch.float64)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denominator = float(rx.norm() * ry.norm())
    return float(rx @ ry) / denominator if denominator > 0 else 0.0


def _parse_float(text: str) -> float:
    try:
        return float(text.strip())
    except ValueError:
        return 0.0  # an unparsable answer counts as 0, as in the paper's evaluation code


def score_answers(metric: str, answers: Sequence[str], targets: Sequence[str]) -> float:
    """Percent: exact-match accuracy, or 100 x Spearman's rho."""
    if metric == "spearman":
        return 100.0 * spearman_rho([_parse_float(a) for a in answers], [_parse_float(t) for t in targets])
    hits = sum(a.strip() == t.strip() for a, t in zip(answers, targets, strict=True))
    return 100.0 * hits / max(len(targets), 1)


class T5Backbone(Backbone):
    """Flan-T5 encoder-decoders from the Hub or local `save_pretrained` folders."""

    family = "t5"

    def __init__(
        self,
        name: str,
        *,
        model_id: str = PRETRAINED,
        finetuned_pattern: str = FINETUNED_PATTERN,
        finetuned: Mapping[str, str] | None = None,
        tasks: Sequence[str] | int | str | None = None,
        data_dir: str | os.PathLike | None = None,
        cache_dir: str | os.PathLike | None = None,
        device: str = "auto",
        batch_size: int | None = None,
        max_samples: int | None = None,
        max_new_tokens: int = 10,
        max_input_length: int = 512,
    ):
        self.name = name
        self.model_id = str(model_id)
        self.finetuned_pattern = finetuned_pattern
        self.finetuned_paths = dict(finetuned or {})
        self.specs = glue_task_specs()
        self.task_names = select_tasks(self.specs, tasks)
        self.paper_column = None
        self.data_dir = data_dir
        self.cache_dir = None if cache_dir is None else str(cache_dir)
        self.device = pick_device(device)
        self.batch_size = batch_size or (64 if self.device.type == "cuda" else 16)
        self.max_samples = max_samples
        self.max_new_tokens = max_new_tokens
        self.max_input_length = max_input_length

    @functools.cached_property
    def pretrained_dir(self) -> Path:
        return resolve_model_dir(self.model_id, cache_dir=self.cache_dir, what="pre-trained T5 model")

    @functools.cached_property
    def config(self):
        from transformers import T5Config

        return T5Config.from_pretrained(self.pretrained_dir)

    @functools.cached_property
    def separate_output_layer(self) -> bool:
        """Flan-T5 files hold an output layer of their own (`lm_head.weight` unlike `shared.weight`);
        transformers 5 then leaves it untied on load, and so do we."""
        checkpoint = open_checkpoint(self.pretrained_dir)
        if "lm_head.weight" not in checkpoint or "shared.weight" not in checkpoint:
            return False
        return not torch.equal(checkpoint["lm_head.weight"], checkpoint["shared.weight"])

    def _new_model(self) -> nn.Module:
        """An untrained T5ForConditionalGeneration tied the way `from_pretrained` would tie it."""
        from transformers import T5ForConditionalGeneration

        with _no_init(), quiet_transformers():
            model = T5ForConditionalGeneration(self.config)
        model.tie_weights()  # no_init_weights may leave the embedding copies untied
        if self.separate_output_layer:
            model.lm_head.weight = nn.Parameter(torch.empty_like(model.shared.weight))
            tied = getattr(model, "all_tied_weights_keys", None)
            if isinstance(tied, dict):
                tied.pop("lm_head.weight", None)
        return model

    @functools.cached_property
    def model_keys(self) -> list[str]:
        """Parameter names (tied copies once) and persistent buffers of the model."""
        with torch.device("meta"):
            model = self._new_model()
        tied = _tied(model)
        return [k for k in model.state_dict() if k not in tied]

    def _pick(self, checkpoint: LazyStateDict) -> LazyStateDict:
        names = {k: k for k in checkpoint}
        if "shared.weight" not in checkpoint:
            alias = next((a for a in _SHARED_ALIASES if a in checkpoint), None)
            if alias is not None:
                names["shared.weight"] = alias
        if "lm_head.weight" in self.model_keys and "lm_head.weight" not in checkpoint and "shared.weight" in names:
            names["lm_head.weight"] = names["shared.weight"]  # a task model saved with a tied output layer
        return pick_keys(checkpoint.renamed(names), self.model_keys)

    def pretrained_state(self) -> LazyStateDict:
        return self._pick(open_checkpoint(self.pretrained_dir))

    def finetuned_id(self, task: str) -> str:
        if task not in self.task_names:
            known = ", ".join(self.task_names)
            raise ValueError(f"unknown task {task!r} for backbone {self.name!r}; known tasks: {known}")
        return str(self.finetuned_paths.get(task) or self.finetuned_pattern.format(task=task))

    def _finetuned_path(self, task: str) -> Path:
        return resolve_weights(self.finetuned_id(task), cache_dir=self.cache_dir, what=f"fine-tuned model for {task!r}")

    def prepare(self) -> None:
        """Find (or fetch) every model and check its weight names up front, so a run fails early."""
        self.pretrained_state()
        for task in self.task_names:
            self.finetuned_state(task)

    def finetuned_state(self, task: str) -> LazyStateDict:
        return self._pick(open_checkpoint(self._finetuned_path(task)))

    @property
    def tasks(self) -> list[TaskInfo]:
        return [
            TaskInfo(
                name=name,
                classes=tuple(v for v in self.specs[name]["targets"].values())
                if isinstance(self.specs[name]["targets"], dict)
                else (),
                metric=self.specs[name]["metric"],
                paper_id=self.specs[name]["paper_id"],
                extra={"paper_name": self.specs[name]["paper_name"], "finetuned": self.finetuned_id(name)},
            )
            for name in self.task_names
        ]

    def build_encoder(self, state: StateDict) -> nn.Module:
        model = self._new_model()
        result = model.load_state_dict(dict(state), strict=False)
        tied = _tied(model)
        missing = [k for k in result.missing_keys if k not in tied]
        if missing or result.unexpected_keys:
            raise KeyError(
                f"state does not fit the T5 model: missing {missing[:4]}, unexpected {result.unexpected_keys[:4]}"
            )
        return model.eval()

    @functools.cached_property
    def tokenizer(self):
        from transformers import AutoTokenizer

        with quiet_transformers():
            return AutoTokenizer.from_pretrained(require_tokenizer(self.pretrained_dir))

    def _rows(self, task: str, split: str) -> list[dict]:
        spec = self.specs[task]
        if self.data_dir is not None:
            path = Path(self.data_dir) / task / f"{split}.jsonl"
            if not path.is_file():
                raise FileNotFoundError(f"no local {split!r} split for task {task!r}: {path} is missing")
            rows = read_jsonl(path)
        else:
            hub_split = spec["split"] if split == "test" else split
            rows = load_hf_dataset(spec["dataset"], spec["config"], hub_split, self.cache_dir)
        limit = self.max_samples if split == "test" else None
        return [dict(rows[i]) for i in seeded_subset(len(rows), limit)]

    def _pairs(self, task: str, split: str) -> tuple[list[str], list[str]]:
        pairs = [prompt_and_target(self.specs[task], row) for row in self._rows(task, split)]
        return [p for p, _ in pairs], [t for _, t in pairs]

    def _encode(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        return self.tokenizer(
            prompts, padding=True, truncation=True, max_length=self.max_input_length, return_tensors="pt"
        )

    @torch.no_grad()
    def answers(self, model: nn.Module, prompts: Sequence[str]) -> list[str]:
        """Greedy answers of `model` to `prompts`."""
        out = []
        for start in range(0, len(prompts), self.batch_size):
            inputs = self._encode(list(prompts[start : start + self.batch_size])).to(self.device)
            generated = model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False, num_beams=1)
            out.extend(self.tokenizer.batch_decode(generated, skip_special_tokens=True))
        return out

    def evaluate(self, state: StateDict, tasks: Sequence[str]) -> dict[str, float]:
        model = self.build_encoder(state).to(self.device)
        scores = {}
        for task in tasks:
            prompts, targets = self._pairs(task, "test")
            scores[task] = score_answers(self.specs[task]["metric"], self.answers(model, prompts), targets)
        return scores

    def activation_batches(self, task: str, n_samples: int, split: str = "test") -> Iterator[dict[str, torch.Tensor]]:
        """Encoder inputs plus the target answer as decoder input (teacher forcing)."""
        self.task(task)
        prompts, targets = self._pairs(task, split)
        prompts, targets = prompts[:n_samples], targets[:n_samples]
        start_id = self.config.decoder_start_token_id or 0
        for start in range(0, len(prompts), self.batch_size):
            inputs = self._encode(prompts[start : start + self.batch_size])
            labels = self.tokenizer(targets[start : start + self.batch_size], padding=True, return_tensors="pt")
            decoder_ids = labels["input_ids"].roll(1, dims=1)
            decoder_ids[:, 0] = start_id
            yield {**inputs, "decoder_input_ids": decoder_ids}

    def save_pretrained(self, state: StateDict, out_dir: str | os.PathLike) -> Path:
        """A T5ForConditionalGeneration folder with the tokenizer beside it."""
        out = Path(out_dir)
        with quiet_transformers():
            self.build_encoder(state).save_pretrained(out, safe_serialization=True)
            self.tokenizer.save_pretrained(out)
        return out


def _tied(model: nn.Module) -> set[str]:
    """Names of tensors that share a parameter registered under another name."""
    named = dict(model.named_parameters(remove_duplicate=False))
    first: dict[int, str] = {}
    tied = set()
    for key, param in named.items():
        if id(param) in first:
            tied.add(key)
        else:
            first[id(param)] = key
    return tied


def make_backbone(argument: str, **kwargs) -> T5Backbone:
    """`flan-t5-base`; `model_id=` / `finetuned_pattern=` may name local folders."""
    if argument != "flan-t5-base":
        raise ValueError(f"unknown T5 backbone {argument!r}; known: flan-t5-base")
    return T5Backbone(argument, **kwargs)
