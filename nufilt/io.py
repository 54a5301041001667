"""Checkpoint files: lazy memory-mapped safetensors state dicts, safe loading, atomic saving.

`open_checkpoint(path)` reads a `.safetensors` file (or a sharded `*.safetensors.index.json`, or a
`save_pretrained` folder) as a `LazyStateDict`: a read-only `Mapping[str, Tensor]` that loads a
tensor only when it is looked up, so a merge holds the pre-trained and task weights on disk and
only the merged state in memory. Pickle checkpoints (`.bin`, `.pt`, `.pth`) go through
`torch.load(weights_only=True)`; arbitrary pickled objects are refused, never unpickled.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .cache import public_mode

# file names a `save_pretrained` folder may hold, best first
_FOLDER_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "open_clip_model.safetensors",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "open_clip_pytorch_model.bin",
)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


class UnsafeCheckpointError(ValueError):
    """A checkpoint that would need arbitrary unpickling (a whole pickled module, for example)."""


class LazyStateDict(Mapping[str, torch.Tensor]):
    """Read-only `key -> tensor` mapping that reads each tensor from disk when it is looked up.

    `index[key] = (reader, name)`: `reader(name)` returns the tensor. Safetensors readers open a
    fresh memory map per lookup, so a caller that modifies a returned tensor in place never
    changes what the next lookup returns.
    """

    def __init__(self, index: Mapping[str, tuple[Callable[[str], torch.Tensor], str]],
                 shapes: Mapping[str, tuple[int, ...]] | None = None):
        self._index = dict(index)
        self._shapes = {key: tuple(shape) for key, shape in (shapes or {}).items() if key in self._index}

    def __getitem__(self, key: str) -> torch.Tensor:
        reader, name = self._index[key]
        return reader(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: object) -> bool:
        return key in self._index

    def __repr__(self) -> str:
        return f"LazyStateDict({len(self)} tensors)"

    def known_shape(self, key: str) -> tuple[int, ...] | None:
        """The shape of `key` if known without reading it (a safetensors header), else None."""
        return self._shapes.get(key)

    def shape(self, key: str) -> tuple[int, ...]:
        """The shape of `key`, read from the tensor only when no header recorded it."""
        known = self.known_shape(key)
        return known if known is not None else tuple(self[key].shape)

    def source_name(self, key: str) -> str:
        """The name `key` has inside its file."""
        return self._index[key][1]

    def renamed(self, names: Mapping[str, str]) -> LazyStateDict:
        """A view with keys `new -> self[old]` for each `names[new] = old` (a subset, renamed)."""
        missing = [old for old in names.values() if old not in self._index]
        if missing:
            raise KeyError(f"not in the checkpoint: {', '.join(missing[:5])}")
        return LazyStateDict({new: self._index[old] for new, old in names.items()},
                             {new: self._shapes[old] for new, old in names.items() if old in self._shapes})

    def materialize(self) -> dict[str, torch.Tensor]:
        """Plain dict of independent in-memory tensors."""
        return {key: self[key].clone() for key in self}


def read_json(path: str | os.PathLike, what: str = "JSON file") -> object:
    """Parse a JSON file; ValueError naming the file (and the line) when it is not valid JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a valid {what} ({error})") from None


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """One JSON object per non-empty line; ValueError naming the file and line otherwise."""
    path = Path(path)
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}, line {number}: not valid JSON ({error.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}, line {number}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows


def pick_keys(checkpoint: LazyStateDict, wanted: Iterable[str], prefixes: Iterable[str] = ("",)) -> LazyStateDict:
    """The `wanted` keys of `checkpoint`, under the first of `prefixes` that holds all of them.

    Checkpoints name the same weight differently (`vision_model.` in a full CLIP file, no prefix
    in a CLIPVisionModel saved by transformers 5, `model.visual.` in task-vector files); one
    prefix is used for the whole file so that a text tower's keys are never picked by accident.
    """
    wanted, prefixes = list(wanted), list(prefixes)
    best: list[str] = wanted
    for prefix in prefixes:
        missing = [key for key in wanted if prefix + key not in checkpoint]
        if not missing:
            return checkpoint.renamed({key: prefix + key for key in wanted})
        if len(missing) < len(best):
            best = missing
    some = ", ".join(best[:4]) + (f" and {len(best) - 4} more" if len(best) > 4 else "")
    raise KeyError(f"checkpoint lacks {len(best)} of {len(wanted)} expected weights ({some})")


def _safetensors_reader(path: Path) -> Callable[[str], torch.Tensor]:
    def read(name: str) -> torch.Tensor:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            return handle.get_tensor(name)

    return read


def safetensors_keys(path: str | os.PathLike) -> list[str]:
    """The tensor names of a safetensors file; ValueError naming the file if it is not one."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            return list(handle.keys())
    except OSError:
        raise
    except Exception as error:  # safetensors' own error type for a bad header or a cut file
        raise ValueError(f"{path} is not a readable safetensors file ({error})") from None


def _header_shapes(path: Path, names: Iterable[str]) -> dict[str, tuple[int, ...]]:
    """Tensor shapes from a safetensors header, without reading the tensors."""
    with safe_open(str(path), framework="pt", device="cpu") as handle:
        return {name: tuple(handle.get_slice(name).get_shape()) for name in names}


def _lazy_safetensors(files: Iterable[Path]) -> LazyStateDict:
    index: dict[str, tuple[Callable[[str], torch.Tensor], str]] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    for path in files:
        reader = _safetensors_reader(path)
        names = safetensors_keys(path)
        for name in names:
            index[name] = (reader, name)
        shapes.update(_header_shapes(path, names))
    return LazyStateDict(index, shapes)


def load_pickle_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """`torch.load(weights_only=True)` (memory-mapped where the format allows) -> flat state dict.

    Unwraps `{"state_dict": ...}` and `{"model": ...}` wrappers; refuses pickled Python objects.
    """
    path = Path(path)
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as error:  # legacy (non-zip) format cannot be memory-mapped
            if "mmap" not in str(error):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise UnsafeCheckpointError(
            f"{path} holds pickled Python objects (e.g. a whole nn.Module), which nufilt will not "
            "unpickle; if you trust the file, convert it once to a plain state dict: "
            'python -c "import torch, safetensors.torch as st; '
            f"m = torch.load('{path}', weights_only=False); "
            "st.save_file({k: v.contiguous() for k, v in m.state_dict().items()}, 'out.safetensors')\""
        ) from error
    except Exception as error:  # a cut, corrupt or non-PyTorch file (each fails in its own way)
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"{path} is not a readable PyTorch checkpoint ({first_line})") from None
    for wrapper in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict):
        raise UnsafeCheckpointError(f"{path} does not hold a state dict (got {type(obj).__name__})")
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise ValueError(f"{path} holds no tensors")
    return state


def _in_memory(state: dict[str, torch.Tensor]) -> LazyStateDict:
    reader = state.__getitem__
    return LazyStateDict({name: (reader, name) for name in state}, {name: tuple(t.shape) for name, t in state.items()})


def _index_files(index_path: Path) -> list[Path]:
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
        names = list(dict.fromkeys(weight_map.values()))
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ValueError(f"{index_path} is not a shard index (JSON with a 'weight_map' of tensor -> file)") from None
    files = [index_path.parent / str(name) for name in names]
    missing = [path.name for path in files if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"{index_path} names shard(s) that are not there: {', '.join(missing[:3])}")
    return files


def find_checkpoint_file(folder: str | os.PathLike) -> Path:
    """The weights file of a `save_pretrained` folder (safetensors preferred)."""
    folder = Path(folder)
    for name in _FOLDER_FILES:
        if (folder / name).is_file():
            return folder / name
    found = sorted(folder.glob("*.safetensors")) + sorted(
        p for suffix in PICKLE_SUFFIXES for p in folder.glob(f"*{suffix}")
    )
    if len(found) == 1:
        return found[0]
    listing = ", ".join(p.name for p in sorted(folder.iterdir())[:10]) or "nothing"
    raise FileNotFoundError(f"no single weights file in {folder} (it holds: {listing})")


def open_checkpoint(path: str | os.PathLike) -> LazyStateDict:
    """A lazy state dict over a weights file, a sharded index, or a `save_pretrained` folder."""
    path = Path(path)
    if path.is_dir():
        path = find_checkpoint_file(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    name = path.name
    if name.endswith(".safetensors"):
        return _lazy_safetensors([path])
    if name.endswith(".safetensors.index.json"):
        return _lazy_safetensors(_index_files(path))
    if name.endswith(".bin.index.json"):
        state: dict[str, torch.Tensor] = {}
        for shard in _index_files(path):
            state.update(load_pickle_checkpoint(shard))
        return _in_memory(state)
    if name.endswith(PICKLE_SUFFIXES):
        return _in_memory(load_pickle_checkpoint(path))
    raise ValueError(f"unknown checkpoint format: {path} (expected .safetensors, .bin, .pt, .pth)")


def _independent_tensors(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors, cloning any that share storage (safetensors refuses shared memory)."""
    seen: set[tuple[int, int]] = set()
    out = {}
    for key, value in state.items():
        tensor = value.detach().to("cpu").contiguous()
        storage = (tensor.untyped_storage().data_ptr(), tensor.untyped_storage().nbytes())
        if storage in seen and tensor.numel():
            tensor = tensor.clone()
        seen.add(storage)
        out[key] = tensor
    return out


def save_safetensors(
    state: Mapping[str, torch.Tensor],
    path: str | os.PathLike,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write `state` to `path` atomically (temporary file in the same folder, then rename)."""
    bad = [key for key, value in state.items() if not isinstance(value, torch.Tensor)]
    if bad:
        raise TypeError(f"only tensors can be saved; not tensors: {', '.join(bad[:5])}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": "pt", **(metadata or {})}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(_independent_tensors(state), tmp, metadata=meta)
        public_mode(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
