"""Alignment diff: a base and a tuned model (adder-hint before and after `workbench align`): the diff report's
figures and verdict, and one prompt through both side by side (the answer, the logit lens, the hint's path)."""

import pandas as pd
import streamlit as st

from apps.common import (
    LOCAL,
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
    st.caption(f"{LIGHT_PROMPTS} prompts for KL and the residual stream, {LIGHT_CONFIG.n_probe} for the probes and "
               f"{LIGHT_CONFIG.n_pairs} hint-swap pairs (the study uses 500 and 64): a few seconds for two organisms. "
               "Written once per pair of weights to a cache directory.")
    key = (pair[0], stamp_of(pair[0]), pair[1], stamp_of(pair[1]))
    if st.button("Compute the diff") or st.session_state.get("diff_computed") == key:
        with st.spinner("diffing: weights, KL, residual stream, probe transfer, hint-swap patching"):
            out = guarded(computed_diff, *key)
        if out is not None:
            st.session_state["diff_computed"] = key  # later reruns keep showing it
            st.caption(f"Written to {out}; its report.html holds every figure in one page.")
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
    base = pick_model(key="diff_base", label="Base model", default="adder-hint")
with right:
    tuned, tuned_spec = pick_tuned()
pair = None
if base is not None and tuned is not None:
    problem = incompatibility(base, tuned)
    if problem:
        st.error(problem)
    else:
        pair = (picked_spec("diff_base"), tuned_spec)
report_tab, prompt_tab = st.tabs(["Diff report", "One prompt, both models"])
with report_tab:
    report_section(pair)
with prompt_tab:
    prompt_section(pair, base)
