"""Patching: activation and attribution patching of a clean / corrupted prompt pair.

The pair opens on the shared prompt: the model's own reasoning up to the answer's last digit (clean), and the same
text with the ones step's written result one higher (corrupted). When the corruption does not change the
prediction there is nothing to patch, and that is the finding: the changed text is not read.
"""

import numpy as np
import streamlit as st
import torch

from apps.common import (
    answer_context,
    guarded,
    own_completion,
    pick_model,
    picked_spec,
    prompt_input,
    seed,
    task_view,
)
from workbench.figures import heatmap_figure
from workbench.patching import attribution_patching, correlation, prediction_logit_diff, resid_sweep
from workbench.tasks import formats
from workbench.tasks.parse import parse_cot, parse_prompt

DEFAULT_CLEAN = "478+256= 8+6+0=14 7+5+1=13 4+2+1=07 ans 73"
DEFAULT_CORRUPT = "478+256= 8+6+0=15 7+5+1=13 4+2+1=07 ans 73"


def story_pair(context: str, completion: str, prompt: str, keep: str) -> tuple[str, str]:
    """A word problem's pair: the last step's stated count (the one the answer repeats) made wrong within its
    decade, so the answer's leading digits stay and a model that reads its reasoning changes its last digit."""
    from probes.faithfulness.word_adapter import WordProblemAdapter

    adapter = WordProblemAdapter()
    clean = context + keep
    steps, _ = adapter.split(completion)
    if context == prompt or not steps:
        return clean, clean
    wrong = adapter.corrupt_step(steps[-1], np.random.default_rng(0))
    return clean, prompt + "".join(steps[:-1]) + wrong + adapter.answer_mark + keep


def pair_for(spec: str, model, prompt: str) -> tuple[str, str]:
    """(clean, corrupted) for a problem: its text up to the answer's last digit; corrupted: the ones step's written
    result one higher (a CoT), or the first operand's ones digit one higher (a direct answer); for a word problem,
    the last stated count changed (:func:`story_pair`)."""
    context = answer_context(spec, model, prompt)
    completion = own_completion(spec, model, prompt)
    view = task_view(spec)
    if view.name == "wordproblems":
        answer = completion.partition(view.answer_mark)[2].rstrip(".").strip()
        return story_pair(context, completion, prompt, answer[:-1]) if answer.isdigit() else (prompt, prompt)
    tail = completion.partition(formats.ANSWER_MARK)[2] if context != prompt else completion
    answer = tail.strip()
    if not answer.isdigit() or len(answer) < 1:
        return prompt, prompt
    keep = answer[:-1]
    clean = context + keep
    parsed = parse_prompt(prompt)
    cot = parse_cot(completion)
    if context != prompt and cot.steps:
        s = cot.steps[0]
        step = formats.Step(s.a, s.b, s.carry_in, s.carry_out * 10 + (s.digit + 1) % 10)
        corrupt = prompt + formats.render_steps([step] + list(cot.steps[1:])) + formats.ANSWER_MARK + keep
        return clean, corrupt
    a = str(parsed.problem.a)
    a2 = a[:-1] + str((int(a[-1]) + 1) % 10)
    return clean, clean.replace(f"{a}+", f"{a2}+", 1)


def where_they_differ(view, clean: str, corrupt: str) -> str:
    """Which part of the text the corruption changed: the operands (the story), the CoT, the answer, or
    several."""
    if view.name == "wordproblems":  # its story ends at the question mark
        q = clean.find("?") + 1
        mark = clean.find(view.answer_mark)
        parts = {"the story" if i < q else "the CoT" if mark < 0 or i < mark else "the answer"
                 for i, (x, y) in enumerate(zip(clean, corrupt)) if x != y}
        return " and ".join(sorted(parts)) or "nothing"
    parsed = parse_prompt(clean)
    if parsed.problem is None:
        return "text"
    eq = clean.index("=") + 1
    mark = clean.find(formats.ANSWER_MARK)
    parts = set()
    for i, (x, y) in enumerate(zip(clean, corrupt)):
        if x != y:
            parts.add("the operands" if i < eq else "the CoT" if mark < 0 or i < mark else "the answer")
    return " and ".join(sorted(parts)) or "nothing"


def patch_figure(values, layers, tokens, title: str):
    fig = heatmap_figure(values, layers, tokens, title, colorbar="share restored", diverging=True)
    fig.update_traces(zmin=-1, zmax=1)
    fig.update_layout(xaxis_title="position:token (clean run patched in here)",
                      yaxis_title="residual stream entering block L")
    return fig


st.title("Patching")
model = pick_model(key="patch_model")
spec = picked_spec("patch_model")
pair = (lambda p: pair_for(spec, model, p)) if model is not None else None
view = task_view(spec if model is not None else None)
if model is not None and st.session_state.get("patch_task", view.name) != view.name:
    for k in ("patch_clean", "patch_corrupt"):  # the model's task changed: the other task's pair means nothing here
        st.session_state.pop(k, None)
st.session_state["patch_task"] = view.name
if model is not None and "patch_corrupt" not in st.session_state and "patch_clean" not in st.session_state:
    from apps.common import shared

    start = shared("prompt") if shared("prompt") and view.head(shared("prompt")) else None
    start = start or (view.default_prompt if view.name != "addition" else None)
    if start:
        clean0, corrupt0 = pair(start)
        seed("patch_clean", clean0)
        seed("patch_corrupt", corrupt0)
seed("patch_corrupt", DEFAULT_CORRUPT if view.name == "addition" else "")
clean = prompt_input("Clean prompt", DEFAULT_CLEAN, key="patch_clean", view=view)
if view.name == "addition":
    corrupt = st.text_input("Corrupted prompt (same token length)", key="patch_corrupt")
else:
    corrupt = st.text_area("Corrupted prompt (same token length)", key="patch_corrupt", height=90)
if model is not None:
    from workbench.models.tokenizer import tokenize_prompts

    toks = guarded(tokenize_prompts, model, [clean, corrupt])
    if toks is not None and len(toks[0]) != len(toks[1]):
        st.error(f"the prompts must have one token length (patching aligns positions): {len(toks[0])} vs {len(toks[1])}")
    elif toks is not None:
        c, d = toks[0][None], toks[1][None]
        with torch.no_grad():
            good, bad = model(c)[0, -1].argmax().item(), model(d)[0, -1].argmax().item()
        if clean == corrupt:
            st.info("The clean and corrupted prompts are the same text, so there is nothing to patch: change one step "
                    "of the CoT or one operand digit in the corrupted prompt.")
        elif good == bad:
            changed = where_they_differ(view, clean, corrupt)
            token = model.to_string(good)
            if changed == "the CoT":
                st.info(f"**The CoT is ignored: patching it restores nothing.** The corrupted CoT changes nothing: "
                        f"both prompts predict {token!r} next, so the prediction does not read the changed step. "
                        "That is the finding here (the answer is not computed from this step), not a failure: "
                        "there is no difference for patching to restore.")
            else:
                st.info(f"**The corruption changes nothing**: both prompts predict {token!r} next, so the changed "
                        f"{changed} are not read for this prediction and patching has nothing to restore. Change "
                        "another part of the text to find what is read.")
        else:
            got = guarded(prediction_logit_diff, model, c, d)
            if got is not None:
                metric, c, d, _ = got
                with torch.no_grad():
                    lo, hi = metric(model(d)).item(), metric(model(c)).item()
                effect = (resid_sweep(model, c, d, metric) - lo) / (hi - lo)
                attr = attribution_patching(model, c, d, metric) / (hi - lo)
                tokens = model.to_str_tokens(c[0])
                layers = [f"L{i}" for i in range(model.cfg.n_layers)]
                e = effect.numpy()
                first = e[0]
                sources = [f"{p}:{tokens[p]!r} ({first[p]:.0%})" for p in np.argsort(-first)[:3] if first[p] > 0.1]
                st.markdown(f"The clean run predicts {model.to_string(good)!r}, the corrupted {model.to_string(bad)!r} "
                            f"(metric: their logit difference, clean {hi:.2f}, corrupted {lo:.2f}); the corruption "
                            f"changed {where_they_differ(view, clean, corrupt)}. Patched in at layer 0 (the token itself), "
                            + (f"the clean stream at {', '.join(sources)} restores the most"
                               if sources else "no single position restores more than 10%")
                            + f". Attribution patching agrees with activation patching at "
                            f"r = {correlation(attr, effect):.2f}.")
                st.plotly_chart(patch_figure(e, layers, tokens, "activation patching: share of the logit difference "
                                             "restored by the clean activation"), width="stretch")
                st.plotly_chart(patch_figure(attr.numpy(), layers, tokens, "attribution patching (gradient estimate "
                                             f"of the same, r = {correlation(attr, effect):.2f})"), width="stretch")
