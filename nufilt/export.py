"""Export a merged model as a loadable `save_pretrained` folder with a short model card.

`save_merged(backbone, state, out_dir, card_info)` writes the backbone's own format (a
CLIPVisionModel or T5ForConditionalGeneration folder, or an open_clip folder) through the
backbone's `save_pretrained(state, dir)` when it has one, else the encoder's `save_pretrained`,
else a plain `model.safetensors`. A `README.md` model card and `nufilt_merge.json` (the same
facts, machine-readable) go beside the weights. The folder appears atomically: it is written
under a temporary name and renamed when complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

from . import __version__
from .backbones.base import Backbone, StateDict
from .cache import public_mode
from .io import save_safetensors

CARD_FILE = "README.md"
INFO_FILE = "nufilt_merge.json"


def _number(value) -> str:
    return "-" if value is None else f"{value:.1f}" if isinstance(value, float) else str(value)


def model_card(card_info: Mapping) -> str:
    """The model card text: front matter for the Hub, then method, options, order and scores.

    Recognised keys (all optional): backbone, base_model, method, options, order, scores
    ({task: percent}), acc, bwt, extra (free-form mapping).
    """
    base = card_info.get("base_model")
    lines = ["---", "tags:", "- merge", "- model-merging", "- continual-merging", "- nufilt"]
    if base:
        lines += [f"base_model: {base}"]
    lines += ["---", "", f"# Merged model: {card_info.get('method', 'unknown method')}", ""]
    lines += [
        f"Written by nufilt {__version__} on {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}: a data-free "
        "continual merge of fine-tuned models into one.",
        "",
    ]
    if card_info.get("backbone"):
        lines.append(f"- Backbone: `{card_info['backbone']}`" + (f" (base model `{base}`)" if base else ""))
    lines.append(f"- Method: `{card_info.get('method', '-')}`")
    options = card_info.get("options") or {}
    if options:
        lines.append("- Options: " + ", ".join(f"`{k}={v!r}`" for k, v in sorted(options.items())))
    order: Sequence[str] = card_info.get("order") or []
    if order:
        lines.append(f"- Task order ({len(order)} tasks): " + " → ".join(order))
    for label, key in (("ACC", "acc"), ("BWT", "bwt")):
        if card_info.get(key) is not None:
            lines.append(f"- {label}: {_number(card_info[key])}")
    scores: Mapping[str, float] = card_info.get("scores") or {}
    if scores:
        lines += ["", "| task | score (%) |", "|---|---|"]
        lines += [f"| {task} | {_number(score)} |" for task, score in scores.items()]
    for key, value in (card_info.get("extra") or {}).items():
        lines.append(f"- {key}: {value}")
    return "\n".join(lines) + "\n"


def _write_weights(backbone: Backbone, state: StateDict, folder: Path) -> None:
    if hasattr(backbone, "save_pretrained"):
        backbone.save_pretrained(state, folder)
        return
    encoder = backbone.build_encoder(state)
    if hasattr(encoder, "save_pretrained"):
        encoder.save_pretrained(folder, safe_serialization=True)
    else:
        save_safetensors(state, folder / "model.safetensors")


def publish_folder(out: Path, fill: Callable[[Path], None], card_info: Mapping, info: Mapping) -> Path:
    """Make `out` appear complete or not at all: `fill(staging)` writes the weights (and any other
    files) into a temporary folder beside it, the model card (from `card_info`) and `INFO_FILE`
    (`info` as JSON) are added, and the folder replaces `out` by a rename."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        fill(staging)
        (staging / CARD_FILE).write_text(model_card(card_info), encoding="utf-8")
        (staging / INFO_FILE).write_text(json.dumps(info, indent=2, default=str) + "\n", encoding="utf-8")
        public_mode(staging)
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        os.replace(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return out


def save_merged(
    backbone: Backbone,
    state: StateDict,
    out_dir: str | os.PathLike,
    card_info: Mapping | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the merged model to `out_dir` (see the module docstring); returns the folder."""
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; choose another folder or pass overwrite=True")
    info = {"backbone": getattr(backbone, "name", None), **(card_info or {})}
    info.setdefault("base_model", getattr(backbone, "model_id", None))
    return publish_folder(out, lambda staging: _write_weights(backbone, state, staging), info, info)
