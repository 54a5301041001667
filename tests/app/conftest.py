"""AppTest fixtures: the real app script on the micro zoo (built once per session by tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

APP = Path(__file__).resolve().parents[2] / "app.py"


@pytest.fixture
def app(micro_zoo_dir, monkeypatch):
    """A fresh `AppTest` session of app.py on the micro zoo, already run once (the Setup page)."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("NUFILT_ZOO_PRESET", "micro")
    monkeypatch.setenv("NUFILT_CACHE_DIR", str(micro_zoo_dir))
    forget_session_resources()
    at = AppTest.from_file(str(APP), default_timeout=120)
    return at.run()


def forget_session_resources() -> None:
    """Drop session-scoped cached resources (the step-by-step run) left by the previous test.

    AppTest runs every test under one fixed session id ("test session id"), so unlike browser
    sessions they would share one run; a real session's resources go when it disconnects.
    """
    from streamlit.runtime.caching import cache_resource_api

    cache_resource_api._resource_caches.clear_session("test session id")
