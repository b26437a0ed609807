"""The Stated vs internal view of a word-problem model (the task family of :mod:`workbench.tasks.wordproblems`):
its reasoning token by token, each stated count marked true, represented before it is stated, and used when
another count is written in its place; read through the task adapter alone."""

from __future__ import annotations

import html

import numpy as np
import pandas as pd
import streamlit as st

from apps.common import load, visible
from probes.faithfulness.task_claims import REFERENCE_N, claims_for_problem, probe_reference
from probes.faithfulness.word_adapter import WordProblemAdapter
from workbench.tasks import wordproblems as wp

ADAPTER = WordProblemAdapter()
DEFAULT_STORY = wp.prompt(wp.sample_problems(1, "test", 7)[0])
YES, NO, NA = "✓", "✗", "–"


@st.cache_resource(show_spinner=False, max_entries=8)
def reference_for(spec: str, stamp: int, exclude):
    problems = ADAPTER.problems(REFERENCE_N, 11)
    return probe_reference(load(spec), ADAPTER, problems, exclude)


@st.cache_data(show_spinner=False, max_entries=256)
def claims_of(spec: str, stamp: int, prompt: str):
    problem, _, _ = wp.parse_story(prompt)
    ref = reference_for(spec, stamp, problem)
    return claims_for_problem(load(spec), ADAPTER, prompt, problem, ref, np.random.default_rng(0))


def _mark(x) -> str:
    return YES if x else NO if x is not None else NA


def sentence(got: dict) -> str:
    """The finding in words, from the marks."""
    vals = got["values"]
    if not vals:
        return "It states no running count, so nothing it says can be checked against how it answers."
    used = [v["used"] for v in vals if v["used"] is not None]
    true = sum(bool(v["claim_true"]) for v in vals)
    head = f"It states {len(vals)} running count{'s' * (len(vals) != 1)}, {true} of them true. "
    if not used:
        return head + "Whether the answer uses them was not measured (no replacement answer could be read)."
    k = sum(used)
    if k == len(used):
        return head + (f"Writing another count in any step moves the answer exactly as the story's arithmetic "
                       f"says ({k} of {len(used)}): the answer is computed from what the reasoning states.")
    if k == 0:
        return head + (f"Writing another count in a step never moves the answer as the arithmetic says (0 of "
                       f"{len(used)}): the answer does not come from the stated reasoning.")
    return head + f"Writing another count moves the answer as stated in {k} of {len(used)} steps: partly used."


def token_strip(model, prompt: str, got: dict) -> str:
    """The completion's tokens as boxes (BPE tokens, '␣' a space), stated counts coloured by their marks."""
    text = got["completion"]
    enc = model.tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
    colour_at = {}
    for v in got["values"]:
        colour = "#f4a6a6" if not v["claim_true"] else "#ffd27f" if v["used"] is False else \
            "#9fdf9f" if v["used"] else "#dddddd"
        tip = (f"{v['variable']}: stated {v['stated']}, true {v['true']}; represented before stated: "
               f"{_mark(v['represented'])}; used: {_mark(v['used'])}")
        for i in range(*v["span"]):
            colour_at[i] = (colour, tip)
    out = []
    for s, e in enc["offset_mapping"]:
        colour, tip = next((colour_at[i] for i in range(s, e) if i in colour_at), ("#f3f3f3", ""))
        out.append(f'<span title="{html.escape(tip)}" style="background:{colour};border:1px solid #ccc;'
                   f'border-radius:3px;padding:2px 3px;margin:1px;font-family:monospace;white-space:pre">'
                   f'{html.escape(visible(text[s:e]))}</span>')
    return "".join(out)


def show(model, spec: str, stamp: int, prompt: str) -> None:
    problem, kind, hint = wp.parse_story(prompt)
    if problem is None:
        st.info("This model does the word-problem task: type one of its stories (e.g. "
                f"'{DEFAULT_STORY}'), optionally after a hint line such as "
                f"'{wp.hint_line('metadata', 50).strip()}'.")
        return
    with st.spinner(f"fitting the probes on {REFERENCE_N} held-out stories (once per model), then editing each "
                    "stated count and letting the model continue"):
        got = claims_of(spec, stamp, prompt)
    vals = got["values"]
    right = got["answer"] == got["true_answer"]
    m = st.columns(4)
    m[0].metric("Answer", "none" if got["answer"] is None else str(got["answer"]))
    rep = [v["represented"] for v in vals if v["represented"] is not None]
    used = [v["used"] for v in vals if v["used"] is not None]
    m[1].metric("Stated counts true", f"{sum(bool(v['claim_true']) for v in vals)} of {len(vals)}")
    m[2].metric("Represented before stated", f"{sum(rep)} of {len(rep)}" if rep else "not measured")
    m[3].metric("Used when edited", f"{sum(used)} of {len(used)}" if used else "not measured")
    mark = f":green[{YES} right]" if right else f":red[{NO} wrong, the true count is {got['true_answer']}]"
    hinted = f" (a {kind} hint said {hint})" if kind else ""
    st.markdown(f"**Answer {got['answer']}** {mark}{hinted}. " + sentence(got))
    st.subheader("What it states")
    st.markdown(token_strip(model, prompt, got), unsafe_allow_html=True)
    st.caption("Stated counts: green true and used, amber true but not used by the answer, red false, grey not "
               "measured; hover a count for its marks. One box per BPE token.")
    if vals:
        st.dataframe(pd.DataFrame([{
            "value": v["variable"], "stated": v["stated"], "true?": f"{_mark(v['claim_true'])} (true {v['true']})",
            "represented before stated?": _mark(v["represented"]) + (f" (probe at {v['probe_site']} reads "
                                                                      f"{v['probe_reads']})" if v["probe_reads"] else ""),
            "used when edited?": _mark(v["used"]) + (f" (written {v['replaced_by']}: answer {v.get('answer_after')}, "
                                                     f"the arithmetic gives {v.get('answer_expected')})"
                                                     if v.get("replaced_by") is not None else ""),
        } for v in vals]), hide_index=True, width="stretch")
        st.caption(f"Represented: a ridge probe per count, fitted on {REFERENCE_N} held-out stories at the layer that "
                   "reads it best, read on this prompt's last token (before the model writes anything). Used: the "
                   "count is replaced by another of its decade, the rest of its step kept, and the model continues; "
                   "used if its answer becomes what the story's arithmetic gives from the new count.")
    st.caption("Where each answer digit is computed from (token patching) is measured for the addition task's "
               "digit-by-digit answers; for this task see the faithfulness study below and the Patching page.")
