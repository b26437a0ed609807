"""A faithfulness study's verdict as the explorer shows it: the label and the sentence it rests on, the deciding
rates with their intervals against the threshold, the CoT dependence by step, the early-answering and
adding-mistakes curves, and the claims by stated value. Used by the "Stated vs internal" and "Faithfulness" pages.

Every field is read defensively: a study saved by another version of the suite (a field missing, renamed or
null) shows "not measured" where that field would be, never an exception.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import streamlit as st

NOT_MEASURED = "not measured"


def get(d, *keys, default=None):
    """``d[k1][k2]...``, or ``default`` where a level is missing, null or not a mapping."""
    for k in keys:
        if not isinstance(d, dict) or d.get(k) is None:
            return default
        d = d[k]
    return d


def interval(r) -> str:
    """``0.93 [0.90, 0.95] (n=300)`` for a rate dict, "not measured" when there is none."""
    if not isinstance(r, dict) or r.get("rate") is None:
        return NOT_MEASURED
    ci = r.get("ci95")
    n = f" (n={r['n']})" if r.get("n") is not None else ""
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and None not in ci:
        return f"{r['rate']:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]{n}"
    return f"{r['rate']:.2f}{n}"


SIDES = {"above": "above the threshold", "below": "below the threshold", "straddles": "spans the threshold"}


def read_study(path: str) -> dict:
    """A saved ``summary.json`` in the current schema (an older one migrated by the suite's reader when it has
    one); raises ValueError with the reason when the file is not a faithfulness summary."""
    try:
        summary = json.loads(Path(path).read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{type(e).__name__}: {e}") from None
    if not isinstance(summary, dict) or not isinstance(summary.get("verdict"), dict) \
            or not summary["verdict"].get("verdict"):
        raise ValueError("no verdict in it")
    try:
        from probes.faithfulness.suite import read_summary
    except ImportError:  # a suite without the reader: show the study as saved
        return summary
    try:
        return read_summary(summary)
    except Exception:  # noqa: BLE001 - a reader of another schema: the study as saved is still worth showing
        return summary


def verdict_header(summary: dict, truth: str | None = None, heading=st.subheader) -> None:
    v = summary.get("verdict") or {}
    label = v.get("verdict", NOT_MEASURED)
    truth = truth or summary.get("ground_truth")
    heading(f"Verdict: {label}" + (f" (planted truth: {truth})" if truth else ""))
    if v.get("why"):
        st.write(v["why"][0].upper() + v["why"][1:] + ("" if v["why"].endswith(".") else "."))
    if v.get("where") and v.get("where") not in v.get("why", ""):
        st.write(f"Where: {v['where']}")
    margin = v.get("margin")
    comp = v.get("competence") or {}
    notes = []
    if margin is not None:
        notes.append(f"the deciding intervals clear the threshold {v.get('threshold', '')} by at least {margin:.2f}")
    if comp.get("accuracy"):
        notes.append(f"task accuracy {interval(comp['accuracy'])} (competence floor {comp.get('floor', '')})")
    if v.get("rule"):
        notes.append(f"rule: {v['rule']}")
    if notes:
        st.caption("; ".join(notes) + ".")


def deciding_table(summary: dict) -> None:
    deciding = get(summary, "verdict", "deciding", default=[])
    if not isinstance(deciding, list) or not deciding:
        st.caption("No deciding rates recorded in this study.")
        return
    rows = [{"evidence": d.get("name", ""), "rate [95% interval] (n)": interval(d),
             "against the threshold": f"{SIDES.get(d.get('side'), d.get('side') or NOT_MEASURED)} "
                                      f"{d.get('threshold', '')}".strip()}
            for d in deciding if isinstance(d, dict)]
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")


def cross_check_table(summary: dict) -> pd.DataFrame | None:
    """Each step's two estimates of how much the answer rests on it: breaking it (adding mistakes) and resampling
    it (counterfactual importance), and whether they agree; None when the study did not resample."""
    cc = get(summary, "verdict", "localisation", "cross_check", default={})
    if not isinstance(cc, dict) or not cc.get("ran") or not isinstance(cc.get("by_step"), dict):
        return None
    word = {True: "yes", False: "NO", None: "undecided"}
    return pd.DataFrame([{"step": name, "breaking it changes the answer": interval(x.get("broken")),
                          "resampling it (importance)": interval(x.get("resampled")),
                          "agree": word.get(x.get("agree"), "undecided")}
                         for name, x in cc["by_step"].items() if isinstance(x, dict)])


def curves_figure(summary: dict):
    """Early answering and adding mistakes: the share of answers unchanged against how much of the CoT is kept
    (early answering) or where the mistake is put (adding mistakes), with 95% intervals; None without curves."""
    import plotly.graph_objects as go

    fig = go.Figure()
    names = {"early": "early answering: CoT cut after this fraction", "mistakes": "adding mistakes: a step broken at "
             "this fraction"}
    for test, colour in (("early", "#1f77b4"), ("mistakes", "#d62728")):
        points = get(summary, test, "curve", default=[])
        if not isinstance(points, list):
            continue
        points = [p for p in points if isinstance(p, dict) and p.get("rate") is not None and "fraction" in p]
        if not points:
            continue
        xs = [p["fraction"] for p in points]
        ys = [p["rate"] for p in points]
        lo = [y - p["ci95"][0] if isinstance(p.get("ci95"), (list, tuple)) else 0 for y, p in zip(ys, points)]
        hi = [p["ci95"][1] - y if isinstance(p.get("ci95"), (list, tuple)) else 0 for y, p in zip(ys, points)]
        aoc = get(summary, test, "aoc")
        label = names[test] + (f" (AOC {aoc:.2f})" if isinstance(aoc, (int, float)) else "")
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", name=label, line=dict(color=colour),
                                 error_y=dict(type="data", symmetric=False, array=hi, arrayminus=lo)))
    if not fig.data:
        return None
    fig.add_hline(y=1.0, line_dash="dot", line_color="#888", annotation_text="a CoT the answer ignores",
                  annotation_position="bottom right")
    fig.update_layout(title="Same answer as with the whole CoT", xaxis_title="fraction of the CoT before the cut or "
                      "the mistake", yaxis_title="share of answers unchanged", yaxis_range=[-0.02, 1.08],
                      xaxis_range=[-0.02, 1.0], height=380, legend=dict(orientation="h", y=-0.25))
    return fig


def curves_sentence(summary: dict) -> str | None:
    mis = get(summary, "mistakes", "answer_changed")
    aoc = get(summary, "early", "aoc")
    parts = []
    if isinstance(mis, dict) and mis.get("rate") is not None:
        parts.append(f"a broken step changes the answer {mis['rate']:.0%} of the time ({interval(mis)})")
    if isinstance(aoc, (int, float)):
        parts.append(f"cutting the CoT short changes it with an area over the curve of {aoc:.2f} (0: never, 1: always)")
    if not parts:
        return None
    text = "; ".join(parts)
    return text[0].upper() + text[1:] + "."


def claims_table(summary: dict) -> pd.DataFrame | None:
    """One row per stated value: its role and the rates (true, represented, used) with intervals."""
    by_var = get(summary, "claims", "by_variable", default={})
    if not isinstance(by_var, dict) or not by_var:
        return None
    rows = []
    for var, d in by_var.items():
        d = d if isinstance(d, dict) else {}
        push = d.get("push") if isinstance(d.get("push"), dict) else {}
        rows.append({"value": var, "role": d.get("role") or NOT_MEASURED,
                     "true": interval(d.get("claim_true")), "represented before stated": interval(d.get("represented")),
                     "used when intervened on": interval(d.get("used")),
                     "status": d.get("status") or "", "probe site": d.get("probe_site") or NOT_MEASURED,
                     "push site": (f"{push.get('layer')}@{push.get('position')}:{push.get('token')!r}"
                                   if push.get("supported") else "")})
    return pd.DataFrame(rows)


def hint_kinds_table(summary: dict) -> pd.DataFrame | None:
    """One row per hint kind the study tested (a task that declares several): how often a wrong hint of that
    kind becomes the answer, by chance, and how often the reasoning acknowledges it."""
    by_kind = get(summary, "hint", "by_kind", default={})
    if not isinstance(by_kind, dict) or not by_kind:
        return None
    rows = [{"hint kind": k, "wrong hint becomes the answer": interval(get(d, "switch_to_hint")),
             "by chance (another wrong hint)": interval(get(d, "switch_by_chance")),
             "reasoning mentions it": interval(get(d, "verbalised_any")),
             "read by the verdict": "yes" if k == get(summary, "hint", "kind") else ""}
            for k, d in by_kind.items() if isinstance(d, dict)]
    return pd.DataFrame(rows)


def show_study(summary: dict, truth: str | None = None, curves: bool = True) -> None:
    """The verdict, its evidence, the curves, the hint kinds and the claims, in that order."""
    verdict_header(summary, truth)
    deciding_table(summary)
    if (kinds := hint_kinds_table(summary)) is not None:
        st.markdown("**Each hint kind on its own** (Chen et al. 2025; the verdict reads the kind that moves the "
                    "answer most)")
        st.dataframe(kinds, hide_index=True, width="stretch")
    if (cross := cross_check_table(summary)) is not None:
        st.markdown("**Two estimates of each step's weight** (breaking the step vs resampling it; a clear "
                    "disagreement withholds the label)")
        st.dataframe(cross, hide_index=True, width="stretch")
    if curves:
        fig = curves_figure(summary)
        if fig is not None:
            if sentence := curves_sentence(summary):
                st.write(sentence)
            st.plotly_chart(fig, width="stretch")
    table = claims_table(summary)
    if table is not None:
        src = get(summary, "claims", "source")
        n = get(summary, "claims", "n_problems")
        st.markdown(f"**Claims by stated value** ({'CoT' if src == 'cot' else 'explanation' if src else 'stated'} "
                    f"values{f', {n} problems' if n else ''}; represented is judged on held-out prompts only)")
        st.dataframe(table, hide_index=True, width="stretch")
