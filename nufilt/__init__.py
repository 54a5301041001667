"""nufilt: data-free continual model merging (NUFILT and baselines) with analysis tools.

The library never imports Streamlit; the app (`app.py`, `pages/`) is a thin layer over it.
"""

__version__ = "0.1.0"
