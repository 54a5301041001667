"""Every page is entered through `app.py`, even on a deep link to a freshly started server.

Streamlit treats a `pages/` folder beside the main script as a legacy multipage app until the first
`st.navigation` call: a first visitor who opens e.g. `/merge` would get that script alone, without
this app's navigation. `app.py` marks the session; a page reached without the mark hands over to
`app.py`, which installs the navigation and then opens the page that was asked for, with the
link's query parameters (the Setup choices). Imports only Streamlit (no torch).
"""

import sys
from collections.abc import Callable
from pathlib import Path

import streamlit as st

APP_KEY = "_nufilt_entered_through_app"
PENDING_KEY = "_nufilt_deep_link"  # (page path relative to app.py, the link's query parameters)
PARAMS_KEY = "_nufilt_deep_link_params"
FOLLOW_KEY = "_nufilt_follow"  # what a page leaves to run after it has drawn everything
ROOT = Path(__file__).resolve().parents[1]


def mark_app() -> None:
    """Called by `app.py` on every run, before its navigation."""
    st.session_state[APP_KEY] = True


def require_app() -> None:
    """Called first by every page: reached without `app.py` (legacy deep link), switch to it and
    remember the page and its query parameters for `open_pending_page`."""
    if not st.session_state.get(APP_KEY):
        caller = Path(sys._getframe(1).f_globals.get("__file__", "")).resolve()
        params = {key: st.query_params.get_all(key) if key == "opt" else st.query_params[key]
                  for key in st.query_params}
        page = caller.relative_to(ROOT).as_posix() if caller.is_relative_to(ROOT) else None
        st.session_state[PENDING_KEY] = page
        st.session_state[PARAMS_KEY] = params
        st.switch_page("app.py")


def open_pending_page() -> None:
    """Called by `app.py` after its navigation: open the deep link's page, if one is waiting."""
    page = st.session_state.pop(PENDING_KEY, None)
    if page and page != "pages/setup.py":
        st.switch_page(page)


def pending_params() -> dict | None:
    """A deep link's query parameters, once (then the URL holds them again)."""
    return st.session_state.pop(PARAMS_KEY, None)


def after_page(follow: Callable[[], None]) -> None:
    """A page asks `app.py` to call `follow()` once the page is drawn (e.g. to wait for a step)."""
    st.session_state[FOLLOW_KEY] = follow


def run_page(page) -> None:
    """Called by `app.py`: run the page, then what it left to follow (nothing left from an older run)."""
    st.session_state.pop(FOLLOW_KEY, None)
    page.run()
    follow = st.session_state.pop(FOLLOW_KEY, None)
    if follow is not None:
        follow()
