"""The workbench explorer: ``streamlit run apps/explorer.py`` or ``workbench app``.

A router only; each page is one file under ``pages/`` that holds widgets and calls the library. Before the page
runs, a link's query string (``?model=...&prompt=...&layer=...``) seeds the state the pages share.
"""

import streamlit as st

from apps.common import init_shared

st.set_page_config(page_title="Workbench explorer", layout="wide")
init_shared()
pages = [
    st.Page("pages/stated_vs_internal.py", title="Stated vs internal", default=True),
    st.Page("pages/prompt_lab.py", title="Prompt lab"),
    st.Page("pages/lens.py", title="Lens"),
    st.Page("pages/attention.py", title="Attention"),
    st.Page("pages/probes.py", title="Probes"),
    st.Page("pages/patching.py", title="Patching"),
    st.Page("pages/faithfulness.py", title="Faithfulness"),
    st.Page("pages/features.py", title="Features"),
    st.Page("pages/circuit.py", title="Circuit"),
    st.Page("pages/alignment_diff.py", title="Alignment diff"),
]
st.navigation(pages).run()
