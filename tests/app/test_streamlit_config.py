"""The settings `streamlit run app.py` picks up from .streamlit/config.toml (read by Streamlit itself)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_app_runs_without_a_file_watcher_a_post_run_gc_or_the_deploy_button(monkeypatch):
    from streamlit import config

    monkeypatch.chdir(ROOT)  # Streamlit reads ./.streamlit/config.toml, as `streamlit run app.py` from the root
    try:
        config.get_config_options(force_reparse=True)
        # a watcher over the venv/cache kept a core busy for 40 min; a gc.collect() after every
        # one-second poll of a running merge made a step 10-20x slower (docs/app.md)
        assert config.get_option("server.fileWatcherType") == "none"
        assert config.get_option("runner.postScriptGC") is False
        assert config.get_option("client.toolbarMode") == "minimal"
    finally:
        monkeypatch.undo()
        config.get_config_options(force_reparse=True)
