"""Prompt lab: tokens, the generated reasoning and its parsed answer (right or wrong), per-token probabilities;
two models side by side."""

import html

import pandas as pd
import streamlit as st
import torch

from apps.common import (
    DEFAULT_PROMPT,
    budget,
    completion_of,
    guarded,
    model_stamp,
    pick_model,
    picked_spec,
    prompt_input,
    task_view,
    visible,
)
from workbench.models.tokenizer import tokenize_prompts



def token_strip(tokens: list[str], n_prompt: int) -> str:
    """The tokens as boxes, spaces shown as '␣': the prompt's grey, the generated ones blue."""
    spans = []
    for i, tok in enumerate(tokens):
        colour = "#e8e8e8" if i < n_prompt else "#cfe3ff"
        spans.append(f'<span title="position {i}" style="background:{colour};border:1px solid #bbb;border-radius:3px;'
                     f'padding:1px 3px;margin:1px;font-family:monospace;white-space:pre">{html.escape(visible(tok))}</span>')
    return "".join(spans)


def answer_line(view, prompt: str, completion: str) -> str:
    """The parsed answer with a right/wrong mark against the true answer (and what it is: the hint, another
    number), read the way the model's task family writes it."""
    got = view.read(prompt, completion)
    if got.answer is None:
        return f"**Answer: none** -- {got.reads}"
    if got.truth is None:
        return f"**Answer: {got.answer}** ({got.reads})"
    if got.answer == got.truth:
        return f"**Answer: {got.answer}** :green[✓ right] ({got.reads})"
    return f"**Answer: {got.answer}** :red[✗ wrong]: {got.reads}; the true answer is {got.truth}"


st.title("Prompt lab")
prompt_box = st.container()  # filled once the first model is picked: the prompt is read in its task's terms
compare = st.checkbox("Compare with a second model")
cols = st.columns(2 if compare else 1)
models = []
for k, col in enumerate(cols):
    with col:
        models.append(pick_model(key=f"lab_model_{k}", default="adder-cot-faithful" if k == 0 else "adder-cot-posthoc",
                                 shared_model=k == 0))
view = task_view(picked_spec("lab_model_0") if models[0] is not None else None)
with prompt_box:
    prompt = prompt_input("Prompt", DEFAULT_PROMPT, key="lab_prompt", view=view)
for k, (col, model) in enumerate(zip(cols, models)):
    with col:
        key = f"lab_model_{k}"
        if model is None:
            continue
        toks = guarded(tokenize_prompts, model, [prompt], 1)  # room for at least one new token
        if toks is None:
            continue
        spec = picked_spec(key)
        n_new = budget(model, prompt)
        completion = completion_of(spec, model_stamp(spec), prompt, n_new)
        st.markdown(answer_line(view, prompt, completion))
        st.code(prompt + completion, language=None)
        full = model.to_tokens(prompt + completion)
        n_prompt = len(toks[0])
        if full.shape[1] - n_prompt >= n_new:
            st.caption(f"Stopped after {n_new} new tokens, where the context ({model.cfg.n_ctx} tokens) ends, "
                       "without an end-of-text token.")
        else:
            st.caption(f"{full.shape[1] - n_prompt} new tokens, then end-of-text (up to {n_new} were allowed: what "
                       f"the {model.cfg.n_ctx}-token context leaves).")
        tokens = [model.to_string(full[0, i]) for i in range(full.shape[1])]
        st.markdown(token_strip(tokens, n_prompt), unsafe_allow_html=True)
        with torch.no_grad():
            probs = model(full).softmax(-1)[0]
        rows = [{"position": i, "token": visible(tokens[i]), "part": "generated" if i >= n_prompt else "prompt",
                 "p(token)": round(float(probs[i - 1, full[0, i]]), 4)} for i in range(1, full.shape[1])]
        st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch", height=300,
                     column_config={"p(token)": st.column_config.NumberColumn(format="%.4f")})
        st.caption("p(token): the probability the model gave each token at the position before it ('␣' is a "
                   "space); the organisms are trained on completions only, so a prompt token's is not a prediction.")
