"""The thread default and the process-wide thread setting under concurrent changes."""

import threading
import time

import pytest
import torch

from nufilt.threads import default_threads, torch_threads


def test_default_is_one_thread_unless_the_environment_says(monkeypatch):
    monkeypatch.delenv("NUFILT_THREADS", raising=False)
    assert default_threads() == 1
    monkeypatch.setenv("NUFILT_THREADS", "3")
    assert default_threads() == 3
    monkeypatch.setenv("NUFILT_THREADS", "two")
    with pytest.raises(ValueError, match="NUFILT_THREADS must be a positive integer"):
        default_threads()


def _seen_by_a_new_thread() -> int:
    seen = []
    thread = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    return seen[0]


def test_overlapping_blocks_in_several_threads_restore_the_setting():
    """torch's count is inherited by threads created later (Streamlit starts one per rerun).
    Unserialised save/restore pairs interleave (A saves 1 and sets 2, B saves 2, A restores 1,
    B restores 2) and leave a changed count behind; measured: 2 of 5 rounds with a plain
    save/restore. The shared block count restores the original one every time."""
    before = torch.get_num_threads()
    for _ in range(10):
        start = threading.Barrier(8)

        def worker(count: int, start: threading.Barrier = start) -> None:
            start.wait()
            for _ in range(50):
                with torch_threads(count):
                    time.sleep(0.0002)  # let the other threads interleave

        threads = [threading.Thread(target=worker, args=(before + 1 + i % 3,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert _seen_by_a_new_thread() == before
    assert torch.get_num_threads() == before


def test_a_block_sets_and_restores():
    before = torch.get_num_threads()
    with torch_threads(before + 1):
        assert torch.get_num_threads() == before + 1
    assert torch.get_num_threads() == before
