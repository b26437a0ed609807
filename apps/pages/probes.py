"""Probes: where each task variable is linearly decodable (with a control task), and the causal check."""

import threading
import time

import numpy as np
import streamlit as st

from apps.common import guarded, model_stamp, noise_floor, pick_model, picked_spec, seed, shared, task_view
from probes.faithfulness.per_prompt import describe
from probes.causal import causal_check
from probes.study import TEXTS, probe_texts
from probes.sweep import best_site, collect_resid, matrix, probe_sweep
from workbench.errors import WorkbenchError
from workbench.figures import heatmap_figure
from workbench.tasks.parse import parse_prompt

TEXT_NAMES = {"prompt": "the prompt a+b= (before anything is written)", "direct": "the prompt and the direct answer",
              "cot": "the prompt and the true CoT up to ' ans ' (the answer not yet written)"}
# A first estimate of the causal check's time per held-out prompt (three greedy generations each), measured on the
# organisms on 2 CPU cores; replaced by the measured rate once a check has run.
SECONDS_PER_CHECKED_PROMPT = 0.11


@st.cache_resource(show_spinner=False, max_entries=8)
def activations(spec: str, stamp: int, text: str, digits: int, n: int):
    from apps.common import load

    problems, texts = probe_texts(digits, n, text)
    return problems, texts, collect_resid(load(spec), texts)


@st.cache_data(show_spinner=False, max_entries=16)
def sweep(spec: str, stamp: int, text: str, digits: int, n: int):
    problems, texts, stack = activations(spec, stamp, text, digits, n)
    return probe_sweep(stack, problems), texts[0]


@st.cache_resource(show_spinner=False)
def checks() -> dict:
    """Finished causal checks, by their inputs (filled from a worker thread, so not an st.cache_data function)."""
    return {}


def selectivity_colours(floor: float) -> list:
    """A diverging scale on [-1, 1] whose band within +-floor is grey: chance-level differences show no colour."""
    lo, hi = 0.5 - floor / 2, 0.5 + floor / 2
    return [[0.0, "#2166ac"], [lo, "#d1e5f0"], [lo, "#ececec"], [hi, "#ececec"], [hi, "#fddbc7"], [1.0, "#b2182b"]]


def figure(values, layers, tokens, var: str, field: str, metric: str, floor: float, majority: float, control: float):
    title = {"selectivity": f"{var}: selectivity (probe {metric} minus its control task's)",
             "score": f"{var}: probe {metric} on held-out prompts", "control": f"{var}: control task {metric}"}[field]
    fig = heatmap_figure(values, layers, tokens, title, colorbar=field)
    if field == "selectivity" or metric == "r2":
        ticks = [-1, -floor, 0, floor, 1] if field == "selectivity" else [-1, 0, 1]
        text = ["-1", f"-{floor:.2f}", "0", f"noise floor {floor:.2f}", "1"] if field == "selectivity" else None
        fig.update_traces(zmin=-1, zmax=1, colorscale=selectivity_colours(floor) if field == "selectivity" else "RdBu",
                          reversescale=field != "selectivity",
                          colorbar=dict(title=field, tickvals=ticks, ticktext=text))
    else:
        ticks = sorted({0.0, round(majority, 2), round(control, 2), 1.0})
        names = {round(majority, 2): f"majority guess {majority:.2f}", round(control, 2): f"control task {control:.2f}"}
        fig.update_traces(zmin=0, zmax=1, colorbar=dict(title=metric, tickvals=ticks,
                                                        ticktext=[names.get(t, f"{t:g}") for t in ticks]))
    fig.update_layout(xaxis_title="position:token of the probed text", yaxis_title="residual stream (entering block L)")
    return fig


def site_sentence(best: dict, var: str, floor: float) -> str:
    what = f"{var} ({describe(var)})"
    if best["metric"] == "r2":
        return (f"{what} is best predicted at {best['layer']}, position {best['position']} ({best['token']!r}): "
                f"R² {best['score']:.2f} against {best['control']:.2f} for shuffled answers.")
    if best["selectivity"] <= floor:
        return (f"{what} is not decodable above the noise floor anywhere on this text: the best selectivity is "
                f"{best['selectivity']:.2f} (noise floor {floor:.2f}).")
    return (f"{what} is decodable at {best['layer']}, position {best['position']} ({best['token']!r}): accuracy "
            f"{best['score']:.2f} against {best['control']:.2f} for its control task (selectivity "
            f"{best['selectivity']:.2f}, noise floor {floor:.2f}; guessing the commonest value: {best['majority']:.2f}).")


def check_sentence(check: dict, var: str) -> str:
    f, r = check["answer_follows_variable"], check["random_direction_changes_answer"]

    def ci(x):
        return f"{x['rate']:.1%} [{x['ci95'][0]:.1%}, {x['ci95'][1]:.1%}]"

    moved = check["probe_flipped"]
    verdict = ("the model uses it there" if f["ci95"][0] >= 0.5 else
               "the model does not use it there: the answer is computed elsewhere" if f["ci95"][1] < 0.5 else
               "whether the model uses it there is undecided")
    return (f"Pushing {var} to its next value along the probe at {check['layer']}, position {check['position']} "
            f"({check['token']!r}) flips the probe's reading {moved['rate']:.0%} of the time, and the answer follows "
            f"the pushed {var} {ci(f)} of the time (n = {check['n']}); a random push of the same length changes the "
            f"answer {ci(r)}: {verdict}.")


st.title("Probes")
model = pick_model(key="probe_model", default="adder-cot-posthoc")
task = task_view(picked_spec("probe_model")).name if model is not None else "addition"
if task != "addition":
    from apps import task_probes

    task_probes.show(model, picked_spec("probe_model"), task)
    st.stop()
head = parse_prompt(shared("prompt") or "")
same_width = head.problem is not None and len(str(head.problem.a)) == len(str(head.problem.b))
seed("probe_digits", len(str(head.problem.a)) if same_width else 3)  # the shared prompt's operand width
# Options are the words shown (no format_func): a choice reads back as what it says.
shown_texts = [f"{t}: {TEXT_NAMES[t]}" for t in TEXTS]
text = TEXTS[shown_texts.index(st.selectbox("Probe the", shown_texts, index=TEXTS.index("cot")))]
digits = st.number_input("Operand digits", 1, 5, key="probe_digits")
n = st.number_input("Prompts", 40, 5000, 500, step=100)
if model is not None:
    spec = picked_spec("probe_model")
    stamp = model_stamp(spec)
    with st.spinner(f"probing every layer and position of {int(n)} prompts"):
        result = guarded(sweep, spec, stamp, text, int(digits), int(n))
    if result is not None:
        rows, example = result
        variables = list(dict.fromkeys(r["variable"] for r in rows))
        named = [f"{v}: {describe(v)}" for v in variables]
        var = variables[named.index(st.selectbox("Variable", named, index=variables.index("ans0")
                                                 if "ans0" in variables else 0))]
        with st.expander("What the variable names mean"):
            st.markdown("Columns count from the ones column (0 = ones, 1 = tens, 2 = hundreds). "
                        + "; ".join(f"`{v}`: {describe(v)}" for v in variables) + ". Each has a control task "
                        "(Hewitt & Liang): a random function of the same column's digits, with the same class "
                        "frequencies; selectivity = probe accuracy minus the control's, so a probe that only memorises "
                        "its inputs scores 0.")
        field = st.radio("Show", ["selectivity", "score", "control"], horizontal=True)
        values, layers, positions = matrix(rows, var, field)
        tokens = model.to_str_tokens(example)
        best = best_site(rows, var)
        floor = noise_floor(best["n_test"])
        controls = [r["control"] for r in rows if r["variable"] == var]
        st.markdown(site_sentence(best, var, floor))
        st.plotly_chart(figure(values, layers, [tokens[p] for p in positions], var, field, best["metric"], floor,
                               best["majority"], float(np.median(controls))), width="stretch")
        st.caption(f"Held-out prompts: {best['n_test']} of {best['n_train'] + best['n_test']}. Noise floor: the 95% "
                   "half-width of a difference of two accuracies at that size; selectivities inside it are grey.")
        if var == "answer":
            st.caption("The whole sum is a regression target: there is no class to push it to, so no causal check.")
        else:
            key = (spec, stamp, text, int(digits), int(n), var, best["layer_index"], best["position"])
            store = checks()
            if st.button("Run the causal check at this site") or st.session_state.get("probe_checked") == key:
                if key not in store:
                    problems, texts, stack = activations(spec, stamp, text, int(digits), int(n))
                    n_test = best["n_test"]
                    rate = st.session_state.get("probe_rate", SECONDS_PER_CHECKED_PROMPT)
                    expected = max(rate * n_test, 1.0)
                    box: dict = {}

                    def work():
                        try:
                            box["value"] = causal_check(model, stack, texts, problems, var, best["layer_index"],
                                                        best["position"])
                        except (WorkbenchError, ValueError) as e:
                            box["error"] = str(e)

                    worker = threading.Thread(target=work, daemon=True)
                    t0 = time.perf_counter()
                    worker.start()
                    bar = st.progress(0.0, text="starting the causal check")
                    while worker.is_alive():
                        spent = time.perf_counter() - t0
                        bar.progress(min(spent / expected, 0.97), text=f"pushing {var} along its probe on {n_test} "
                                     f"held-out prompts and generating their answers: {spent:.0f} s of about "
                                     f"{expected:.0f} s")
                        worker.join(0.25)
                    bar.empty()
                    if "error" in box:
                        st.error(box["error"])
                    else:
                        store[key] = box["value"]
                        st.session_state["probe_rate"] = (time.perf_counter() - t0) / max(n_test, 1)
                if key in store:
                    st.session_state["probe_checked"] = key
                    check = store[key]
                    st.markdown(check_sentence(check, var))
                    table = {name: check[name] for name in ("probe_flipped", "answer_follows_variable",
                                                            "answer_unchanged", "answer_other",
                                                            "random_direction_changes_answer",
                                                            "random_direction_follows_variable")}
                    st.dataframe([{"outcome": k.replace("_", " "), "rate": v["rate"],
                                   "95% interval": f"[{v['ci95'][0]:.3f}, {v['ci95'][1]:.3f}]", "n": v["n"]}
                                  for k, v in table.items()], hide_index=True, width="stretch")
                    if check.get("examples"):
                        with st.expander("Examples (clean answer, the answer the push predicts, the answer after it)"):
                            st.dataframe(check["examples"], hide_index=True, width="stretch")
            else:
                st.caption(f"The check generates the answers of the {best['n_test']} held-out prompts three times "
                           "(clean, pushed along the probe, pushed in a random direction): seconds to a minute; it "
                           "shows its progress and is kept for the session.")
