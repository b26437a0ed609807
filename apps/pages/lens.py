"""Logit lens (or a tuned lens from a directory): layer x position heatmap with the target token's rank."""

import numpy as np
import streamlit as st

from apps.common import (
    DEFAULT_TEXT,
    answer_context,
    guarded,
    guarded_load,
    is_dir,
    pick_model,
    picked_spec,
    prompt_input,
    seed,
    shorten,
    target_ids,
    task_view,
    valid_text,
)
from workbench.figures import heatmap_figure
from workbench.lens import logit_lens


def first_answer_digit(view, text: str) -> str:
    """The true answer's first digit when ``text`` ends where the answer starts, else '' (the top-1 token)."""
    truth = view.truth(text)
    return str(truth)[0] if truth is not None and text.endswith(view.answer_mark) else ""


def finding(readout, labels: list[str], target: str) -> str:
    """One sentence from the last position's ranks: where the target becomes the top token."""
    ranks = [int(r) for r in readout.target_rank[:, -1]]
    probs = readout.target_prob[:, -1].tolist()
    top = [i for i, r in enumerate(ranks) if r == 0]
    if not top:
        best = int(np.argmin(ranks))
        return (f"At the last position the lens never ranks {target!r} first: its best rank is {ranks[best] + 1} "
                f"at {labels[best]}.")
    first = top[0]
    stays = all(r == 0 for r in ranks[first:])
    return (f"At the last position {target!r} becomes the lens's top token at {labels[first]} (P = {probs[first]:.2f})"
            + (" and stays on top to the output." if stays else ", then loses the top rank again.")
            + (" It is readable before the last layer: the answer is there early." if first < len(ranks) - 1 else ""))


st.title("Lens")
model = pick_model(key="lens_model")
spec = picked_spec("lens_model")
derive = (lambda p: answer_context(spec, model, p)) if model is not None else None
view = task_view(spec if model is not None else None)
prompt = prompt_input("Prompt", DEFAULT_TEXT, key="lens_prompt", derive=derive, view=view)
seed("lens_target", first_answer_digit(view, prompt) or "9")
target = st.text_input("Target token (one token, e.g. one digit; empty: the top-1 token)", key="lens_target")
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
            what = f"P({target!r})" if ids else "top-1 probability"
            fig = heatmap_figure(values, readout.labels, tokens, f"{'tuned' if tuned_dir else 'logit'} lens: {what}",
                                 colorbar=what, text=top)
            fig.update_traces(zmin=0, zmax=1)
            fig.update_layout(xaxis_title="position:token (the prediction made there is for the next token)",
                              yaxis_title="layer (residual stream read by the lens)")
            if readout.target_rank is not None:
                st.markdown(finding(readout, list(readout.labels), target))
            st.plotly_chart(fig, width="stretch")
            st.caption("Hover a cell for the lens's top token there.")
            if readout.target_rank is not None:
                st.caption("Rank of the target at the last position, by layer (1 = top): " +
                           ", ".join(f"{lab} {int(r) + 1}" for lab, r in zip(readout.labels, readout.target_rank[:, -1])))
