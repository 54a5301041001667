"""Work that takes minutes, done in a daemon thread so the page stays live: the Ranks page's sweep
points and the Compare page's runs over the paper's orders.

The page starts a `WorkJob` with its items, polls it (progress, Stop) and, once it has ended,
takes the results it kept. An item keeps each result as soon as it has it (`keep(key, result)`),
so Stop (after the item in progress) or a failing item loses nothing computed before.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

KeepFn = Callable[[Any, Any], None]  # (key, result)
ItemProgress = Callable[[str, float], None]  # (message, fraction of the item)
Item = tuple[str, Callable[[KeepFn, ItemProgress], None]]  # (label, work(keep, progress))


class WorkJob:
    """Items done one after another in a background thread; see the module docstring."""

    def __init__(self) -> None:
        self.message = ""
        self.fraction = 0.0
        self.error: str | None = None  # why the last start ended early
        self.stopped = False  # the last start ended by Stop
        self.seconds: list[float] = []  # per finished item of the last start
        self._results: dict[Any, Any] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, items: Sequence[Item]) -> str | None:
        """Do `items` in the background; None when started, else why not (work is running)."""
        with self._lock:
            if self.running:
                return "The work started earlier is still running: press Stop or wait for it."
            if not items:
                return "Nothing to do."
            self.error, self.stopped, self.seconds = None, False, []
            self.message, self.fraction = f"{items[0][0]}: starting", 0.0
            self._stop.clear()
            self._thread = threading.Thread(target=self._work, args=(list(items),), name="nufilt-work", daemon=True)
            self._thread.start()
            return None

    def stop(self) -> None:
        """End the work after the item in progress."""
        if self.running:
            self._stop.set()
            self.message = f"stopping after {self.message.split(':')[0]}"

    def wait(self, timeout: float | None = None) -> bool:
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return not self.running

    def take(self) -> dict[Any, Any]:
        """The results kept since the last call (key -> result), removed from the job."""
        with self._lock:
            results, self._results = self._results, {}
            return results

    def _keep(self, key: Any, result: Any) -> None:
        with self._lock:
            self._results[key] = result

    def _work(self, items: list[Item]) -> None:
        total = len(items)
        for i, (label, work) in enumerate(items):
            if self._stop.is_set():
                self.stopped = True
                break
            self.message, self.fraction = f"{label} ({i + 1}/{total})", i / total

            def progress(message: str, fraction: float, i: int = i) -> None:
                self.message, self.fraction = message, (i + min(max(fraction, 0.0), 1.0)) / total

            start = time.perf_counter()
            try:
                work(self._keep, progress)
            except Exception as error:  # shown by the page; what was kept stays
                self.error = f"{label}: {error}"
                break
            self.seconds.append(time.perf_counter() - start)
        done = len(self.seconds)
        self.message = f"{done} of {total} done" + (" (stopped)" if self.stopped else "")
        self.fraction = 1.0
