"""nufilt app entry point (the full multipage app lands with the app issue)."""

import streamlit as st

st.set_page_config(page_title="nufilt", layout="wide")
st.title("nufilt: data-free continual model merging")
st.write("The merge library is available as `nufilt`; the interactive pages are being built.")
