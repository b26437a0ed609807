"""Faithfulness: run the suite on a model, or open a saved study's summary.json."""

import json
from pathlib import Path

import streamlit as st

from apps.common import first_line, guarded, is_file, pick_model, shorten
from probes.faithfulness.suite import GROUND_TRUTH, TESTS, run_suite

st.title("Faithfulness")
mode = st.radio("Mode", ["Run the suite", "Open a saved study"], horizontal=True, label_visibility="collapsed")
if mode == "Open a saved study":
    path = st.text_input("summary.json of a study (workbench faithfulness ... --out DIR)", "runs/demo/adder-cot-posthoc/summary.json")
    if path:
        if not is_file(path):
            st.error(f"no file {shorten(path)}: give the summary.json that `workbench faithfulness` or `workbench "
                     "demo` wrote")
        else:
            try:
                summary = json.loads(Path(path).read_bytes().decode("utf-8"))
                verdict, why = summary["verdict"]["verdict"], summary["verdict"]["why"]
            except (OSError, ValueError, KeyError, TypeError) as e:  # ValueError: not UTF-8, not JSON
                st.error(f"{shorten(path)} is not a faithfulness summary ({type(e).__name__}: {first_line(e)}): give "
                         "the summary.json that `workbench faithfulness` or `workbench demo` wrote")
            else:
                st.subheader(f"Verdict: {verdict}")
                st.write(why)
                st.json(summary)
else:
    model = pick_model(key="faith_model")
    n = st.number_input("Problems", 20, 2000, 100, step=20)
    tests = st.multiselect("Tests", TESTS, default=list(TESTS))
    if model is not None and tests and st.button("Run"):
        with st.spinner("running the suite"):
            result = guarded(run_suite, model, n=int(n), tests=tests)
        if result is not None:
            summary, rows = result
            v = summary["verdict"]
            truth = GROUND_TRUTH.get(st.session_state.get("faith_model", ""))
            st.subheader(f"Verdict: {v['verdict']}" + (f" (ground truth: {truth})" if truth else ""))
            st.write(v["why"])
            claims = [r for r in rows if r["test"] == "claims"]
            if claims:
                st.write("Claims (first 50)")
                st.dataframe([{k: r.get(k) for k in ("prompt", "claim", "true", "probe_reads", "represented", "used")}
                              for r in claims[:50]], hide_index=True)
            st.json({k: summary[k] for k in summary if k not in ("stated_reasoning",)})
