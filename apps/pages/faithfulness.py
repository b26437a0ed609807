"""Faithfulness: run the suite on a model, or open a saved study's summary.json: the verdict, the evidence it
rests on with intervals, the early-answering and adding-mistakes curves, and the claims."""

import time

import pandas as pd
import streamlit as st

from apps.common import guarded, is_file, model_stamp, pick_model, picked_spec, shorten
from apps.verdict_view import NOT_MEASURED, read_study, show_study
from probes.faithfulness.suite import GROUND_TRUTH, TESTS, run_suite

SAVED = "Open a saved study"


def claim_rows(rows: list[dict], limit: int = 200) -> pd.DataFrame:
    """Per-claim rows with every column filled: represented is measured on held-out prompts only, and says so
    on the prompts the probe was trained on."""
    def word(x, why):
        return "yes" if x is True else "no" if x is False else why

    out = []
    for r in rows[:limit]:
        held_out = r.get("probe_reads") is not None
        out.append({"prompt": r.get("prompt"), "claim": r.get("claim"), "kind": r.get("kind", ""),
                    "true value": r.get("true"), "claim true": word(r.get("claim_true"), NOT_MEASURED),
                    "probe reads": r.get("probe_reads") if held_out else "-",
                    "represented": word(r.get("represented"), NOT_MEASURED if held_out else
                                        "- (the probe was trained on this prompt)"),
                    "used": word(r.get("used"), NOT_MEASURED), "site": r.get("site", "")})
    return pd.DataFrame(out)


@st.cache_data(show_spinner=False, max_entries=8)
def suite(spec: str, stamp: int, n: int, tests: tuple, _progress=None):
    from apps.common import load

    t0 = time.perf_counter()
    from probes.faithfulness.adapter import adapter_for_task
    from workbench.models.zoo import task_of

    summary, rows = run_suite(load(spec), adapter_for_task(task_of(spec)), n=n, tests=list(tests),
                              progress=_progress)
    return summary, rows, time.perf_counter() - t0


st.title("Faithfulness")
mode = st.radio("Mode", ["Run the suite", SAVED], horizontal=True, label_visibility="collapsed")
if mode == SAVED:
    path = st.text_input("summary.json of a study (workbench faithfulness ... --out DIR)",
                         "runs/demo/adder-cot-posthoc/summary.json")
    if path:
        if not is_file(path):
            st.error(f"no file {shorten(path)}: give the summary.json that `workbench faithfulness` or `workbench "
                     "demo` wrote")
        else:
            try:
                summary = read_study(path)
            except ValueError as e:
                st.error(f"{shorten(path)} is not a faithfulness summary ({e}): give the summary.json that "
                         "`workbench faithfulness` or `workbench demo` wrote")
            else:
                show_study(summary, summary.get("ground_truth"))
                example = (summary.get("stated_reasoning") or {}).get("example") if isinstance(
                    summary.get("stated_reasoning"), dict) else None
                if example:
                    st.caption(f"What it states, e.g.: {example}")
else:
    model = pick_model(key="faith_model")
    n = st.number_input("Problems", 20, 2000, 100, step=20)
    tests = st.multiselect("Tests", TESTS, default=list(TESTS))
    spec = picked_spec("faith_model")
    key = (spec, model_stamp(spec) if model is not None else 0, int(n), tuple(tests))
    if model is not None and tests and (st.button("Run") or st.session_state.get("faith_ran") == key):
        steps = ["generating"] + list(tests)
        bar = st.progress(0.0, text="starting the suite")
        seen: list[str] = []

        def progress(msg: str) -> None:
            seen.append(msg)
            bar.progress(min(len(seen) / (len(steps) + 1), 0.99), text=f"{msg} ({len(seen)} of {len(steps)})")

        result = guarded(suite, *key, _progress=progress)
        bar.empty()
        if result is not None:
            st.session_state["faith_ran"] = key
            summary, rows, seconds = result
            truth = GROUND_TRUTH.get(spec or "")
            st.caption(f"{int(n)} problems, tests {', '.join(tests)}: {seconds:.1f} s (kept for the session).")
            show_study(summary, truth)
            claims = [r for r in rows if r.get("test") == "claims"]
            if claims:
                held_out = sum(r.get("probe_reads") is not None for r in claims)
                st.markdown(f"**Claims, one row per stated value** ({len(claims)} claims; represented is read on the "
                            f"{held_out} held-out ones)")
                st.dataframe(claim_rows(claims), hide_index=True, width="stretch", height=300)
