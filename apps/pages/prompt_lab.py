"""Prompt lab: tokens, the generated reasoning and answer, per-token probabilities; two models side by side."""

import pandas as pd
import streamlit as st
import torch

from apps.common import guarded, pick_model
from workbench.generation import complete
from workbench.models.tokenizer import tokenize_prompts

st.title("Prompt lab")
prompt = st.text_input("Prompt", "36+59=")
compare = st.checkbox("Compare with a second model")
cols = st.columns(2 if compare else 1)
for k, col in enumerate(cols):
    with col:
        model = pick_model(key=f"lab_model_{k}", default="adder-cot-faithful" if k == 0 else "adder-cot-posthoc")
        if model is None:
            continue
        toks = guarded(tokenize_prompts, model, [prompt], 32)
        if toks is None:
            continue
        completion = complete(model, [prompt], max_new_tokens=32)[0]
        st.code(prompt + completion)
        full = model.to_tokens(prompt + completion)
        with torch.no_grad():
            probs = model(full).softmax(-1)[0]
        n_prompt = len(toks[0])
        rows = [{"position": i, "token": model.to_string(full[0, i]), "p(token)": float(probs[i - 1, full[0, i]]),
                 "generated": i >= n_prompt} for i in range(1, full.shape[1])]
        st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
