"""A state dict written tensor by tensor into a safetensors file, for merges larger than memory.

`SpillState(path, layout)` pre-computes the safetensors header from the known shapes and dtypes,
so each tensor can be written at its final offset as soon as it is computed (in any order, and
again if a method overwrites it) and read back without loading the rest. The finished file is an
ordinary `.safetensors` file.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator, Mapping, MutableMapping
from pathlib import Path

import torch

_DTYPES: dict[torch.dtype, str] = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}

Layout = Mapping[str, tuple[tuple[int, ...], torch.dtype]]


def layout_of(state: Mapping[str, torch.Tensor], dtype: torch.dtype | None = None) -> dict:
    """key -> (shape, dtype) of a state dict; `dtype` overrides floating tensors' dtype."""
    layout = {}
    for key in state:
        tensor = state[key]
        kind = dtype if dtype is not None and tensor.is_floating_point() else tensor.dtype
        layout[key] = (tuple(tensor.shape), kind)
    return layout


class SpillState(MutableMapping[str, torch.Tensor]):
    """A write-through, read-back mapping backed by one safetensors file with a fixed layout."""

    def __init__(self, path: str | os.PathLike, layout: Layout) -> None:
        self.path = Path(path)
        self._layout = {k: (tuple(shape), dtype) for k, (shape, dtype) in layout.items()}
        header: dict[str, object] = {}
        self._offsets: dict[str, tuple[int, int]] = {}
        position = 0
        for key, (shape, dtype) in self._layout.items():
            if dtype not in _DTYPES:
                raise TypeError(f"cannot store {key!r} of dtype {dtype} in safetensors")
            size = _numel(shape) * torch.empty(0, dtype=dtype).element_size()
            header[key] = {"dtype": _DTYPES[dtype], "shape": list(shape), "data_offsets": [position, position + size]}
            self._offsets[key] = (position, size)
            position += size
        encoded = json.dumps(header, separators=(",", ":")).encode()
        encoded += b" " * (-len(encoded) % 8)  # the data section starts 8-byte aligned
        self._data_start = 8 + len(encoded)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        os.pwrite(self._fd, struct.pack("<Q", len(encoded)) + encoded, 0)
        os.ftruncate(self._fd, self._data_start + position)
        self._written: set[str] = set()

    def __setitem__(self, key: str, value: torch.Tensor) -> None:
        if key not in self._layout:
            raise KeyError(f"{key!r} is not part of this state's layout")
        shape, dtype = self._layout[key]
        if tuple(value.shape) != shape:
            raise ValueError(f"shape mismatch at {key!r}: layout {shape} vs {tuple(value.shape)}")
        data = value.detach().to(device="cpu", dtype=dtype).contiguous().reshape(-1)
        start, size = self._offsets[key]
        if size:
            os.pwrite(self._fd, data.view(torch.uint8).numpy().tobytes(), self._data_start + start)
        self._written.add(key)

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self._written:
            raise KeyError(key)
        shape, dtype = self._layout[key]
        start, size = self._offsets[key]
        buffer = bytearray(os.pread(self._fd, size, self._data_start + start)) if size else bytearray()
        return torch.frombuffer(buffer, dtype=dtype).reshape(shape) if size else torch.empty(shape, dtype=dtype)

    def __delitem__(self, key: str) -> None:
        """Forget a tensor (its bytes stay in the file until overwritten)."""
        self._written.remove(key)

    def __contains__(self, key: object) -> bool:
        return key in self._written

    def __iter__(self) -> Iterator[str]:
        return (key for key in self._layout if key in self._written)

    def __len__(self) -> int:
        return len(self._written)

    def complete(self) -> bool:
        return len(self._written) == len(self._layout)

    def close(self) -> None:
        """Flush to disk; the state stays readable (reads reopen the file)."""
        if self._fd >= 0:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = os.open(self.path, os.O_RDONLY)

    def release(self, delete: bool = True) -> None:
        """Close the file descriptor and, by default, delete the file."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if delete:
            self.path.unlink(missing_ok=True)

    def move_to(self, path: str | os.PathLike) -> None:
        """Atomically rename the (closed) file; reads continue from the new path."""
        os.replace(self.path, path)
        self.path = Path(path)

    def __del__(self) -> None:
        if getattr(self, "_fd", -1) >= 0:
            os.close(self._fd)
            self._fd = -1

    def __repr__(self) -> str:
        return f"SpillState({self.path.name}, {len(self)}/{len(self._layout)} tensors)"


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count
