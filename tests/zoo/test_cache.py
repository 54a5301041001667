"""Generic cache entries: atomic build, reuse, corrupt/partial detection and rebuild."""

import json
import warnings

import pytest
import torch

from nufilt.cache import (
    INTEGRITY_FILE,
    CacheWarning,
    atomic_save_tensors,
    atomic_write_json,
    check_integrity,
    config_hash,
    ensure_entry,
)


class CountingBuilder:
    def __init__(self):
        self.calls = 0

    def __call__(self, folder):
        self.calls += 1
        atomic_write_json(folder / "info.json", {"calls": self.calls})
        atomic_save_tensors(folder / "sub" / "weights.safetensors", {"w": torch.arange(6.0)})


def test_config_hash_ignores_key_order_and_sees_values():
    assert config_hash({"a": 1, "b": (2, 3)}) == config_hash({"b": [2, 3], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})


def test_entry_is_built_once_then_reused(tmp_path):
    build = CountingBuilder()
    folder, built = ensure_entry(tmp_path / "entry", build)
    again, built_again = ensure_entry(tmp_path / "entry", build)
    assert (built, built_again, build.calls) == (True, False, 1)
    assert again == folder and check_integrity(folder) is None
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


@pytest.mark.parametrize(
    "damage",
    [
        lambda f: (f / "sub" / "weights.safetensors").write_bytes(b"garbage"),  # truncated
        lambda f: (f / "info.json").write_text('{"calls": 99}  '),  # changed content
        lambda f: (f / INTEGRITY_FILE).unlink(),  # interrupted build: no integrity record
        lambda f: (f / "sub" / "weights.safetensors").unlink(),  # missing file
        lambda f: (f / "stray.bin").write_bytes(b"x"),  # unexpected file
    ],
    ids=["truncated", "changed", "partial", "missing", "extra"],
)
def test_corrupt_entry_is_reported_and_rebuilt(tmp_path, damage):
    build = CountingBuilder()
    folder, _ = ensure_entry(tmp_path / "entry", build)
    damage(folder)
    assert check_integrity(folder) is not None
    with pytest.warns(CacheWarning, match="corrupt"):
        ensure_entry(folder, build)
    assert build.calls == 2 and check_integrity(folder) is None
    assert json.loads((folder / "info.json").read_text()) == {"calls": 2}


def test_same_size_change_is_caught_only_by_deep_check(tmp_path):
    folder, _ = ensure_entry(tmp_path / "entry", CountingBuilder())
    path = folder / "info.json"
    path.write_text(path.read_text().replace("1", "7"))
    assert check_integrity(folder, deep=False) is None
    assert "sha256" in check_integrity(folder, deep=True)


def test_failed_build_leaves_nothing_behind(tmp_path):
    def broken(folder):
        (folder / "half.bin").write_bytes(b"x")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        ensure_entry(tmp_path / "entry", broken)
    assert not (tmp_path / "entry").exists()
    assert [p for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a missing entry is built silently
        ensure_entry(tmp_path / "entry", CountingBuilder())


def test_a_killed_build_leaves_no_leftovers_after_the_next_build(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from nufilt.cache import ensure_entry\n"
        "def build(folder):\n"
        "    (folder / 'half.bin').write_bytes(b'x' * 1000)\n"
        "    Path(sys.argv[2]).touch()\n"
        "    time.sleep(60)\n"
        "ensure_entry(Path(sys.argv[1]) / 'entry', build)\n"
    )
    started = tmp_path / "started"
    cache = tmp_path / "cache"
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    process = subprocess.Popen([sys.executable, "-c", script, str(cache), str(started)], cwd=root)
    try:
        deadline = time.monotonic() + 60
        while not started.exists() and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.05)
        assert started.exists(), "the builder process did not start"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    leftovers = [p for p in cache.iterdir() if p.name.endswith(".tmp")]
    assert len(leftovers) == 1 and (leftovers[0] / "half.bin").exists()  # what SIGKILL leaves
    folder, built = ensure_entry(cache / "entry", CountingBuilder())
    assert built and check_integrity(folder) is None
    assert [p.name for p in cache.iterdir() if p.name.endswith(".tmp")] == []
