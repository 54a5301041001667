"""Content-addressed cache folders with atomic writes and integrity checks.

An *entry* is a folder whose name carries a hash of everything that produced it. It is built in
a temporary sibling folder; `integrity.json` (size and sha256 of every file) is written last and
the folder is then renamed into place, so a reader sees either nothing or a complete entry. A
folder without a valid `integrity.json`, or whose files do not match it, is reported (a
`CacheWarning`), deleted and rebuilt; it is never used.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch

INTEGRITY_FILE = "integrity.json"
_ROOT_ENV = "NUFILT_CACHE_DIR"


class CacheWarning(UserWarning):
    """A cache entry was corrupt or incomplete and is being rebuilt."""


def default_cache_dir() -> Path:
    """`$NUFILT_CACHE_DIR` if set, else the repository's `cache/` folder."""
    configured = os.environ.get(_ROOT_ENV)
    return Path(configured) if configured else Path(__file__).resolve().parents[1] / "cache"


def config_hash(config: object, length: int = 16) -> str:
    """Hex digest of a JSON-able mapping or dataclass; key order does not matter."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=_json_default)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def _json_default(value: object) -> object:
    if isinstance(value, (tuple, set, frozenset)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot hash a value of type {type(value).__name__}: {value!r}")


# ---------------------------------------------------------------- atomic single-file writes


def current_umask() -> int:
    """The process umask, read without changing it where the system tells (Linux /proc)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and put back at once
    os.umask(mask)
    return mask


def public_mode(path: str | Path) -> None:
    """Give a file or folder made by mkstemp/mkdtemp (0600/0700) the mode a plain open/mkdir
    would have given it (0666/0777 less the umask), as `save_pretrained` does."""
    base = 0o777 if Path(path).is_dir() else 0o666
    os.chmod(path, base & ~current_umask())


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to a temporary file beside `path`, fsync, then `os.replace` it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        public_mode(temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, data: object) -> None:
    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=False, default=_json_default) + "\n")


def atomic_save_tensors(
    path: str | Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> None:
    """Save tensors as safetensors, atomically (contiguous CPU copies are written)."""
    from safetensors.torch import save

    payload = {key: value.detach().cpu().contiguous() for key, value in tensors.items()}
    atomic_write_bytes(path, save(payload, metadata=dict(metadata) if metadata else None))


# ---------------------------------------------------------------- integrity of an entry


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(folder: Path) -> Iterator[Path]:
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != INTEGRITY_FILE:
            yield path


def write_integrity(folder: str | Path) -> None:
    """Record size and sha256 of every file under `folder`; call it after the last file is done."""
    folder = Path(folder)
    files = {
        path.relative_to(folder).as_posix(): {"size": path.stat().st_size, "sha256": file_sha256(path)}
        for path in _files(folder)
    }
    atomic_write_json(folder / INTEGRITY_FILE, {"files": files})


def check_integrity(folder: str | Path, deep: bool = True) -> str | None:
    """None if `folder` is a complete entry, else why not (missing, truncated, changed files).

    `deep=False` compares sizes only (fast); `deep=True` also compares sha256 digests.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return "missing"
    try:
        recorded = json.loads((folder / INTEGRITY_FILE).read_text())["files"]
    except FileNotFoundError:
        return f"no {INTEGRITY_FILE} (an interrupted build)"
    except (ValueError, KeyError, TypeError) as error:
        return f"unreadable {INTEGRITY_FILE}: {error}"
    present = {path.relative_to(folder).as_posix() for path in _files(folder)}
    if missing := sorted(set(recorded) - present):
        return f"missing files: {', '.join(missing)}"
    if extra := sorted(present - set(recorded)):
        return f"unexpected files: {', '.join(extra)}"
    for name, facts in recorded.items():
        path = folder / name
        if path.stat().st_size != facts["size"]:
            return f"{name}: size {path.stat().st_size} != recorded {facts['size']}"
        if deep and file_sha256(path) != facts["sha256"]:
            return f"{name}: sha256 differs from the recorded one"
    return None


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """An exclusive inter-process lock for building `folder` (a `.lock` file beside it)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _remove(folder: Path) -> None:
    """Move `folder` aside (atomic) and delete it, so no reader sees a half-deleted entry."""
    if not folder.exists():
        return
    trash = folder.parent / f".{folder.name}.trash-{os.getpid()}"
    shutil.rmtree(trash, ignore_errors=True)
    os.replace(folder, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _remove_leftovers(folder: Path) -> list[Path]:
    """Delete what killed builds of `folder` left beside it (`.name.XXXXXXXX.tmp` build folders,
    `.name.trash-PID` folders); only called with the entry's lock held, so none is in use."""
    leftovers = [
        path for pattern in (f".{folder.name}.????????.tmp", f".{folder.name}.trash-*")
        for path in folder.parent.glob(pattern) if path.is_dir()
    ]
    for path in leftovers:
        shutil.rmtree(path, ignore_errors=True)
    return leftovers


def ensure_entry(folder: str | Path, build: Callable[[Path], None], deep: bool = True) -> tuple[Path, bool]:
    """Return (`folder`, built?) after making sure it is a complete, verified entry.

    A valid entry is reused. Otherwise `build(temporary_folder)` writes the files, the
    integrity record is added and the folder is renamed into place. A corrupt or partial entry
    is reported with a `CacheWarning` and replaced; half-written build folders of a killed
    process are deleted before the rebuild.
    """
    folder = Path(folder)
    if check_integrity(folder, deep=deep) is None:
        return folder, False
    with _locked(folder):
        problem = check_integrity(folder, deep=deep)  # another process may have built it
        if problem is None:
            return folder, False
        if problem != "missing":
            warnings.warn(f"cache entry {folder} is corrupt ({problem}); rebuilding it", CacheWarning, stacklevel=2)
            _remove(folder)
        _remove_leftovers(folder)
        temporary = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
        try:
            build(temporary)
            write_integrity(temporary)
            public_mode(temporary)
            os.replace(temporary, folder)
        except BaseException:
            shutil.rmtree(temporary, ignore_errors=True)
            raise
    return folder, True
