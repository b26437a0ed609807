"""Before/after diffing of two models of one architecture (e.g. a model before and after alignment).

What changed in the weights (relative norm of each parameter's change, by layer and component), in behaviour
(per-token KL between the two next-token distributions on a prompt set) and in the residual stream (per layer:
relative norm of the activation difference and cosine similarity). These answer "where did tuning act?".
"Was a mechanism removed or routed around?" is :mod:`workbench.diff_mechanisms` (probe transfer, patching-effect
difference, SAE transfer and a verdict), which :func:`diff_report` runs too and puts in the same ``report.html``.
The two models must share parameter names, shapes and tokenizer (:func:`check_compatible` says what differs).
"""

from __future__ import annotations

import html
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from transformer_lens import HookedTransformer

from workbench.errors import WorkbenchError
from workbench.figures import heatmap, heatmap_figure
from workbench.io import atomic_write, write_json, write_parquet
from workbench.models.tokenizer import tokenize_prompts

if TYPE_CHECKING:
    from workbench.diff_mechanisms import MechanismConfig


def _vocab(model: HookedTransformer) -> dict[str, int] | None:
    return None if model.tokenizer is None else dict(model.tokenizer.get_vocab())


def check_compatible(base: HookedTransformer, tuned: HookedTransformer) -> None:
    """Refuse two models that are not one architecture with one tokenizer, saying what differs: parameters
    only in one, parameters of other shapes, or tokens only in one / with other ids."""
    if base is tuned:
        return
    a, b = base.state_dict(), tuned.state_dict()
    problems = []
    only_a, only_b = [k for k in a if k not in b], [k for k in b if k not in a]
    shapes = [f"{k} {tuple(a[k].shape)} vs {tuple(b[k].shape)}" for k in a if k in b and a[k].shape != b[k].shape]
    for label, names in (("only in base", only_a), ("only in tuned", only_b), ("shapes differ", shapes)):
        if names:
            more = f" and {len(names) - 4} more" if len(names) > 4 else ""
            problems.append(f"{label}: {', '.join(names[:4])}{more}")
    if problems:
        raise WorkbenchError("the two models have different architectures (" + "; ".join(problems) + "): diffing "
                             "compares a model with a tuned copy of itself")
    va, vb = _vocab(base), _vocab(tuned)
    if va != vb:
        if va is None or vb is None:
            what = f"{'base' if va is None else 'tuned'} has no tokenizer"
        else:
            parts = []
            for label, toks in (("only in base", [t for t in va if t not in vb]),
                                ("only in tuned", [t for t in vb if t not in va]),
                                ("other ids", [t for t in va if t in vb and va[t] != vb[t]])):
                if toks:
                    parts.append(f"{len(toks)} tokens {label} (e.g. {', '.join(map(repr, sorted(toks)[:5]))})")
            what = "; ".join(parts)
        raise WorkbenchError(f"the two models have different tokenizers ({what}): the same prompts would be "
                             "different token ids, so nothing would line up")


def _component(name: str) -> tuple[str, str]:
    """``blocks.1.attn.W_Q`` -> ("1", "attn"); ``embed.W_E`` -> ("-", "embed")."""
    parts = name.split(".")
    if parts[0] == "blocks":
        comp = parts[2] if parts[2] in ("attn", "mlp") else parts[2].split("_")[0]  # ln1, ln2
        return parts[1], comp
    return "-", parts[0]


@torch.no_grad()
def weight_deltas(base: HookedTransformer, tuned: HookedTransformer) -> list[dict]:
    """Per parameter: ||W_tuned - W_base|| / ||W_base|| and the absolute norm of the change."""
    check_compatible(base, tuned)
    a, b = base.state_dict(), tuned.state_dict()
    rows = []
    for name in a:
        if not a[name].is_floating_point() or name.endswith(("IGNORE", "mask")):
            continue
        delta = (b[name].float() - a[name].float()).norm().item()
        layer, comp = _component(name)
        rows.append({"parameter": name, "layer": layer, "component": comp, "delta_norm": delta,
                     "relative": delta / max(a[name].float().norm().item(), 1e-12)})
    return rows


@torch.no_grad()
def behaviour_and_activations(base: HookedTransformer, tuned: HookedTransformer, prompts: list[str],
                              batch_size: int = 256) -> tuple[list[dict], list[dict]]:
    """Per prompt: mean and max over positions of KL(base || tuned) of the next-token distributions, and whether
    the greedy next token after the prompt changed. Per layer: relative norm of the residual-stream difference
    and the mean cosine similarity of the two streams (every position of every prompt)."""
    check_compatible(base, tuned)
    toks = tokenize_prompts(base, prompts)
    hooks = [f"blocks.{layer}.hook_resid_post" for layer in range(base.cfg.n_layers)]
    per_prompt: list[dict] = []
    sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0, 0])
    by_len: dict[int, list[int]] = defaultdict(list)
    for i, t in enumerate(toks):
        by_len[len(t)].append(i)
    for idx in by_len.values():
        for s in range(0, len(idx), batch_size):
            chunk = idx[s : s + batch_size]
            batch = torch.stack([toks[i] for i in chunk])
            la, ca = base.run_with_cache(batch, names_filter=hooks)
            lb, cb = tuned.run_with_cache(batch, names_filter=hooks)
            pa, pb = la.log_softmax(-1), lb.log_softmax(-1)
            kl = (pa.exp() * (pa - pb)).sum(-1)  # [batch, pos]
            changed = la[:, -1].argmax(-1) != lb[:, -1].argmax(-1)
            for k, i in enumerate(chunk):
                per_prompt.append({"prompt": prompts[i], "kl_mean": kl[k].mean().item(), "kl_max": kl[k].max().item(),
                                   "kl_last": kl[k, -1].item(), "next_token_changed": bool(changed[k])})
            for h in hooks:
                x, y = ca[h].flatten(0, 1), cb[h].flatten(0, 1)
                acc = sums[h]
                acc[0] += (y - x).norm(dim=-1).sum().item()
                acc[1] += x.norm(dim=-1).sum().item()
                acc[2] += torch.cosine_similarity(x, y, dim=-1).sum().item()
                acc[3] += len(x)
    per_layer = [{"hook": h, "relative_diff": v[0] / max(v[1], 1e-12), "cosine": v[2] / v[3]} for h, v in sums.items()]
    return sorted(per_prompt, key=lambda r: prompts.index(r["prompt"])), per_layer


def diff_report(base: HookedTransformer, tuned: HookedTransformer, prompts: list[str], out: str | Path, *,
                mechanisms: bool = True, mechanism_config: MechanismConfig | None = None,
                sae: str | Path | None = None) -> dict:
    """Write ``weights.parquet``, ``prompts.parquet``, ``layers.parquet``, ``summary.json``, a weight-change
    heatmap (layer x component, HTML + PNG) and ``report.html`` (every figure, one self-contained page).

    With ``mechanisms`` (the default) also the "removed or bypassed?" half (:mod:`workbench.diff_mechanisms`) on
    hinted prompts, whatever ``prompts`` are: ``probe_transfer.parquet``, ``patching_heads.parquet``,
    ``patching_resid.parquet``, with ``sae`` (an SAE directory trained on the base) ``sae_features.parquet``,
    and the sections ``probe_transfer``, ``patching``, ``sae`` and ``verdict`` under ``summary["mechanisms"]``.
    """
    out = Path(out)
    check_compatible(base, tuned)
    weights = weight_deltas(base, tuned)
    per_prompt, per_layer = behaviour_and_activations(base, tuned, prompts)
    write_parquet(out / "weights.parquet", weights)
    write_parquet(out / "prompts.parquet", per_prompt)
    write_parquet(out / "layers.parquet", per_layer)
    layers = sorted({w["layer"] for w in weights if w["layer"] != "-"}, key=int)
    comps = ["ln1", "attn", "ln2", "mlp"]
    grid = np.zeros((len(layers), len(comps)))
    for w in weights:
        if w["layer"] != "-" and w["component"] in comps:
            grid[layers.index(w["layer"]), comps.index(w["component"])] += w["delta_norm"] ** 2
    title = "Weight change ||dW|| by layer and component"
    files = heatmap(np.sqrt(grid), [f"L{layer}" for layer in layers], comps, title, out / "weight_change",
                    colorbar="||dW||")
    kl = np.array([r["kl_mean"] for r in per_prompt])
    summary = {
        "n_prompts": len(prompts),
        "kl_mean": float(kl.mean()), "kl_p90": float(np.quantile(kl, 0.9)),
        "next_token_changed": float(np.mean([r["next_token_changed"] for r in per_prompt])),
        "most_changed_parameters": sorted(weights, key=lambda w: -w["relative"])[:5],
        "layers": per_layer,
        "files": ["weights.parquet", "prompts.parquet", "layers.parquet", *(f.name for f in files)],
    }
    figures = diff_figures(np.sqrt(grid), layers, comps, kl, per_layer)
    probe_rows = None
    if mechanisms:
        from workbench.diff_mechanisms import MechanismConfig, mechanism_diff

        mech = mechanism_diff(base, tuned, mechanism_config or MechanismConfig(), sae)
        for name, rows in mech["tables"].items():
            write_parquet(out / f"{name}.parquet", rows)
            summary["files"].append(f"{name}.parquet")
        summary["mechanisms"] = mech["summary"]
        probe_rows = mech["tables"]["probe_transfer"]
        figures += mech["figures"]
    summary["files"].append("report.html")
    summary = _json_safe(summary)
    write_report_html(out / "report.html", summary, figures, probe_rows)
    summary["files"].append("summary.json")
    write_json(out / "summary.json", summary)
    return summary


def _json_safe(obj):
    """NaN and infinities as null (JSON has neither), tuples as lists, recursively."""
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def diff_figures(grid: np.ndarray, layers: list[str], comps: list[str], kl: np.ndarray, per_layer: list[dict]):
    """The report's behaviour and activation figures (weight change, KL per prompt, residual change per layer),
    shared by report.html and the explorer's Alignment diff page."""
    import plotly.graph_objects as go

    fig = heatmap_figure(grid, [f"L{layer}" for layer in layers], comps, "Weight change ||dW|| by layer and component",
                         "||dW||")
    fig.update_layout(xaxis_title="component")
    hist = go.Figure(go.Histogram(x=kl, nbinsx=40))
    hist.update_layout(title="Per-prompt mean KL(base || tuned) of the next-token distributions",
                       xaxis_title="KL (nats)", yaxis_title="prompts")
    hooks = [r["hook"] for r in per_layer]
    res = go.Figure([go.Bar(name="relative ||resid diff||", x=hooks, y=[r["relative_diff"] for r in per_layer]),
                     go.Bar(name="cosine", x=hooks, y=[r["cosine"] for r in per_layer])])
    res.update_layout(barmode="group", title="Residual stream, tuned vs base, per layer")
    return [("Weight change", fig), ("Behaviour: KL", hist), ("Residual stream", res)]


def _table(rows: list[dict], keys: list[str] | None = None) -> str:
    if not rows:
        return "<p>(none)</p>"
    keys = keys or list(rows[0])

    def cell(v) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        if isinstance(v, (list, dict)):
            return html.escape(json.dumps(v))
        return html.escape(str(v))

    head = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
    body = "".join("<tr>" + "".join(f"<td>{cell(r.get(k))}</td>" for k in keys) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_report_html(path: str | Path, summary: dict, figures: list[tuple[str, object]],
                      probe_rows: list[dict] | None = None) -> Path:
    """One self-contained page: the verdict and the numbers it rests on, the summary tables and every figure
    (plotly inline, its library embedded once)."""
    parts = ["<h1>Model diff: base vs tuned</h1>"]
    mech = summary.get("mechanisms")
    if mech:
        v = mech["verdict"]
        parts.append(f"<h2>Removed or bypassed? Verdict: <code>{html.escape(v['verdict'])}</code> "
                     f"(representation: {html.escape(v['representation'])})</h2><ul>"
                     + "".join(f"<li>{html.escape(e)}</li>" for e in v["evidence"]) + "</ul>")
        parts.append("<h3>Numbers the verdict rests on</h3>" + _table([v["numbers"]]))
        parts.append("<h3>Rules</h3>" + _table([v["rules"]]))
    behaviour = {k: summary[k] for k in ("n_prompts", "kl_mean", "kl_p90", "next_token_changed")}
    parts.append("<h2>Behaviour and weights</h2>" + _table([behaviour]))
    parts.append("<h3>Most changed parameters</h3>" + _table(summary["most_changed_parameters"]))
    parts.append("<h3>Residual stream per layer</h3>" + _table(summary["layers"]))
    if mech:
        probe = [{"site": k, **{kk: vv for kk, vv in v.items() if kk != "best_base_site"}}
                 for k, v in mech["probe_transfer"].items()]
        parts.append("<h2>Probe transfer (best margin above chance over variables and layers)</h2>" + _table(probe))
        p = mech["patching"]
        flat = {k: v for k, v in p.items() if not isinstance(v, (list, dict))}
        parts.append("<h2>Patching-effect difference</h2>" + _table([flat])
                     + _table([{"top_heads": p["top_heads"], "patch_base": p["top_heads_patch_base"],
                                "patch_tuned": p["top_heads_patch_tuned"], "own_cot_match": p.get("own_cot_match")}])
                     + "<h3>Per layer: exact patching of the attention output and of the answer position's stream "
                       "(hook_resid_pre)</h3>"
                     + _table([{"model": m, "layer": layer, "attn_out": p[f"attn_out_patch_{m}"][layer],
                                "resid_pre_at_answer": p[f"resid_answer_position_patch_{m}"][layer]}
                               for m in ("base", "tuned") for layer in range(len(p["attn_out_patch_base"]))]))
        if probe_rows:
            parts.append("<h3>Probe transfer, every site</h3>" + _table(probe_rows))
        if "sae" in mech:
            s = mech["sae"]
            parts.append(f"<h2>SAE transfer ({html.escape(str(s['hook']))}, d_sae {s['d_sae']})</h2>"
                         + _table([{"model": m, **s[m]} for m in ("base", "tuned")])
                         + _table([{k: s[k] for k in ("density_correlation", "mean_abs_density_shift", "born", "died",
                                                      "dashboard")}])
                         + "<h3>Features whose density changed most</h3>" + _table(s["top_changed"]))
    for k, (title, fig) in enumerate(figures):
        body = fig.to_html(full_html=False, include_plotlyjs=(k == 0), default_height="480px")
        parts.append(f"<h2>{html.escape(title)}</h2>{body}")
    style = ("body{font-family:sans-serif;max-width:1200px;margin:auto} table{border-collapse:collapse;margin:6px 0}"
             "td,th{border:1px solid #ccc;padding:2px 6px;font-size:12px}")
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>workbench diff</title><style>{style}</style>"
            f"</head><body>{''.join(parts)}</body></html>")
    return atomic_write(path, lambda p: p.write_text(page))
