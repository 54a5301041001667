"""Helpers for the AppTest tests: chart JSON and page health."""

from __future__ import annotations

import json
from pathlib import Path

APP = Path(__file__).resolve().parents[2] / "app.py"


def chart_titles(at) -> list[str]:
    """Titles of the Plotly charts on the page (from the figure JSON Streamlit sends)."""
    return [json.loads(chart.proto.spec)["layout"]["title"]["text"] for chart in at.get("plotly_chart")]


def chart(at, title_start: str) -> dict:
    """The figure JSON of the chart whose title starts with `title_start`."""
    for element in at.get("plotly_chart"):
        spec = json.loads(element.proto.spec)
        if spec["layout"]["title"]["text"].startswith(title_start):
            return spec
    raise AssertionError(f"no chart titled {title_start!r}; charts: {chart_titles(at)}")


def assert_clean(at) -> None:
    """No uncaught exception and no error message on the page."""
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def values(data) -> list:
    """A figure array as a flat list: Plotly's JSON holds NumPy arrays as {"dtype", "bdata", "shape"}."""
    if isinstance(data, dict) and "bdata" in data:
        import base64

        import numpy as np

        return np.frombuffer(base64.b64decode(data["bdata"]), dtype=data["dtype"]).ravel().tolist()
    if isinstance(data, list):
        return [cell for item in data for cell in (values(item) if isinstance(item, (list, dict)) else [item])]
    return [data]


def forget_session_resources() -> None:
    """Drop session-scoped cached resources (the step-by-step run) left by the previous test.

    AppTest runs every test under one fixed session id ("test session id"), so unlike browser
    sessions they would share one run; a real session's resources go when it disconnects.
    """
    from streamlit.runtime.caching import cache_resource_api

    cache_resource_api._resource_caches.clear_session("test session id")


def settle(at, timeout: float = 120.0):
    """Wait for the background jobs of the app (merge runs, `ui.job_for`; the Ranks and Compare
    pages' work, `ui.work_job`), then run the script again: a click only starts the work; the page
    shows its result on the next run."""
    import time

    from nufilt.appstate.workjob import WorkJob
    from pages import ui

    deadline = time.monotonic() + timeout
    jobs = list(ui._JOBS.values())
    jobs += [value for value in at.session_state.values()
             if isinstance(value, WorkJob)]  # the Ranks / Compare pages' background work
    for job in jobs:
        job.wait(max(deadline - time.monotonic(), 0.0))
    return at.run()
