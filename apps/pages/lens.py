"""Logit lens (or a tuned lens from a directory): layer x position heatmap with the target token's rank."""

import numpy as np
import streamlit as st

from apps.common import guarded, pick_model, valid_text
from workbench.figures import heatmap_figure
from workbench.lens import logit_lens

st.title("Lens")
model = pick_model(key="lens_model")
prompt = st.text_input("Prompt", "36+59= 6+9+0=15 3+5+1=09 ans ")
target = st.text_input("Target token (one character for the organisms)", "9")
tuned_dir = st.text_input("Tuned lens directory (empty: logit lens)", "")
if model is not None and valid_text(model, prompt):
    ids = model.tokenizer.encode(target, add_special_tokens=False) if target else []
    if target and len(ids) != 1:
        st.error(f"the target must be one token; {target!r} is {len(ids)} tokens")
    else:
        if tuned_dir:
            from workbench.tuned_lens import load_tuned_lens, tuned_lens_readout

            lens = guarded(load_tuned_lens, tuned_dir, model)
            readout = guarded(tuned_lens_readout, model, lens, prompt, ids[0] if ids else None) if lens else None
        else:
            readout = guarded(logit_lens, model, prompt, ids[0] if ids else None)
        if readout is not None:
            tokens = model.to_str_tokens(prompt)
            top = np.array([[model.to_string(int(t)) for t in row] for row in readout.top_tokens[:, :, 0]], dtype=object)
            values = readout.target_prob.numpy() if readout.target_prob is not None else readout.top_probs[:, :, 0].numpy()
            st.plotly_chart(heatmap_figure(values, readout.labels, tokens, f"P({target!r})" if target else "top-1 probability",
                                           text=top), width="stretch")
            if readout.target_rank is not None:
                st.caption("Rank of the target at the last position, by layer: " +
                           ", ".join(f"{lab} {int(r)}" for lab, r in zip(readout.labels, readout.target_rank[:, -1])))
