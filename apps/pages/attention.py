"""Attention patterns per layer and head (plotly heatmaps, query x key)."""

import streamlit as st

from apps.common import (DEFAULT_TEXT, answer_context, pick_model, picked_spec, prompt_input, seed, share, shared_layer,
                         task_view, valid_text)
from workbench.figures import heatmap_figure

st.title("Attention")
model = pick_model(key="attn_model")
spec = picked_spec("attn_model")
derive = (lambda p: answer_context(spec, model, p)) if model is not None else None
prompt = prompt_input("Prompt", DEFAULT_TEXT, key="attn_prompt", derive=derive,
                      view=task_view(spec if model is not None else None))
if model is not None and valid_text(model, prompt):
    seed("attn_layer", shared_layer(model.cfg.n_layers, model.cfg.n_layers - 1))
    if st.session_state["attn_layer"] >= model.cfg.n_layers:  # a model with fewer layers than the last one
        st.session_state["attn_layer"] = model.cfg.n_layers - 1
    layer = st.slider("Layer", 0, model.cfg.n_layers - 1, key="attn_layer")
    share("layer", layer)
    head = st.slider("Head", 0, model.cfg.n_heads - 1, 0)
    name = f"blocks.{layer}.attn.hook_pattern"
    _, cache = model.run_with_cache(prompt, names_filter=name)
    pattern = cache[name][0, head].numpy()  # [query, key]
    tokens = model.to_str_tokens(prompt)
    last = pattern[-1]
    k = int(last.argmax())
    st.markdown(f"From the last position ({len(tokens) - 1}:{tokens[-1]!r}), head {head} of layer {layer} attends most "
                f"to position {k} ({tokens[k]!r}), weight {last[k]:.2f}.")
    fig = heatmap_figure(pattern, [f"{i}:{t}" for i, t in enumerate(tokens)], tokens,
                         f"layer {layer} head {head}: attention from each query position to each key position",
                         colorbar="attention weight")
    fig.update_traces(zmin=0, zmax=1)
    fig.update_layout(xaxis_title="key position:token (attended to)", yaxis_title="query position:token (attending)",
                      height=700)
    st.plotly_chart(fig, width="stretch")
