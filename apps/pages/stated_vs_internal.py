"""Stated vs internal: one prompt, one model. What the model states, token by token, each stated value marked by
what its internals say (true? represented before it is stated? used when intervened on?), where each answer digit
is computed from, and the verdict of a faithfulness study with its evidence and intervals."""

import html
from pathlib import Path

import pandas as pd
import streamlit as st

from apps.common import (
    DEFAULT_PROMPT,
    budget,
    completion_of,
    exists,
    guarded,
    is_file,
    load,
    model_stamp,
    pick_model,
    picked_spec,
    prompt_input,
    shorten,
    task_view,
    valid_text,
    visible,
)
from probes.faithfulness.per_prompt import (
    REFERENCE_N,
    describe,
    digit_sources,
    mark_claims,
    marks_sentence,
    read_stated,
    reference_problems,
    shape_of,
    sources_sentence,
)
from probes.faithfulness.reference_store import reference_root, stored_reference
from apps.verdict_view import get, interval, read_study, show_study
from workbench.errors import WorkbenchError
from workbench.models.zoo import RECIPES, task_of
from workbench.tasks import formats
from workbench.tasks.parse import parse_prompt

QUICK_N = 100
QUICK_TESTS = ("early", "mistakes", "hint", "claims")
YES, NO, NA = "✓", "✗", "–"


def _run(spec: str, stamp: int, prompt: str) -> tuple[str, str]:
    """The prompt and the model's reasoning up to where its answer starts, and the answer it writes."""
    model = load(spec)
    completion = completion_of(spec, stamp, prompt, budget(model, prompt))
    head, mark, tail = completion.partition(formats.ANSWER_MARK)
    if mark:
        return prompt + head + mark, tail.strip()
    return prompt, completion.strip()


@st.cache_data(show_spinner=False, max_entries=256)
def stated_of(spec: str, stamp: int, prompt: str):
    model = load(spec)
    completion = completion_of(spec, stamp, prompt, budget(model, prompt))
    explanation = None
    if formats.ANSWER_MARK not in completion and not completion.startswith(" "):
        why = prompt + formats.WHY_MARK
        explanation = completion_of(spec, stamp, why, budget(model, why)) if budget(model, why) > 0 else ""
    return read_stated(prompt, completion, explanation)


@st.cache_data(show_spinner=False, max_entries=64)
def reference_list(shape: tuple[int, int], n: int) -> list:
    return reference_problems(shape, n, None)


@st.cache_resource(show_spinner=False, max_entries=8)
def reference_for(spec: str, stamp: int, shape: tuple[int, int], source: str, exclude):
    # Kept on disk too (keyed by the weights, the code and these arguments): a restarted explorer reads it back.
    return stored_reference(load(spec), shape, source, exclude, reference_root(), REFERENCE_N)


@st.cache_data(show_spinner=False, max_entries=256)
def marked(spec: str, stamp: int, prompt: str):
    model = load(spec)
    stated = stated_of(spec, stamp, prompt)
    if stated.source is None or not stated.values:
        return stated, "the model states no value to check on this prompt"
    shape = shape_of(stated.problem)
    try:
        problems = reference_list(shape, REFERENCE_N)
    except WorkbenchError as e:  # too few held-out problems of this shape: the marks are not measured
        return stated, f"{e}"
    exclude = stated.problem if stated.problem in problems else None  # never probe with a probe trained on it
    ref = reference_for(spec, stamp, shape, stated.source, exclude)
    mark_claims(model, stated, ref)
    return stated, ref.claims


@st.cache_data(show_spinner=False, max_entries=256)
def sources_of(spec: str, stamp: int, prompt: str):
    stated = stated_of(spec, stamp, prompt)
    return digit_sources(load(spec), stated, lambda p: _run(spec, stamp, p))


@st.cache_data(show_spinner=False, max_entries=8)
def quick_study(spec: str, stamp: int) -> dict:
    from probes.faithfulness.suite import run_suite

    from probes.faithfulness.adapter import adapter_for_task
    from workbench.models.zoo import task_of

    summary, _ = run_suite(load(spec), adapter_for_task(task_of(spec)), n=QUICK_N, tests=QUICK_TESTS,
                           claims_n=QUICK_N)
    return summary


def strip(stated) -> str:
    """The stated text token by token (one box a character for the organisms; '␣' a space), each stated value
    coloured by its marks: green true and used, amber true but not used, red false; hover for the marks."""
    marks = {}
    for v in stated.values:
        if v.span is None:
            continue
        if not v.is_true:
            colour = "#f4a6a6"
        elif v.used is False:
            colour = "#ffd27f"
        elif v.used:
            colour = "#9fdf9f"
        else:
            colour = "#dddddd"
        tip = (f"{v.var} ({describe(v.var)}): stated {v.stated}, true {v.true}; represented before stated: "
               f"{_word(v.represented)}; used: {_word(v.used)}")
        for i in range(*v.span):
            marks[i] = (colour, tip)
    out = []
    for i, ch in enumerate(stated.text):
        colour, tip = marks.get(i, ("#f3f3f3", ""))
        bold = "font-weight:bold;" if i in marks else ""
        out.append(f'<span title="{html.escape(tip)}" style="background:{colour};{bold}border:1px solid #ccc;'
                   f'border-radius:3px;padding:2px 3px;margin:1px;font-family:monospace;font-size:1.05em;'
                   f'white-space:pre">{html.escape(visible(ch))}</span>')
    return "".join(out)


def _word(x) -> str:
    return "yes" if x else "no" if x is not None else "not measured"


def _mark(x) -> str:
    return YES if x else NO if x is not None else NA


def values_table(stated, population: dict) -> pd.DataFrame:
    by_var = get(population, "by_variable", default={}) if isinstance(population, dict) else {}
    rows = []
    for v in stated.values:
        pop = by_var.get(v.var) if isinstance(by_var, dict) else None
        rows.append({
            "step": f"{v.step_text}",
            "value": f"{v.var}: {describe(v.var)}",
            "stated": v.stated,
            "true?": f"{_mark(v.is_true)} (true {v.true})",
            "represented before stated?": _mark(v.represented) + (f" (probe at {v.probe_site} reads {v.probe_reads})"
                                                                  if v.probe_reads is not None else ""),
            "used when intervened on?": _mark(v.used) + (f" ({v.used_detail})" if v.used_detail else
                                                         f" ({v.why_not_measured})" if v.why_not_measured else ""),
            f"used, over held-out problems": interval(get(pop, "used")) if pop else "not measured",
        })
    return pd.DataFrame(rows)


def sources_figure(rows: list[dict]):
    import plotly.graph_objects as go

    groups = ["the CoT", "all operand digits", "own column's operand digits", "lower columns' operand digits",
              "the hint"]
    colours = {"the CoT": "#2ca02c", "all operand digits": "#1f77b4", "own column's operand digits": "#6baed6",
               "lower columns' operand digits": "#c6dbef", "the hint": "#d62728"}
    fig = go.Figure()
    xs = [f"{r['digit']} ({r['column']})" for r in rows if "counterpart" in r]
    for g in groups:
        ys = [r.get(g) for r in rows if "counterpart" in r]
        if any(y is not None for y in ys):
            fig.add_trace(go.Bar(name=g, x=xs, y=ys, marker_color=colours[g],
                                 hovertemplate="%{x}: %{y:.0%} restored<extra>" + g + "</extra>"))
    fig.add_hline(y=1.0, line_dash="dot", line_color="#888")
    fig.update_layout(barmode="group", title="Share of each answer digit's logit difference restored by patching "
                      "one group of clean tokens", xaxis_title="answer digit (column)",
                      yaxis_title="share restored (1 = all)", yaxis_tickformat=".0%", height=360,
                      legend=dict(orientation="h", y=-0.3))
    return fig


def default_study(spec: str) -> str:
    return f"runs/demo/{spec}/summary.json" if spec in RECIPES else str(Path(spec) / "summary.json")


st.title("Stated vs internal")
st.caption("One prompt, one model: what it states, set beside what its internals hold and use. Each stated value is "
           "checked against the column algorithm (true?), against a linear probe read on the prompt before anything "
           "is stated (represented?), and by an intervention (used?): a CoT value is edited and the model continues; "
           "an explanation's value is pushed inside the model.")
left, right = st.columns([1, 2])
with left:
    model = pick_model(key="svi_model", default="adder-cot-posthoc")
spec = picked_spec("svi_model")
story = model is not None and task_of(spec) == "wordproblems"
with right:
    if story:  # a story, and its hint on a line of its own: a text area
        from apps import story_view

        prompt = prompt_input("Story (optionally after a hint line)", story_view.DEFAULT_STORY, key="svi_story",
                              view=task_view(spec))
    else:
        prompt = prompt_input("Prompt (a+b=, or hint:H a+b=)", DEFAULT_PROMPT, key="svi_prompt")

stated = population = None
if story and valid_text(model, prompt):
    guarded(story_view.show, model, spec, model_stamp(spec), prompt)
elif model is not None and valid_text(model, prompt):
    parsed = parse_prompt(prompt)
    if parsed.problem is None or parsed.rest:
        st.info("This page reads one addition problem: type 'a+b=' (e.g. 478+256=), optionally after 'hint:H '.")
    elif budget(model, prompt) < 1:
        st.error(f"{shorten(prompt)} leaves no room in the model's {model.cfg.n_ctx}-token context to answer.")
    else:
        stamp = model_stamp(spec)
        with st.spinner("generating what the model states"):
            stated = guarded(stated_of, spec, stamp, prompt)

if stated is not None:
    problem = stated.problem
    shape = shape_of(problem)
    with st.spinner(f"measuring the probes and interventions on {REFERENCE_N} held-out {shape[0]}+{shape[1]}-digit "
                    "problems (once per model and operand widths; a few seconds), then this prompt"):
        got = guarded(marked, spec, stamp, prompt)
    if got is not None:
        stated, population = got
    if isinstance(population, str):
        st.info(f"Represented and used are not measured here: {population}.")
        population = None

    right_mark = {True: f":green[{YES} right]", False: f":red[{NO} wrong, the true sum is {problem.total}]",
                  None: ""}[stated.answer_right]
    hinted = f" (the hint was {stated.hint})" if stated.hint is not None else ""
    m = st.columns(4)
    m[0].metric("Answer", "none" if stated.answer is None else str(stated.answer))
    vals = stated.values
    rep = [v.represented for v in vals if v.represented is not None]
    used = [v.used for v in vals if v.used is not None]
    m[1].metric("Stated values true", f"{sum(v.is_true for v in vals)} of {len(vals)}")
    m[2].metric("Represented before stated", f"{sum(rep)} of {len(rep)}" if rep else "not measured")
    m[3].metric("Used when intervened on", f"{sum(used)} of {len(used)}" if used else "not measured")
    st.markdown(f"**{prompt} {stated.answer if stated.answer is not None else '(no answer)'}** {right_mark}{hinted}. "
                + marks_sentence(stated))

    st.subheader("What it states")
    if stated.source is None:
        st.write(f"It answers without stating any reasoning ({stated.malformed}).")
    else:
        if stated.source == "explanation":
            st.caption("It answers at once; asked 'why?' it explains. The explanation is not in the answer's "
                       "context, so its values are tested by pushing the model's activations, not by editing text.")
        if stated.malformed:
            st.caption(f"Parsed up to where it departs from the format: {stated.malformed}.")
        st.markdown(strip(stated), unsafe_allow_html=True)
        st.caption("Stated values: green true and used, amber true but not used by the answer, red false, grey not "
                   "measured; hover a value for its marks.")
        if vals:
            st.dataframe(values_table(stated, population), hide_index=True, width="stretch")
            site_note = "probed on the prompt without the hint; " if stated.hint is not None else ""
            st.caption(f"Represented: {site_note}the claims test's probe for each value, at the layer and position it "
                       "chooses on training prompts, read on this prompt's 'a+b=' (before the model writes anything). "
                       "Used: "
                       + ("the written value changed (a result digit one up, a carry flipped), the model continues "
                          "from there; used if its answer moves by what the value is worth."
                          if stated.source == "cot" else
                          "the activation at the claims test's push site moved from this value's class mean to the "
                          "next class's; used if the answer moves by what the value is worth.")
                       + (f" The last column: the claims test's rate over {get(population, 'n_problems')} held-out "
                          "problems of this shape" + (" (without a hint)." if stated.hint is not None else ".")
                          if population else ""))

    st.subheader("Where each answer digit is computed from")
    with st.spinner("patching each answer digit's sources"):
        rows = guarded(sources_of, spec, stamp, prompt) or []
    st.write(sources_sentence(rows, stated.source))
    if any("counterpart" in r for r in rows):
        st.plotly_chart(sources_figure(rows), width="stretch")
        st.caption("Each digit's text (the prompt, the reasoning, the digits before it) against the same text of a "
                   "counterpart problem of these widths whose digit differs; the clean tokens of one group are "
                   "patched into the counterpart's run (token and position embeddings). Share restored = "
                   "(patched - counterpart) / (clean - counterpart) of logit(digit) - logit(counterpart's digit).")
        skipped = [r for r in rows if "why" in r]
        if skipped:
            st.caption("Not measured: " + "; ".join(f"{r['digit']} ({r['column']}): {r['why']}" for r in skipped))

study = None
if model is not None:
    st.caption("The verdict of a faithfulness study of this model, with the evidence it rests on:")
    path = st.text_input("A saved study (summary.json of `workbench faithfulness ... --out DIR` or `workbench demo`)",
                         default_study(spec), key=f"svi_study:{spec}").strip()
    if path and is_file(path):
        try:
            study = read_study(path)
        except ValueError as e:
            st.error(f"{shorten(path)} is not a faithfulness summary ({e}): give the summary.json that "
                     "`workbench faithfulness` or `workbench demo` wrote")
    elif path and exists(path):
        st.error(f"{shorten(path)} is not a file: give the summary.json that `workbench faithfulness` or "
                 "`workbench demo` wrote")
    else:
        st.info(f"No saved study at {shorten(path) or '(empty)'}; `workbench demo` writes one per organism under "
                "runs/demo. Or run a quick one here.")
    key = (spec, model_stamp(spec))
    if study is None and (st.button(f"Run a quick study ({QUICK_N} problems: {', '.join(QUICK_TESTS)})")
                          or st.session_state.get("svi_quick") == key):
        with st.spinner(f"running the faithfulness suite on {QUICK_N} problems (about 10 s the first time)"):
            study = guarded(quick_study, *key)
        if study is not None:
            st.session_state["svi_quick"] = key
            st.caption(f"A quick study of {QUICK_N} problems (the reference is `workbench faithfulness` on 1000).")
if study is not None:
    truth = study.get("ground_truth")
    show_study(study, truth)
