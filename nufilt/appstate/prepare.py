"""Building or loading a backbone in the background, with weighted progress and a time estimate."""

from __future__ import annotations

import inspect
import threading
import time

from ..backbones.base import Backbone
from .backbones import BUILD_LOCK, zoo_ready


class PrepareJob:
    """`backbone.prepare()` (zoo build, downloads, checks) in a background thread.

    The page polls `state`, `message` and `fraction`, so it never freezes, and navigating away
    does not interrupt the build. `error` holds the reason when it failed.
    """

    def __init__(self, backbone: Backbone) -> None:
        self.backbone = backbone
        self.state = "ready" if zoo_ready(backbone) else "idle"  # idle | running | ready | failed
        self.message = "models on disk" if self.state == "ready" else "not started"
        self.fraction = 1.0 if self.state == "ready" else 0.0
        self.error: str | None = None
        self.seconds = 0.0
        self._thread: threading.Thread | None = None
        self._started: float | None = None
        self._guard = threading.Lock()

    def start(self) -> None:
        """Start the build, or start it again after a failure; a no-op while it runs or when it
        is done. Safe to call from several sessions at once: one thread is started."""
        with self._guard:
            if self.state in ("running", "ready"):
                return
            self.state, self.error, self.fraction, self.message = "running", None, 0.0, "waiting to start"
            self._thread = threading.Thread(target=self._run, name="nufilt-prepare", daemon=True)
            self._thread.start()

    def wait(self, timeout: float | None = None) -> str:
        if self._thread is not None:
            self._thread.join(timeout)
        return self.state

    def _progress(self, message: str, fraction: float) -> None:
        self.message, self.fraction = message, min(max(float(fraction), 0.0), 1.0)

    def eta_seconds(self) -> float | None:
        """Seconds left at the rate so far (the build weights its stages by measured cost); None
        before 3% is done or when not running."""
        if self.state != "running" or self._started is None or not 0.03 <= self.fraction < 1.0:
            return None
        elapsed = time.perf_counter() - self._started
        return elapsed * (1.0 - self.fraction) / self.fraction

    def _finish(self, state: str, error: str | None = None) -> None:
        with self._guard:
            self.state, self.error = state, error
            if state == "ready":
                self.message, self.fraction = "ready", 1.0

    def _run(self) -> None:
        start = self._started = time.perf_counter()
        try:
            with BUILD_LOCK:
                prepare = getattr(self.backbone, "prepare", None)
                if prepare is None:
                    self.backbone.pretrained_state()
                elif "progress" in inspect.signature(prepare).parameters:
                    prepare(progress=self._progress)
                else:
                    self._progress("loading and checking every model", 0.05)
                    prepare()
            self.seconds = time.perf_counter() - start
            self._finish("ready")
        except Exception as error:  # shown to the user as st.error; the app keeps working
            self.seconds = time.perf_counter() - start
            self._finish("failed", f"{type(error).__name__}: {error}")
