"""Files for the lens and patching commands: tidy Parquet tables, JSON summaries and heatmaps (HTML + PNG)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformer_lens import HookedTransformer

from workbench.figures import heatmap
from workbench.io import write_json, write_parquet
from workbench.lens import LensReadout
from workbench.patching import (
    attribution_patching, correlation, head_by_pos_sweep, head_sweep, mlp_out_sweep, prediction_logit_diff, resid_sweep,
)

SWEEPS = ("resid", "mlp", "heads", "head-pos")


def write_lens(model: HookedTransformer, readout: LensReadout, tokens: list[str], out: str | Path, kind: str,
               target: str | None) -> dict:
    """``lens.parquet`` (one row per layer x position with the top-k tokens), a heatmap and ``summary.json``."""
    out = Path(out)
    dec = model.tokenizer.convert_ids_to_tokens
    rows = []
    for layer, label in enumerate(readout.labels):
        for pos, tok in enumerate(tokens):
            row = {"layer": label, "layer_index": layer, "position": pos, "token": tok,
                   "top_tokens": dec(readout.top_tokens[layer, pos].tolist()),
                   "top_probs": [round(float(p), 6) for p in readout.top_probs[layer, pos]]}
            if readout.target_prob is not None:
                row |= {"target": target, "target_prob": float(readout.target_prob[layer, pos]),
                        "target_rank": int(readout.target_rank[layer, pos])}
            rows.append(row)
    write_parquet(out / "lens.parquet", rows)
    top1 = np.array([[dec(int(t)) for t in r] for r in readout.top_tokens[:, :, 0]], dtype=object)
    if readout.target_prob is not None:
        values, what = readout.target_prob.numpy(), f"P({target!r})"
    else:
        values, what = readout.top_probs[:, :, 0].numpy(), "top-1 probability"
    files = heatmap(values, readout.labels, tokens, f"{kind} lens: {what} (cell text: top-1 token)",
                    out / f"{kind}_lens", colorbar=what, text=top1)
    summary = {"lens": kind, "tokens": tokens, "layers": readout.labels, "target": target,
               "final_top1": [str(t) for t in top1[-1]], "files": ["lens.parquet", *(f.name for f in files)]}
    if readout.target_rank is not None:
        # The first layer at which the target is the lens's top token at the last position.
        ranks = readout.target_rank[:, -1].tolist()
        summary["first_layer_target_top1_last_pos"] = next((readout.labels[i] for i, r in enumerate(ranks) if r == 0), None)
    write_json(out / "summary.json", summary)
    return summary


def run_patching(model: HookedTransformer, clean_texts: list[str], corrupt_texts: list[str], sweeps: list[str],
                 out: str | Path, max_batch: int = 1024) -> dict:
    """Activation patching sweeps (clean -> corrupted) with the prediction logit-difference metric, attribution
    patching of the residual stream and its correlation with the activation-patching sweep."""
    out = Path(out)
    clean = torch.cat([model.to_tokens(t) for t in clean_texts])
    corrupt = torch.cat([model.to_tokens(t) for t in corrupt_texts])
    metric, clean, corrupt, _ = prediction_logit_diff(model, clean, corrupt)
    with torch.inference_mode():
        base_clean, base_corrupt = metric(model(clean)).item(), metric(model(corrupt)).item()
    span = base_clean - base_corrupt
    tokens = model.to_str_tokens(clean[0])
    layers = [f"L{layer}" for layer in range(model.cfg.n_layers)]
    heads = [f"H{h}" for h in range(model.cfg.n_heads)]
    rows, files, summary = [], [], {"pairs": len(clean), "metric_clean": base_clean, "metric_corrupted": base_corrupt,
                                    "example": {"clean": model.to_string(clean[0, 1:]), "corrupted": model.to_string(corrupt[0, 1:])}}
    fns = {"resid": resid_sweep, "mlp": mlp_out_sweep, "heads": head_sweep, "head-pos": head_by_pos_sweep}
    for name in sweeps:
        effect = fns[name](model, clean, corrupt, metric, max_batch=max_batch)
        norm = (effect - base_corrupt) / span if span else effect * float("nan")
        for idx in np.ndindex(*effect.shape):
            site = dict(zip(("layer", "position", "head") if name == "head-pos" else
                            ("layer", "head") if name == "heads" else ("layer", "position"), idx))
            rows.append({"sweep": name, **site, "token": tokens[site["position"]] if "position" in site else None,
                         "metric": float(effect[idx]), "recovered": float(norm[idx])})
        if name == "head-pos":
            norm = norm.amax(-1)  # the most restoring head at each position, for the figure
        cols = heads if name == "heads" else tokens
        files += heatmap(norm.numpy(), layers, cols, f"{name} patching: share of the logit difference restored",
                         out / f"patch_{name.replace('-', '_')}", colorbar="restored", diverging=True)
        summary[name] = {"max_recovered": float(norm.max()), "argmax": [int(i) for i in np.unravel_index(int(norm.argmax()), norm.shape)]}
        if name == "resid":
            attr = attribution_patching(model, clean, corrupt, metric)
            r = correlation(attr, effect - base_corrupt)
            summary["resid"]["attribution_correlation"] = r
            files += heatmap((attr / span).numpy(), layers, tokens, f"attribution patching (r = {r:.2f} with activation patching)",
                             out / "patch_attribution", colorbar="estimated restored", diverging=True)
            rows += [{"sweep": "attribution", "layer": int(i), "position": int(j), "head": None, "token": tokens[j],
                      "metric": float(attr[i, j] + base_corrupt), "recovered": float(attr[i, j] / span)}
                     for i, j in np.ndindex(*attr.shape)]
    for r in rows:
        r.setdefault("head", None)
        r.setdefault("position", None)
    write_parquet(out / "patching.parquet", rows)
    summary["files"] = ["patching.parquet", *(f.name for f in files)]
    write_json(out / "summary.json", summary)
    return summary
