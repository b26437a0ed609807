"""Alignment diff: a base and a tuned model (adder-hint before and after `workbench align`): the diff report's
figures and verdict, and one prompt through both side by side (the answer, the logit lens, the hint's path)."""

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from apps.common import (
    LOCAL,
    exists,
    beside_model,
    dir_stamp,
    guarded,
    guarded_load,
    is_dir,
    load,
    load_or_error,
    pick_model,
    picked_spec,
    shorten,
    valid_text,
)
from workbench.diff_view import (
    LIGHT_CONFIG,
    LIGHT_PROMPTS,
    hint_path_figures,
    hint_swap,
    incompatibility,
    lens_figures,
    lens_targets,
    lens_text,
)
from workbench.errors import WorkbenchError
from workbench.models.zoo import RECIPES

TUNED_DEFAULT = "runs/align/dpo/model"
DIFF_DEFAULT = "runs/align/diff"
PROMPT_DEFAULT = "hint:700 245+318="
HOW_TO = ("`workbench align --out runs/align` trains the aligned adder-hint (runs/align/dpo/model) and writes its "
          "diff (runs/align/diff)")
SAVED, COMPUTE = "A saved diff directory", "Compute a light diff of the two models"
# The light diff of adder-hint and another organism, timed on 2 CPU cores: 1.3 s in a warm process, 4.4 s as the
# page's first computation (workbench.diff_view.light_diff).
LIGHT_SECONDS = "1 to 5 s"
# A median relative weight change ||W_tuned - W_base|| / ||W_base|| above this: not a fine-tune of the base (a
# fine-tune moves weights a few percent; two separately trained models differ by about sqrt(2)).
UNRELATED = 0.5


@st.cache_data(show_spinner=False, max_entries=16)
def weight_change(base_spec: str, base_stamp: int, tuned_spec: str, tuned_stamp: int) -> float:
    """Median over parameters of the relative weight change (workbench.diff.weight_deltas)."""
    from workbench.diff import weight_deltas

    rows = weight_deltas(load(base_spec), load(tuned_spec))
    return float(np.median([r["relative"] for r in rows])) if rows else 0.0


def card_name(spec: str) -> str | None:
    """The organism a model directory's card names (``card.json``), or the organism itself."""
    if spec in RECIPES:
        return spec
    card = Path(spec) / "card.json"
    try:
        name = json.loads(card.read_text()).get("name") if exists(str(card)) else None
    except (OSError, ValueError, AttributeError):
        return None
    return name if isinstance(name, str) else None


def pair_warning(base_spec: str, tuned_spec: str) -> str | None:
    """Why these two models may not be a base and its fine-tune: their cards name two organisms, or their weights
    are far apart; None when nothing says so."""
    reasons = []
    a, b = card_name(base_spec), card_name(tuned_spec)
    if a and b and a != b:
        reasons.append(f"their cards name two organisms ({a} and {b}), each trained from scratch")
    change = weight_change(base_spec, stamp_of(base_spec), tuned_spec, stamp_of(tuned_spec))
    if change > UNRELATED:
        reasons.append(f"their weights differ by a median of {change:.0%} of the base's norm per parameter (a "
                       "fine-tune moves them a few percent)")
    if not reasons:
        return None
    return ("These two models do not look like a base and its fine-tune: " + "; ".join(reasons) + ". The diff's "
            "'removed' or 'bypassed' reads what training changed in a model; between two separately trained models "
            "it only describes how they differ, so do not read it as an alignment result.")


def stamp_of(spec: str) -> int:
    """Part of every result's cache key: a checkpoint rewritten in place is computed again."""
    return dir_stamp(beside_model(spec))


# Results are keyed by the models' specs and stamps (a model itself does not hash); models come from load().


@st.cache_data(show_spinner=False, max_entries=16)
def saved_diff(path: str, stamp: int):
    from workbench.diff_view import load_saved_diff

    return load_saved_diff(path)


@st.cache_resource(show_spinner=False, max_entries=8)
def report_figures(path: str, stamp: int):
    """Kept as objects (not pickled per rerun like st.cache_data values): a dozen figures unpickle in ~1 s."""
    from workbench.diff_view import report_figures as figures

    return figures(saved_diff(path, stamp))


@st.cache_data(show_spinner=False, max_entries=8)
def computed_diff(base_spec: str, base_stamp: int, tuned_spec: str, tuned_stamp: int) -> str:
    from workbench.diff_view import light_diff

    return str(light_diff(load(base_spec), load(tuned_spec)))


@st.cache_data(show_spinner=False, max_entries=64)
def answer_of(spec: str, stamp: int, prompt: str):
    from workbench.diff_view import answer

    return answer(load(spec), prompt)


@st.cache_data(show_spinner=False, max_entries=64)
def lens_of(spec: str, stamp: int, text: str, target: str | None):
    from workbench.diff_view import lens_grid

    return lens_grid(load(spec), text, target)


@st.cache_data(show_spinner=False, max_entries=64)
def path_of(spec: str, stamp: int, prompt: str):
    from workbench.diff_view import hint_path

    return hint_path(load(spec), hint_swap(prompt))


def missing_dir(path: str, default: str, what: str, other: str) -> None:
    """The default directory not made yet is the fresh state (an info); a typed one that is missing is an error."""
    say = st.info if path == default else st.error
    say(f"No {what} at {shorten(path)}. {HOW_TO}; {other}")


def pick_tuned():
    """An organism or (the default) a local checkpoint directory: returns (model or None, spec or None)."""
    names = list(RECIPES) + [LOCAL]
    choice = st.selectbox("Tuned model", names, index=names.index(LOCAL), key="diff_tuned")
    spec = choice
    if choice == LOCAL:
        spec = st.text_input("Tuned model directory (our checkpoint or a Hugging Face model)", TUNED_DEFAULT,
                             key="diff_tuned_dir").strip()
        if not spec:
            st.info("Type the tuned model's directory.")
            return None, None
        if not is_dir(spec):
            missing_dir(spec, TUNED_DEFAULT, "tuned model directory",
                        "or type another checkpoint directory, or pick an organism.")
            return None, None
    model = load_or_error(spec)
    return (model, spec) if model is not None else (None, None)


def show_charts(rows: list) -> None:
    """Rows of (title, figure); a row of two (base, tuned) side by side."""
    for row in rows:
        for col, (_, fig) in zip(st.columns(len(row)), row):
            col.plotly_chart(fig, width="stretch")


def show_report(path: str) -> None:
    stamp = dir_stamp(path)
    saved = guarded_load(saved_diff, path, stamp, what="a readable diff (summary.json and parquet tables)")
    if saved is None:
        return
    v, s = saved.verdict, saved.summary
    if v:
        st.subheader(f"Verdict: {v['verdict']} (representation: {v['representation']})")
        if st.session_state.get("diff_unrelated") and st.session_state.get("diff_source") != SAVED:
            st.warning("Read with care: the two models compared do not look like a base and its fine-tune (above).")
        st.markdown("\n".join(f"- {e}" for e in v["evidence"]))
        with st.expander("The numbers the verdict rests on, and its rules"):
            st.dataframe(pd.DataFrame([v["numbers"]]), hide_index=True)
            st.dataframe(pd.DataFrame([v["rules"]]), hide_index=True)
    else:
        st.info("This diff has no mechanism half (written with --no-mechanisms), so no verdict.")
    m = st.columns(4)
    m[0].metric("Prompts", s["n_prompts"])
    m[1].metric("Mean KL (base || tuned)", f"{s['kl_mean']:.3f}")
    m[2].metric("KL, 90th percentile", f"{s['kl_p90']:.3f}")
    m[3].metric("Next token changed", f"{s['next_token_changed']:.0%}")
    with st.expander("Most changed parameters"):
        st.dataframe(pd.DataFrame(s["most_changed_parameters"]), hide_index=True)
    show_charts(report_figures(path, stamp))


def report_section(pair: tuple | None) -> None:
    source = st.radio("Report", [SAVED, COMPUTE], horizontal=True, key="diff_source", label_visibility="collapsed")
    if source == SAVED:
        path = st.text_input("Diff directory (summary.json and parquet tables)", DIFF_DEFAULT, key="diff_dir").strip()
        if not path:
            st.info("Type a diff directory.")
        elif not is_dir(path):
            missing_dir(path, DIFF_DEFAULT, "diff directory", "`workbench diff BASE TUNED --out DIR` diffs any two "
                        "models of one architecture; or compute a light diff of the two models above.")
        else:
            show_report(path)
        return
    if pair is None:
        st.info("Pick a base and a tuned model of one architecture above to compute their diff.")
        return
    last = st.session_state.get("diff_seconds")
    st.caption(f"{LIGHT_PROMPTS} prompts for KL and the residual stream, {LIGHT_CONFIG.n_probe} for the probes and "
               f"{LIGHT_CONFIG.n_pairs} hint-swap pairs (the study uses 500 and 64). Measured for two organisms: "
               f"{LIGHT_SECONDS} on 2 CPU cores; a busy machine or larger models take many times longer (tens of "
               "seconds)" + (f"; the last diff here took {last:.1f} s" if last else "")
               + ". Written once per pair of weights to a cache directory, then read back in under a second.")
    key = (pair[0], stamp_of(pair[0]), pair[1], stamp_of(pair[1]))
    if st.button("Compute the diff") or st.session_state.get("diff_computed") == key:
        t0 = time.perf_counter()
        with st.spinner("diffing: weights, KL, residual stream, probe transfer, hint-swap patching (it runs while "
                        "this shows; the first time for a pair of weights)"):
            out = guarded(computed_diff, *key)
        spent = time.perf_counter() - t0
        if out is not None:
            if st.session_state.get("diff_computed") != key:
                st.session_state["diff_seconds"] = spent  # the time of the computation, not of a cached read
            st.session_state["diff_computed"] = key  # later reruns keep showing it
            st.caption(f"Written to {out}; its report.html holds every figure in one page. Computed in "
                       f"{st.session_state.get('diff_seconds', spent):.1f} s; kept for the session.")
            show_report(out)


def prompt_section(pair: tuple | None, base) -> None:
    prompt = st.text_input("Prompt ('hint:H a+b=' also shows the hint's path)", PROMPT_DEFAULT, key="diff_prompt")
    if prompt and base is not None and not valid_text(base, prompt):  # one tokenizer for both: the pair is compatible
        return
    if pair is None:
        st.info("Pick a base and a tuned model of one architecture above.")
        return
    if not prompt:
        st.info("Type a prompt.")
        return
    keyed = [(spec, stamp_of(spec)) for spec in pair]
    with st.spinner("generating with both models"):
        answers = [guarded(answer_of, spec, stamp, prompt) for spec, stamp in keyed]
    for col, name, a in zip(st.columns(2), ("Base", "Tuned"), answers):
        if a is not None:
            col.metric(f"{name} answers", "none" if a.answer is None else str(a.answer), a.reads, delta_color="off")
            col.code(prompt + a.completion, language=None)

    st.subheader("Logit lens")
    targets = lens_targets(prompt)
    choice = st.radio("Probability of", list(targets) + ["the top-1 token"], horizontal=True)
    text = lens_text(prompt)
    if text != prompt:
        st.caption("Read over the prompt with its true CoT and ' ans ' appended, where the answer starts: the hint "
                   "acts there, not on the CoT. Hover a cell for the lens's top token.")
    grids = [guarded(lens_of, spec, stamp, text, targets.get(choice)) for spec, stamp in keyed]
    if None not in grids:
        show_charts([lens_figures(*grids)])

    st.subheader("The hint's path")
    try:
        swap = hint_swap(prompt)
    except WorkbenchError as e:
        st.info(str(e))
        return
    st.caption(f"Hint {swap.hint} swapped for {swap.swapped}, both followed by the true CoT and ' ans '. Metric: "
               f"logit({swap.good!r}) - logit({swap.bad!r}) at the answer position; each effect patches the "
               f"hint-{swap.hint} run into the hint-{swap.swapped} run, as the report's patching difference does "
               "over many pairs.")
    with st.spinner("patching the hint in both models"):
        paths = [guarded(path_of, spec, stamp, prompt) for spec, stamp in keyed]
    if None in paths:
        return
    m1, m2 = st.columns(2)
    m1.metric("Base: hint effect (logits)", f"{paths[0].total_effect:.2f}")
    ratio = (f"{paths[1].total_effect / paths[0].total_effect:.2f} x base" if abs(paths[0].total_effect) > 1e-9
             else "the base has no hint effect")
    m2.metric("Tuned: hint effect (logits)", f"{paths[1].total_effect:.2f}", ratio, delta_color="off")
    show_charts(hint_path_figures(*paths))


st.title("Alignment diff")
st.caption("A model before (base) and after (tuned) alignment: what changed, whether the hint mechanism was "
           "removed or bypassed, and one prompt through both.")
left, right = st.columns(2)
with left:
    base = pick_model(key="diff_base", label="Base model", default="adder-hint", shared_model=False)
with right:
    tuned, tuned_spec = pick_tuned()
pair = None
if base is not None and tuned is not None:
    problem = incompatibility(base, tuned)
    if problem:
        st.error(problem)
    else:
        pair = (picked_spec("diff_base"), tuned_spec)
        warned = guarded(pair_warning, *pair)
        if warned:
            st.warning(warned)
            st.session_state["diff_unrelated"] = warned
        else:
            st.session_state.pop("diff_unrelated", None)
report_tab, prompt_tab = st.tabs(["Diff report", "One prompt, both models"])
with report_tab:
    report_section(pair)
with prompt_tab:
    prompt_section(pair, base)
