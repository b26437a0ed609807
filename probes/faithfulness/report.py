"""Files of a faithfulness study: ``summary.json``, ``examples.parquet`` and a self-contained ``report.html``.

The HTML carries plotly.js inline once, so it opens offline; every number in it comes from ``summary.json``.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from workbench.io import atomic_write, write_json, write_parquet


def _fmt(v) -> str:
    if isinstance(v, dict) and "rate" in v:
        if v["rate"] is None:
            return "n/a (n=0)"
        if v.get("ci95") is None:
            return f"{v['rate']:.3f} (n={v.get('n')}, no interval)"
        lo, hi = v["ci95"]
        return f"{v['rate']:.3f} [{lo:.3f}, {hi:.3f}] (n={v['n']})"
    if isinstance(v, float):
        return f"{v:.3f}"
    if isinstance(v, (dict, list)):
        return html.escape(json.dumps(v))[:300]
    return html.escape(str(v))


def _table(d: dict, skip: tuple = ()) -> str:
    rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{_fmt(v)}</td></tr>" for k, v in d.items() if k not in skip)
    return f"<table>{rows}</table>"


def _figures(summary: dict) -> list[str]:
    import plotly.graph_objects as go

    figs = []
    curves = go.Figure()
    for test in ("early", "mistakes"):
        c = summary.get(test, {}).get("curve")
        if c:
            curves.add_trace(go.Scatter(x=[p["fraction"] for p in c] + [1.0], y=[p["rate"] for p in c] + [1.0],
                                        mode="lines+markers", name=f"{test} (AOC {summary[test]['aoc']:.2f})"))
    if curves.data:
        curves.update_layout(title="Same answer as with the full CoT", xaxis_title="fraction of the CoT before the cut / mistake",
                             yaxis_title="same answer", yaxis_range=[0, 1.05], height=380)
        figs.append(curves)
    abc = summary.get("internal", {}).get("answer_before_cot", {})
    if abc.get("supported"):
        fig = go.Figure([go.Scatter(x=abc["layers"], y=acc, mode="lines+markers", name=v)
                         for v, acc in abc["accuracy_by_layer"].items()])
        fig.update_layout(title="Answer digits decodable from the prompt alone (before any CoT)", yaxis_title="probe accuracy",
                          yaxis_range=[0, 1.05], height=380)
        figs.append(fig)
    pw = summary.get("internal", {}).get("pathways", {})
    if pw.get("supported"):
        fig = go.Figure(go.Bar(x=["operand tokens", "CoT tokens"], y=[pw["restored_by_operands"], pw["restored_by_cot"]]))
        fig.update_layout(title=f"Share of the answer restored by clean tokens ({pw['pairs']} pairs)", height=340)
        figs.append(fig)
    return [f.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, f in enumerate(figs)]


def _rate_rows(items: list[tuple[str, dict]], extra=()) -> str:
    head = ["", "rate [95% CI] (n)", "against the threshold", *extra]
    body = ""
    for name, d in items:
        r = {"rate": d.get("rate"), "ci95": d.get("ci95"), "n": d.get("n")}
        side = d.get("side") or ""
        cells = [html.escape(str(name)), _fmt(r) if r["ci95"] is not None else "n/a",
                 html.escape(f"{side} {d.get('threshold', '')}".strip()), *[html.escape(str(d.get(e, ""))) for e in extra]]
        body += "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"
    return f"<table><tr>{''.join(f'<th>{h}</th>' for h in head)}</tr>{body}</table>"


def _verdict_html(v: dict, truth: str | None) -> list[str]:
    parts = [f"<p class=verdict>Verdict: <b>{html.escape(v['verdict'])}</b>"
             + (f" (ground truth: <b>{html.escape(truth)}</b>)" if truth else "")
             + (f" &mdash; rule: {html.escape(str(v['rule']))}" if v.get("rule") else "")
             + f"<br>{html.escape(v['why'])}</p>"]
    if v.get("where"):
        parts.append(f"<p><b>Where:</b> {html.escape(v['where'])}</p>")
    if v.get("deciding"):
        parts += ["<h3>Deciding rates</h3>", _rate_rows([(d["name"], d) for d in v["deciding"]])]
    comp = v.get("competence") or {}
    if comp.get("accuracy"):
        parts.append(f"<p>Competence: task accuracy {_fmt(comp['accuracy'])}, floor {comp['floor']} "
                     f"({html.escape(str(comp.get('side')))})</p>")
    loc = v.get("localisation") or {}
    if loc.get("steps"):
        parts += ["<h3>CoT dependence by step</h3>", _rate_rows(list(loc["steps"].items()))]
    cc = loc.get("cross_check") or {}
    if cc.get("ran"):
        head = ["step", "breaking it changes the answer", "resampling it (importance)", "agree"]
        body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in [
            html.escape(name), _fmt(x["broken"]) if x.get("broken") else "n/a",
            _fmt(x["resampled"]) if x.get("resampled") else "n/a",
            {True: "yes", False: "<b>no</b>", None: "undecided"}[x.get("agree")]]) + "</tr>"
            for name, x in cc["by_step"].items())
        parts += ["<h3>Two estimates of each step's weight</h3>",
                  f"<table><tr>{''.join(f'<th>{h}</th>' for h in head)}</tr>{body}</table>"]
    if loc.get("groups"):
        parts += [f"<h3>CoT dependence by input group</h3><p>(groups under {loc.get('min_group_n')} examples are "
                  "shown, not read)</p>", _rate_rows(list(loc["groups"].items()), extra=("read",))]
    if v.get("supporting"):
        parts += ["<h3>Supporting evidence (not read by the rules)</h3>", _table(v["supporting"])]
    return parts


def render_html(title: str, summary: dict, claims_rows: list[dict], truth: str | None) -> str:
    v = summary["verdict"]
    parts = [f"<h1>{html.escape(title)}</h1>", *_verdict_html(v, truth),
             "<h2>Stated reasoning</h2>", f"<pre>{html.escape(summary['stated_reasoning']['example'])}</pre>",
             _table(summary["stated_reasoning"], skip=("example",)), "<h2>Scores (schema 1)</h2>", _table(v["scores"])]
    parts += _figures(summary)
    for test in ("early", "mistakes", "resample", "filler", "paraphrase", "hint"):
        if test in summary:
            parts += [f"<h2>{test}</h2>", _table(summary[test], skip=("curve",))]
    if "internal" in summary:
        parts += ["<h2>internal</h2>"] + [_table(x) for x in summary["internal"].values()]
    if "claims" in summary:
        parts += ["<h2>claims</h2>", _table(summary["claims"], skip=("by_variable",))]
        by_var = summary["claims"].get("by_variable", {})
        if by_var:
            head = ["value", "role", "true", "represented", "used", "status", "probe site", "push site"]
            body = "".join(
                "<tr>" + "".join(f"<td>{c}</td>" for c in [
                    html.escape(var), html.escape(str(d.get("role"))), _fmt(d["claim_true"]), _fmt(d["represented"]),
                    _fmt(d["used"]), html.escape(str(d.get("status") or "")), html.escape(str(d.get("probe_site"))),
                    html.escape(f"{d['push']['layer']} at {d['push']['token']}"
                                if d.get("push", {}).get("supported") else "")]) + "</tr>"
                for var, d in by_var.items())
            parts += [f"<table><tr>{''.join(f'<th>{h}</th>' for h in head)}</tr>{body}</table>"]
        if claims_rows:
            head = ["prompt", "claim", "true", "probe_reads", "represented", "used"]  # per claim
            body = "".join("<tr>" + "".join(f"<td>{html.escape(str(r.get(h)))}</td>" for h in head) + "</tr>"
                           for r in claims_rows[:30])
            parts += ["<h3>first claims</h3>", f"<table><tr>{''.join(f'<th>{h}</th>' for h in head)}</tr>{body}</table>"]
    parts += ["<h2>Timings (s)</h2>", _table(summary.get("timings_seconds", {}))]
    style = ("body{font-family:sans-serif;max-width:1000px;margin:2em auto}table{border-collapse:collapse;margin:.5em 0}"
             "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}.verdict{font-size:18px}")
    return (f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title><style>{style}</style>"
            f"</head><body>{''.join(parts)}</body></html>")


_INT64 = (-(2**63), 2**63 - 1)


def tidy_rows(rows: list[dict]) -> list[dict]:
    """Rows as one Parquet table: every row gets every column; dicts and lists become JSON text.

    A parsed answer is an exact integer, and a model can write a run of digits longer than Parquet's int64
    holds (20 digits and more); a column holding such a value is written as decimal text throughout (the
    same digits, nothing rounded or dropped), so the table stays one type per column.
    """
    keys = list(dict.fromkeys(k for r in rows for k in r))
    tidy = [{k: (json.dumps(r[k]) if isinstance(r.get(k), (dict, list)) else r.get(k)) for k in keys} for r in rows]
    for k in keys:
        ints = [r[k] for r in tidy if isinstance(r[k], int) and not isinstance(r[k], bool)]
        if any(not _INT64[0] <= v <= _INT64[1] for v in ints):
            for r in tidy:
                if isinstance(r[k], int) and not isinstance(r[k], bool):
                    r[k] = str(r[k])
    return tidy


def _drop(path: Path) -> None:
    if path.is_file() and not path.is_symlink():
        path.unlink()


def write_study(out: str | Path, model_name: str, summary: dict, rows: list[dict], truth: str | None = None) -> list[Path]:
    """``examples.parquet`` (when there are rows), ``report.html``, then ``summary.json``.

    ``summary.json`` marks a complete study: an earlier one in ``out`` is removed first and the new one written
    last, so a failure part way never leaves a summary beside another run's files.
    """
    out = Path(out)
    _drop(out / "summary.json")
    tidy = tidy_rows(rows)
    files = []
    if tidy:
        files.append(write_parquet(out / "examples.parquet", tidy))
    else:
        _drop(out / "examples.parquet")  # an earlier run's rows are not this run's
    claims_rows = [r for r in rows if r["test"] == "claims"]
    page = render_html(f"Faithfulness of {model_name}", summary, claims_rows, truth)
    files.append(atomic_write(out / "report.html", lambda p: p.write_text(page)))
    files.append(write_json(out / "summary.json", {"model": model_name, "ground_truth": truth, **summary}))
    return files
