"""The workbench explorer: ``streamlit run apps/explorer.py`` or ``workbench app``.

A router only; each page is one file under ``pages/`` that holds widgets and calls the library.
"""

import streamlit as st

st.set_page_config(page_title="Workbench explorer", layout="wide")
pages = [
    st.Page("pages/prompt_lab.py", title="Prompt lab", default=True),
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
