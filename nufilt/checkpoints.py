"""Merge checkpoints on disk, data-free: the pre-trained model and task models in, one model out.

`merge_checkpoints(pretrained, tasks, method, out)` is what an engineer with their own fine-tuned
models needs and what `python -m nufilt merge` runs: no task data, no evaluation. Inputs are
`save_pretrained` folders, `.safetensors` files, sharded indexes or (safely loaded) `.bin`/`.pt`
files, read lazily tensor by tensor (`nufilt.io.open_checkpoint`). The result is written
atomically:
- `out` ending in `.safetensors`: that one file;
- otherwise a folder: `model.safetensors`, the pre-trained folder's other files (config,
  preprocessor and tokenizer files; not its weights or model card) so `from_pretrained(out)`
  loads it, a `README.md` model card and `nufilt_merge.json` (method, options, inputs, per-step
  facts).
Checkpoints laid out differently are lined up first (`nufilt.align`): a `CLIPModel` pre-trained
folder with `CLIPVisionModel` task folders (or the reverse) merges the vision tower and keeps the
rest of the pre-trained model; the output has the pre-trained folder's class and key names.
Everything is checked before the first step (inputs exist, no input listed twice, `out` free, the
layouts line up), so a bad call fails at once and leaves nothing behind; a failing step
(mismatched shapes, NaN/Inf weights, ...) raises before anything is written.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .align import align, combine, subset
from .export import CARD_FILE, INFO_FILE
from .io import open_checkpoint, save_safetensors

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".msgpack", ".h5", ".index.json")
SKIPPED_FILES = (CARD_FILE, INFO_FILE)  # the pre-trained folder's own card and merge record


def _checked_inputs(pretrained: str | os.PathLike, tasks: Sequence[str | os.PathLike]) -> tuple[Path, list[Path]]:
    paths = [Path(pretrained), *(Path(task) for task in tasks)]
    if not tasks:
        raise ValueError("no task checkpoints given: merging needs at least one")
    seen: dict[Path, int] = {}
    for i, path in enumerate(paths):
        if not path.exists():
            what = "pre-trained checkpoint" if i == 0 else f"task checkpoint {i}"
            raise FileNotFoundError(f"{what} not found: {path}")
        resolved = path.resolve()
        if resolved in seen:
            first = "the pre-trained checkpoint" if seen[resolved] == 0 else f"task {seen[resolved]}"
            raise ValueError(f"{path} is listed twice (as {first} and as task {i}); each input must be distinct")
        seen[resolved] = i
    return paths[0], paths[1:]


def task_labels(paths: Sequence[Path]) -> list[str]:
    """Short distinct names for the inputs: the shortest trailing part of each path that tells
    them apart (`a/encoder`, `b/encoder` -> "a/encoder", "b/encoder"; `x.safetensors` stays)."""
    longest = max(len(path.parts) for path in paths)
    for depth in range(1, longest + 1):
        labels = ["/".join(path.parts[-depth:]) for path in paths]
        if len(set(labels)) == len(labels):
            return labels
    return [str(path) for path in paths]


def _check_out(out: Path, overwrite: bool, inputs: Sequence[Path]) -> None:
    target = out.resolve()
    for path in inputs:
        source = path.resolve()
        if target == source or target in source.parents:
            raise ValueError(f"--out {out} would overwrite the input {path}; write the merged model elsewhere")
    if out.exists() and not overwrite:
        if out.is_file() or any(out.iterdir()):
            raise FileExistsError(f"{out} exists and is not empty; choose another path or pass --overwrite")


def _companion_files(pretrained: Path) -> list[Path]:
    """The pre-trained folder's non-weight files (config, preprocessor, tokenizer, ...)."""
    if not pretrained.is_dir():
        return []
    return sorted(
        path for path in pretrained.iterdir()
        if path.is_file() and not path.name.startswith(".") and path.name not in SKIPPED_FILES
        and not path.name.endswith(WEIGHT_SUFFIXES)
    )


def merge_checkpoints(
    pretrained: str | os.PathLike,
    tasks: Sequence[str | os.PathLike],
    method: str = "nufilt",
    out: str | os.PathLike | None = None,
    *,
    options: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    progress: Callable[[str, float], None] | None = None,
    **common: Any,
) -> dict:
    """Merge `tasks` (in that order) into `pretrained` with `method` (a method or Table 4 ablation
    label; options: Table 9 for len(tasks) < `options`; `common`: layers, device, seed,
    spill_dir, allow_duplicates) and write the result to `out` (None: only merge). Returns the
    summary that `nufilt_merge.json` holds, with the merged state under "state" when `out` is None.
    """
    from .evaluation import method_spec
    from .merge import make_merger

    pretrained_path, task_paths = _checked_inputs(pretrained, tasks)
    spec = method_spec(method, len(task_paths), None, {method: dict(options or {})}, **common)
    out_path = None if out is None else Path(out)
    if out_path is not None:
        _check_out(out_path, overwrite, [pretrained_path, *task_paths])
    start = time.perf_counter()
    pretrained_state = open_checkpoint(pretrained_path)
    alignment, task_states = align(pretrained_state, [open_checkpoint(path) for path in task_paths])
    if progress and alignment.describe():
        progress(alignment.describe(), 0.0)
    merger = make_merger(spec.method, subset(pretrained_state, alignment.merged_keys), **spec.options)
    steps, labels = [], task_labels(task_paths)
    for i, (state, label) in enumerate(zip(task_states, labels, strict=True), start=1):
        merged = merger.add(state)
        report = merger.report
        steps.append({"step": i, "task": label, "seconds": report.seconds,
                      "task_norm": report.task_norm, "merged_norm": report.merged_norm})
        if progress:
            progress(f"merged task {i}/{len(task_paths)} ({label}) in {report.seconds:.1f} s", i / len(task_paths))
    summary = {
        "method": spec.label,
        "base_method": spec.method,
        "options": {k: v for k, v in spec.options.items() if k != "spill_dir"},
        "pretrained": str(pretrained_path),
        "tasks": [str(path) for path in task_paths],
        "selected_layers": len(merger.selected),
        "merged_tensors": len(alignment.merged_keys),
        "kept_pretrained": alignment.carried_parts,
        "layout_note": alignment.describe(),
        "steps": steps,
        "seconds": time.perf_counter() - start,
        "out": None if out_path is None else str(out_path),
    }
    whole = combine(pretrained_state, merged, list(pretrained_state)) if alignment.carried_keys else merged
    if out_path is None:
        carried = set(alignment.carried_keys)
        state = {key: whole[key].clone() if key in carried else whole[key] for key in whole}
        return {**summary, "state": state}
    try:
        _write(whole, pretrained_path, out_path, spec, summary)
    finally:
        if hasattr(merged, "release"):  # a spilled θ̄T: its file in spill_dir is no longer needed
            merged.release(delete=True)
    return summary


def _write(merged, pretrained_path: Path, out_path: Path, spec, summary: dict) -> None:
    from .export import publish_folder

    metadata = {"nufilt_method": spec.label, "nufilt_tasks": json.dumps(summary["tasks"])}
    if out_path.name.endswith(".safetensors"):
        save_safetensors(merged, out_path, metadata)
        return

    def fill(staging: Path) -> None:
        save_safetensors(merged, staging / "model.safetensors", metadata)
        for path in _companion_files(pretrained_path):
            shutil.copy2(path, staging / path.name)

    card = {"method": spec.label, "options": summary["options"], "order": [s["task"] for s in summary["steps"]],
            "base_model": str(pretrained_path), "extra": {"inputs": ", ".join(summary["tasks"])}}
    publish_folder(out_path, fill, card, summary)
