"""A `MultiRun` stepped in a background thread: one step or to the end, stoppable, saved per step.

The page asks a `RunJob` for steps and only draws what the run holds, so a run goes on while the
visitor switches pages or reloads (the page re-attaches to the job of its configuration), and a
page can redraw every chart after every step. A request names the step the page showed when the
button was drawn: a second click on a stale page (a double click, another browser on the same
run) is refused with a reason instead of merging a step nobody asked for.

A watched run is paced so that every step reaches the screen: while a page follows the job
(`watching`), the job waits after each step until a page has drawn it (`drawn`) and has been on
screen for `pace` seconds (the browser paints its charts after the server has sent them), at most
`view_timeout` seconds; an unwatched run (no page open) never waits.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .session import MultiRun

SaveFn = Callable[["MultiRun", int], None]  # (run, target step) after every committed step


class RunJob:
    """Steps `run` up to a target in a daemon thread; `save(run, target)` after each step and
    `forget()` after a reset (the saved file goes with it)."""

    pace = 0.8  # s a drawn step stays on screen before a watched run merges the next one
    view_timeout = 6.0  # s the job waits at most for a watching page to draw a step

    def __init__(self, run: MultiRun, save: SaveFn | None = None, forget: Callable[[], None] | None = None) -> None:
        self.run = run
        self.save = save
        self.forget = forget
        self.target = run.steps_done
        self.message = ""
        self.fraction = 0.0
        self.error: str | None = None  # why the last request ended early
        self.stopped_at: int | None = None  # the step where Stop took effect
        self.interrupted_at: int | None = None  # a restored run whose background work had not finished
        self._stop = threading.Event()
        self._guard = threading.Lock()
        self._thread: threading.Thread | None = None
        self._view = threading.Condition()
        self._drawn, self._drawn_at = -1, 0.0  # the latest step a following page drew, and when
        self._watched = False  # a page followed the step in progress
        self.waited = 0.0  # s the last request waited for pages to draw its steps

    def watching(self) -> None:
        """A page follows this job (it will draw the step in progress when it ends)."""
        with self._view:
            self._watched = True

    def drawn(self, step: int) -> None:
        """A page has drawn the run at `step` (called after the page, before it follows the job,
        so it watches the next step too)."""
        with self._view:
            self._watched = self.running
            if step > self._drawn:
                self._drawn, self._drawn_at = step, time.perf_counter()
            self._view.notify_all()

    def _wait_for_view(self, step: int) -> None:
        """After committing `step` of a watched run: until a page drew it and `pace` s passed."""
        start = time.perf_counter()
        with self._view:
            watched, self._watched = self._watched, False
            if not watched:
                return
            self._view.wait_for(lambda: self._drawn >= step or self._stop.is_set(), timeout=self.view_timeout)
            shown_for = time.perf_counter() - self._drawn_at if self._drawn >= step else None
        if shown_for is not None and shown_for < self.pace:
            self._stop.wait(self.pace - shown_for)
        self.waited += time.perf_counter() - start

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def steps_done(self) -> int:
        return self.run.steps_done

    def request(self, shown: int, steps: int | None = 1) -> str | None:
        """Merge `steps` more tasks (None: to the end) in the background; `shown` is the step the
        page showed. Returns None when it started, else the reason nothing was started."""
        total = len(self.run.order)
        with self._guard:
            done = self.run.steps_done
            if self.running:
                return (f"Step {done + 1} is still running (this run is heading for step {self.target}); "
                        "the click was ignored. Press Stop to end it early.")
            if done != shown:
                return (f"The page showed step {shown} but the run is at step {done} (a second click, or "
                        "another browser on the same run, moved it); nothing was merged. Look again and "
                        "click once more if you want another step.")
            if done >= total:
                return f"All {total} tasks are merged; Reset starts again."
            self.target = total if steps is None else min(done + max(int(steps), 1), total)
            self.error = self.stopped_at = self.interrupted_at = None
            self.message, self.fraction = f"step {done + 1}/{total}: starting", 0.0
            with self._view:
                self._watched = False  # (a page that drew an earlier request's last step)
            self._stop.clear()
            self._thread = threading.Thread(target=self._work, name="nufilt-run", daemon=True)
            self._thread.start()
            return None

    def stop(self) -> None:
        """End a running request after the step in progress (a step is atomic)."""
        if self.running:
            self._stop.set()
            self.message = f"stopping after step {self.run.steps_done + 1}"

    def reset(self) -> str | None:
        """Back to step 0 (None), or the reason it was refused (a step is running)."""
        with self._guard:
            if self.running:
                return "A step is running: press Stop, wait for it to end, then Reset."
            self.run.reset()
            with self._view:
                self._drawn = -1
            if self.forget is not None:
                self.forget()
            self.target, self.error, self.stopped_at, self.interrupted_at = 0, None, None, None
            self.message, self.fraction = "", 0.0
            return None

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the background work to end; True when it has."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return not self.running

    def _work(self) -> None:
        total = len(self.run.order)
        start_step, start = self.run.steps_done, time.perf_counter()
        self.waited = 0.0
        while self.run.steps_done < self.target:
            if self._stop.is_set():
                self.stopped_at = self.run.steps_done
                break
            done = self.run.steps_done

            def progress(message: str, fraction: float, done: int = done) -> None:
                span = max(self.target - start_step, 1)
                self.fraction = min(max((done - start_step + fraction) / span, 0.0), 1.0)
                self.message = message

            try:
                self.run.step(progress)
            except Exception as error:  # shown by the page; the run keeps its last committed step
                self.error = f"{type(error).__name__}: {error}"
                break
            if self.save is not None:
                try:
                    self.save(self.run, self.target)
                except OSError as error:  # the run goes on in memory; a reload would lose this step
                    self.error = f"could not save step {self.run.steps_done}: {error}"
            if self.run.steps_done < self.target:
                self._wait_for_view(self.run.steps_done)
        seconds = time.perf_counter() - start
        count = self.run.steps_done - start_step
        steps = f"{count} step{'s' if count != 1 else ''}"
        paced = f", {self.waited:.1f} s of it showing each step" if self.waited >= 0.05 else ""
        self.message = f"{steps} in {seconds:.1f} s{paced} (step {self.run.steps_done}/{total})"
        self.fraction = 1.0
