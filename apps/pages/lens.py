"""Logit lens (or a tuned lens from a directory): layer x position heatmap with the target token's rank."""

import numpy as np
import streamlit as st

from apps.common import guarded, guarded_load, is_dir, pick_model, shorten, valid_text
from workbench.errors import WorkbenchError
from workbench.figures import heatmap_figure
from workbench.lens import logit_lens
from workbench.models.tokenizer import check_text


def target_ids(model, target: str) -> list[int] | None:
    """The target's token ids (none for an empty target), or None after showing why it is not one token."""
    try:
        check_text(model.tokenizer, target)
    except WorkbenchError as e:
        st.error(f"the target token is {e}")
        return None
    ids = model.tokenizer.encode(target, add_special_tokens=False) if target else []
    if target and len(ids) != 1:
        st.error(f"the target must be one token; {shorten(target, 20)!r} is {len(ids)} tokens")
        return None
    return ids


st.title("Lens")
model = pick_model(key="lens_model")
prompt = st.text_input("Prompt", "36+59= 6+9+0=15 3+5+1=09 ans ")
target = st.text_input("Target token (one character for the organisms)", "9")
tuned_dir = st.text_input("Tuned lens directory (empty: logit lens)", "")
if model is not None and valid_text(model, prompt):
    ids = target_ids(model, target)
    if ids is not None:
        readout = None
        if tuned_dir and not is_dir(tuned_dir):
            st.error(f"no directory {shorten(tuned_dir)}: give a tuned lens directory (written by `workbench "
                     "tuned-lens`), or leave it empty for the logit lens")
        elif tuned_dir:
            from workbench.tuned_lens import load_tuned_lens, tuned_lens_readout

            lens = guarded_load(load_tuned_lens, tuned_dir, model,
                                what="a loadable tuned lens (config.json and lens.safetensors)")
            readout = guarded(tuned_lens_readout, model, lens, prompt, ids[0] if ids else None) if lens else None
        else:
            readout = guarded(logit_lens, model, prompt, ids[0] if ids else None)
        if readout is not None:
            tokens = model.to_str_tokens(prompt)
            top = np.array([[model.to_string(int(t)) for t in row] for row in readout.top_tokens[:, :, 0]], dtype=object)
            values = readout.target_prob.numpy() if readout.target_prob is not None else readout.top_probs[:, :, 0].numpy()
            st.plotly_chart(heatmap_figure(values, readout.labels, tokens, f"P({target!r})" if ids else "top-1 probability",
                                           text=top), width="stretch")
            if readout.target_rank is not None:
                st.caption("Rank of the target at the last position, by layer: " +
                           ", ".join(f"{lab} {int(r)}" for lab, r in zip(readout.labels, readout.target_rank[:, -1])))
