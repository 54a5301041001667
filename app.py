"""nufilt app: pick a backbone and a task order, merge step by step, watch the geometry live.

`streamlit run app.py`. Page config, the shared sidebar and navigation live here; each page in
`app_pages/` is a thin layer over `nufilt.appstate` (logic) and `nufilt.figures` (Plotly figures).
(The folder is not called `pages/`: Streamlit would then serve those files as stand-alone
pages to a first visitor who opens a deep link, bypassing this script.)
"""

import streamlit as st

# Only Streamlit is imported here: each page shows its title before it imports torch and the
# library (seconds on a cold start), so the first screen appears at once.
st.set_page_config(page_title="nufilt: continual model merging", page_icon=":material/merge_type:", layout="wide")

PAGES = [
    st.Page("app_pages/setup.py", title="Setup", icon=":material/tune:", default=True),
    st.Page("app_pages/merge.py", title="Merge", icon=":material/merge_type:"),
    st.Page("app_pages/geometry.py", title="Geometry", icon=":material/grid_on:"),
    st.Page("app_pages/stability.py", title="Stability & plasticity", icon=":material/balance:"),
    st.Page("app_pages/ranks.py", title="Ranks", icon=":material/stacked_line_chart:"),
    st.Page("app_pages/paper.py", title="Compare with the paper", icon=":material/article:"),
]
page = st.navigation(PAGES)
st.sidebar.markdown("**nufilt** · data-free continual merging (NUFILT and baselines)")
page.run()
