"""The merged model as a download (.zip, .safetensors) or a folder."""

from __future__ import annotations

import io
import os
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..backbones.base import Backbone, StateDict


def export_zip(backbone: Backbone, state: StateDict, card_info: Mapping[str, Any]) -> bytes:
    """The merged model as a zipped `save_pretrained` folder with its model card (`export.save_merged`)."""
    from ..export import save_merged

    with tempfile.TemporaryDirectory(prefix="nufilt-export-") as tmp:
        folder = save_merged(backbone, state, Path(tmp) / "merged", card_info)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(folder.rglob("*")):
                if path.is_file():
                    archive.write(path, Path("merged") / path.relative_to(folder))
        return buffer.getvalue()


def export_safetensors(state: StateDict, card_info: Mapping[str, Any]) -> bytes:
    """The merged encoder weights as one safetensors file (metadata: method and order)."""
    from ..io import save_safetensors

    metadata = {"method": str(card_info.get("method", "")), "order": ",".join(card_info.get("order", []))}
    with tempfile.TemporaryDirectory(prefix="nufilt-export-") as tmp:
        path = save_safetensors(dict(state), Path(tmp) / "model.safetensors", metadata)
        return path.read_bytes()


def save_to_folder(backbone: Backbone, state: StateDict, folder: str, card_info: Mapping[str, Any],
                   roots: Sequence[Path] | None = None) -> Path:
    """`export.save_merged` to a folder the user typed (FileExistsError if it is not empty),
    which must lie inside `roots` when they are given (`nufilt.roots`)."""
    from ..export import save_merged
    from ..roots import check_allowed

    if not folder.strip():
        raise ValueError("type a folder to save the merged model to")
    target = Path(os.path.expanduser(folder.strip()))
    if roots is not None:
        target = check_allowed(folder, roots, "folder to save to")
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise FileExistsError(f"{target} exists and is not empty; type a new or empty folder")
    return save_merged(backbone, state, target, card_info)
