"""nufilt app: pick a backbone and a task order, merge step by step, watch the geometry live.

`streamlit run app.py`. Page config, the shared sidebar and navigation live here; each page in
`pages/` is a thin layer over `nufilt.appstate` (logic) and `nufilt.figures` (Plotly figures).
(Streamlit would serve the files of a `pages/` folder as stand-alone legacy pages to the first
visitor of a fresh server who opens a deep link; `pages/nav.py` sends such a visit through here.)
"""

import streamlit as st

from pages import nav

# Only Streamlit is imported here: each page shows its title before it imports torch and the
# library (seconds on a cold start), so the first screen appears at once.
st.set_page_config(page_title="nufilt: continual model merging", page_icon=":material/merge_type:", layout="wide")

PAGES = [
    st.Page("pages/setup.py", title="Setup", icon=":material/tune:", default=True),
    st.Page("pages/merge.py", title="Merge", icon=":material/merge_type:"),
    st.Page("pages/geometry.py", title="Geometry", icon=":material/grid_on:"),
    st.Page("pages/stability.py", title="Stability & plasticity", icon=":material/balance:"),
    st.Page("pages/ranks.py", title="Ranks", icon=":material/stacked_line_chart:"),
    st.Page("pages/paper.py", title="Compare with the paper", icon=":material/article:"),
]
nav.mark_app()
page = st.navigation(PAGES)
nav.open_pending_page()  # a deep link to a fresh server: its page, after the navigation exists
st.sidebar.markdown("**nufilt** · data-free continual merging (NUFILT and baselines)")
nav.run_page(page)  # the page, then (while a merge runs) its progress until the next step
