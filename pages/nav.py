"""Every page is entered through `app.py`, even on a deep link to a freshly started server.

Streamlit treats a `pages/` folder beside the main script as a legacy multipage app until the first
`st.navigation` call: a first visitor who opens e.g. `/merge` would get that script alone, without
this app's navigation. `app.py` marks the session; a page reached without the mark hands over to
`app.py`, which installs the navigation (and opens Setup). Imports only Streamlit (no torch).
"""

import streamlit as st

APP_KEY = "_nufilt_entered_through_app"


def mark_app() -> None:
    """Called by `app.py` on every run, before its navigation."""
    st.session_state[APP_KEY] = True


def require_app() -> None:
    """Called first by every page: reached without `app.py` (legacy deep link), switch to it."""
    if not st.session_state.get(APP_KEY):
        st.switch_page("app.py")
