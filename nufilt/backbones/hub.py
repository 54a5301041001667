"""Shared helpers of the hub backbones: resolving model ids, offline errors, datasets, devices.

A "model id" is either a local folder (what `save_pretrained` writes) or a Hugging Face Hub repo
id. Hub ids are looked up in the local cache first and downloaded only when missing; without
network or cache the caller gets a `HubUnavailableError` that says what could not be fetched and
how to point nufilt at a local copy instead.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

WEIGHT_PATTERNS = ("*.safetensors", "*.safetensors.index.json")
PICKLE_WEIGHT_PATTERNS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "pytorch_model-*.bin")
CONFIG_PATTERNS = ("*.json", "*.txt", "*.model")  # configs, tokenizer and processor files


class HubUnavailableError(RuntimeError):
    """A model or dataset that is neither a local path nor fetchable from the Hub right now."""


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _unavailable(what: str, repo_id: str, error: Exception, hint: str) -> HubUnavailableError:
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return HubUnavailableError(
        f"could not fetch {what} {repo_id!r} from the Hugging Face Hub "
        f"({'offline mode' if offline() else 'no network or not found'}, and not in the local "
        f"cache): {reason}\n{hint}"
    )


def model_hint(option: str = "model_id") -> str:
    return (
        "Download it where there is network (`huggingface-cli download <id> --local-dir DIR`) and "
        f"point nufilt at the folder: `--backbone local:DIR` or the `{option}=DIR` option; "
        "folders written by `save_pretrained` work as they are."
    )


def _has_weights(folder: Path) -> bool:
    names = [p.name for p in folder.iterdir()]
    return any(n.endswith((".safetensors", ".bin", ".pt", ".pth")) for n in names)


def resolve_model_dir(
    model_id: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None = None,
    weights: bool = True,
    what: str = "model",
    hint: str | None = None,
) -> Path:
    """Local folder for `model_id` (a path, or a Hub repo id fetched into the HF cache).

    Only configs, tokenizer files and weights are fetched: safetensors when the repo has them,
    `pytorch_model.bin` otherwise.
    """
    path = Path(os.path.expanduser(str(model_id)))
    if path.is_dir():
        return path
    if path.is_absolute() or str(model_id).startswith((".", "~")) or str(model_id).count("/") != 1:
        raise FileNotFoundError(f"{what} folder not found: {model_id}")
    from huggingface_hub import snapshot_download

    repo_id = str(model_id)
    patterns = list(CONFIG_PATTERNS) + (list(WEIGHT_PATTERNS) if weights else [])

    def fetch(allow: Sequence[str], local_only: bool) -> Path:
        return Path(
            snapshot_download(repo_id, allow_patterns=list(allow), cache_dir=cache_dir, local_files_only=local_only)
        )

    folder = None
    with contextlib.suppress(Exception):  # cache first: no network round trip when present
        folder = fetch(patterns, local_only=True)
        if weights and not _has_weights(folder):
            folder = None
    if folder is None:
        try:
            folder = fetch(patterns, local_only=offline())
            if weights and not _has_weights(folder):
                folder = fetch(list(CONFIG_PATTERNS) + list(PICKLE_WEIGHT_PATTERNS), offline())
        except Exception as error:  # noqa: BLE001 - every hub failure becomes one clear message
            raise _unavailable(what, repo_id, error, hint or model_hint()) from None
    if weights and not _has_weights(folder):
        raise HubUnavailableError(f"{what} {repo_id!r} has no safetensors or pytorch_model.bin weights")
    return folder


def resolve_weights(model_id: str, *, cache_dir: str | os.PathLike | None = None, what: str = "model") -> Path:
    """A weights file as it is, else the folder `resolve_model_dir` finds or fetches."""
    path = Path(os.path.expanduser(str(model_id)))
    return path if path.is_file() else resolve_model_dir(model_id, cache_dir=cache_dir, what=what)


def load_hf_dataset(path: str, name: str | None, split: str, cache_dir: str | None = None):
    """`datasets.load_dataset(path, name, split=split)` with clear messages when it cannot run."""
    try:
        import datasets
    except ImportError:
        raise ImportError(
            f"evaluating on {path!r} needs the Hugging Face `datasets` package, which is not "
            "installed: `pip install datasets`, or pass `data_dir=` with local test sets "
            "(see docs/real-backbones.md)."
        ) from None
    try:
        return datasets.load_dataset(path, name, split=split, cache_dir=cache_dir)
    except Exception as error:  # noqa: BLE001
        raise _unavailable(
            "dataset",
            path if name is None else f"{path}:{name}",
            error,
            "Fetch it where there is network (it then stays in the datasets cache) or pass "
            "`data_dir=` with local test sets (see docs/real-backbones.md).",
        ) from None


TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "spiece.model", "sentencepiece.bpe.model")


def require_tokenizer(folder: Path) -> Path:
    """`folder` if it holds tokenizer files; transformers 5 would silently build an empty one."""
    if not any((Path(folder) / name).is_file() for name in TOKENIZER_FILES):
        raise FileNotFoundError(
            f"{folder} has no tokenizer files ({', '.join(TOKENIZER_FILES)}); save the tokenizer "
            "beside the pre-trained model (`tokenizer.save_pretrained(folder)`)"
        )
    return Path(folder)


def pick_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load reports and progress bars for the duration of a load."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def seeded_subset(n_total: int, max_samples: int | None, seed: int = 0) -> list[int]:
    """All indices, or a fixed random subset of `max_samples` (test sets are often label-sorted)."""
    if max_samples is None or max_samples >= n_total:
        return list(range(n_total))
    generator = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(n_total, generator=generator)[:max_samples].tolist())
