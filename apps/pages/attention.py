"""Attention patterns per layer and head (plotly heatmaps, query x key)."""

import streamlit as st

from apps.common import pick_model, valid_text
from workbench.figures import heatmap_figure

st.title("Attention")
model = pick_model(key="attn_model")
prompt = st.text_input("Prompt", "36+59= 6+9+0=15 3+5+1=09 ans ")
if model is not None and valid_text(model, prompt):
    layer = st.slider("Layer", 0, model.cfg.n_layers - 1, model.cfg.n_layers - 1)
    head = st.slider("Head", 0, model.cfg.n_heads - 1, 0)
    name = f"blocks.{layer}.attn.hook_pattern"
    _, cache = model.run_with_cache(prompt, names_filter=name)
    pattern = cache[name][0, head].numpy()  # [query, key]
    tokens = model.to_str_tokens(prompt)
    fig = heatmap_figure(pattern, [f"{i}:{t}" for i, t in enumerate(tokens)], tokens, f"layer {layer} head {head}: query x key")
    fig.update_layout(xaxis_title="key position", height=700)
    st.plotly_chart(fig, width="stretch")
