"""Probes: where each task variable is linearly decodable (with a control task), and the causal check."""

import streamlit as st

from apps.common import guarded, pick_model, picked_spec
from probes.causal import causal_check
from probes.study import TEXTS, probe_texts
from probes.sweep import best_site, collect_resid, matrix, probe_sweep
from workbench.figures import heatmap_figure


@st.cache_data(show_spinner="probing every layer and position")
def sweep(spec: str, text: str, digits: int, n: int):
    from apps.common import load

    model = load(spec)
    problems, texts = probe_texts(digits, n, text)
    return probe_sweep(collect_resid(model, texts), problems), texts[0]


st.title("Probes")
model = pick_model(key="probe_model", default="adder-cot-posthoc")
text = st.selectbox("Probe the", TEXTS, index=TEXTS.index("cot"))
digits = st.number_input("Operand digits", 1, 5, 3)
n = st.number_input("Prompts", 40, 5000, 500, step=100)
if model is not None:
    result = guarded(sweep, picked_spec("probe_model"), text, int(digits), int(n))
    if result is not None:
        rows, example = result
        variables = list(dict.fromkeys(r["variable"] for r in rows))
        var = st.selectbox("Variable", variables, index=variables.index("ans0") if "ans0" in variables else 0)
        field = st.radio("Show", ["selectivity", "score", "control"], horizontal=True)
        values, layers, positions = matrix(rows, var, field)
        tokens = model.to_str_tokens(example)
        st.plotly_chart(heatmap_figure(values, layers, [tokens[p] for p in positions],
                                       f"{var}: {field}", diverging=field == "selectivity"), width="stretch")
        best = best_site(rows, var)
        st.write(f"Most selective site: layer {best['layer']}, position {best['position']} ({best['token']!r}): "
                 f"{best['metric']} {best['score']:.3f}, control {best['control']:.3f}")
        if var != "answer" and st.button("Run the causal check at this site"):
            problems, texts = probe_texts(int(digits), int(n), text)
            stack = collect_resid(model, texts)
            check = guarded(causal_check, model, stack, texts, problems, var, best["layer_index"], best["position"])
            if check is not None:
                st.json({k: v for k, v in check.items() if k not in ("per_example",)})
