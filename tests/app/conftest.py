"""AppTest fixtures: the real app script on the micro zoo (built once per session by tests/conftest.py)."""

from __future__ import annotations

import pytest

from tests.app.helpers import APP, forget_session_resources


@pytest.fixture
def app(micro_zoo_dir, monkeypatch, tmp_path):
    """A fresh `AppTest` session of app.py on the micro zoo, already run once (the Setup page).

    Saved runs go to a folder of the test's own, so every test starts at step 0."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("NUFILT_ZOO_PRESET", "micro")
    monkeypatch.setenv("NUFILT_CACHE_DIR", str(micro_zoo_dir))
    monkeypatch.setenv("NUFILT_APP_WORKERS", "0")  # long jobs in the server process; one test turns Ray on
    monkeypatch.setenv("NUFILT_RUNS_DIR", str(tmp_path / "runs"))
    forget_session_resources()
    at = AppTest.from_file(str(APP), default_timeout=120)
    return at.run()
