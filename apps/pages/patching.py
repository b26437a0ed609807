"""Patching: activation and attribution patching of a clean / corrupted prompt pair."""

import streamlit as st
import torch

from apps.common import guarded, pick_model
from workbench.figures import heatmap_figure
from workbench.patching import attribution_patching, correlation, prediction_logit_diff, resid_sweep

st.title("Patching")
model = pick_model(key="patch_model")
clean = st.text_input("Clean prompt", "36+59= 6+9+0=15 3+5+1=09 ans 9")
corrupt = st.text_input("Corrupted prompt (same token length)", "36+59= 6+9+0=16 3+5+1=09 ans 9")
if model is not None:
    from workbench.models.tokenizer import tokenize_prompts

    toks = guarded(tokenize_prompts, model, [clean, corrupt])
    if toks is not None and len(toks[0]) != len(toks[1]):
        st.error(f"the prompts must have one token length (patching aligns positions): {len(toks[0])} vs {len(toks[1])}")
    elif toks is not None:
        c, d = toks[0][None], toks[1][None]
        got = guarded(prediction_logit_diff, model, c, d)
        if got is not None:
            metric, c, d, _ = got
            with torch.no_grad():
                lo, hi = metric(model(d)).item(), metric(model(c)).item()
            effect = (resid_sweep(model, c, d, metric) - lo) / (hi - lo)
            attr = attribution_patching(model, c, d, metric) / (hi - lo)
            tokens = model.to_str_tokens(c[0])
            layers = [f"L{i}" for i in range(model.cfg.n_layers)]
            st.write(f"Metric (clean-predicted minus corrupted-predicted logit): clean {hi:.2f}, corrupted {lo:.2f}")
            st.plotly_chart(heatmap_figure(effect.numpy(), layers, tokens, "activation patching (share restored)",
                                           diverging=True), width="stretch")
            st.plotly_chart(heatmap_figure(attr.numpy(), layers, tokens,
                                           f"attribution patching (r = {correlation(attr, effect):.2f})", diverging=True),
                            width="stretch")
