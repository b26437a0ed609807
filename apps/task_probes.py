"""The Probes page for a model of another task family than addition (the word problems): a layer sweep of
each declared variable's digits at one read position, through the task adapter alone
(:mod:`probes.task_sweep`)."""

from __future__ import annotations

import numpy as np
import streamlit as st

from apps.common import guarded, load, model_stamp, noise_floor

READ_NAMES = {"prompt": "the prompt's last token (before anything is stated)",
              "cot": "the true reasoning's last token, where the answer is about to be written"}


@st.cache_data(show_spinner=False, max_entries=16)
def sweep(spec: str, stamp: int, task: str, read: str, n: int, seed: int = 3) -> list[dict]:
    from probes.faithfulness.adapter import adapter_for_task
    from probes.task_sweep import layer_sweep

    adapter = adapter_for_task(task)
    return layer_sweep(load(spec), adapter, adapter.problems(n, seed), read)


def sentence(row: dict) -> str:
    base = max(row["shuffled"], row["majority"])
    floor = noise_floor(row["n_test"])
    head = (f"{row['variable']} is read best at {row['layer']}: held-out accuracy {row['accuracy']:.2f}, against "
            f"{row['shuffled']:.2f} for the same probe on shuffled labels and {row['majority']:.2f} for guessing the "
            f"commonest digit (n = {row['n_test']} held out; noise floor {floor:.2f}). ")
    if row["accuracy"] - base <= floor:
        return head + "It is not decodable above the noise floor at this read position."
    return head + ("It is decodable here." if row["accuracy"] >= 0.9 else
                   "It is partly decodable here (above chance, well below certain).")


def figure(rows: list[dict], variables: list[str], layers: list[str]):
    from workbench.figures import heatmap_figure

    values = np.array([[next(r["accuracy"] for r in rows if r["variable"] == v and r["layer"] == layer)
                        for layer in layers] for v in variables])
    fig = heatmap_figure(values, variables, layers, "probe accuracy on held-out stories, per digit of each variable",
                         colorbar="accuracy")
    fig.update_traces(zmin=0, zmax=1, x=layers)
    fig.update_layout(xaxis_title="residual stream (entering block L, or after the last)",
                      yaxis_title="variable.digit")
    return fig


def show(model, spec: str, task: str) -> None:
    st.caption("This model's task declares its own variables (for the word problems: `stepK`, the running count "
               "after the K-th change; `.ones` / `.tens` its digits). Stories differ in token length, so each probe "
               "reads one position of every text, the last, at every layer: a ridge classifier per digit, with two "
               "baselines on the same split (shuffled labels: the noise floor; the commonest digit).")
    shown = [f"{k}: {v}" for k, v in READ_NAMES.items()]
    read = list(READ_NAMES)[shown.index(st.selectbox("Probe at", shown, key="tprobe_read"))]
    n = int(st.number_input("Stories", 100, 3000, 500, step=100, key="tprobe_n"))
    with st.spinner(f"probing every layer of {n} held-out stories"):
        rows = guarded(sweep, spec, model_stamp(spec), task, read, n)
    if not rows:
        if rows is not None:
            st.info("No declared variable varies across these problems: nothing to probe.")
        return
    variables = list(dict.fromkeys(r["variable"] for r in rows))
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    var = st.selectbox("Variable", variables, key="tprobe_var")
    from probes.task_sweep import best_layer

    st.markdown(sentence(best_layer(rows, var)))
    st.plotly_chart(figure(rows, variables, layers), width="stretch")
