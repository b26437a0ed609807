"""Before/after diffing of two models of one architecture (e.g. a model before and after alignment).

What changed in the weights (relative norm of each parameter's change, by layer and component), in behaviour
(per-token KL between the two next-token distributions on a prompt set) and in the residual stream (per layer:
relative norm of the activation difference and cosine similarity). These answer "where did tuning act?";
"was a mechanism removed or routed around?" then needs the probes and patching of the same prompts on both.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from transformer_lens import HookedTransformer

from workbench.errors import WorkbenchError
from workbench.figures import heatmap
from workbench.io import write_json, write_parquet
from workbench.models.tokenizer import tokenize_prompts


def _check_same_shape(base: HookedTransformer, tuned: HookedTransformer) -> None:
    a, b = base.state_dict(), tuned.state_dict()
    if a.keys() != b.keys() or any(a[k].shape != b[k].shape for k in a):
        raise WorkbenchError("the two models have different architectures (parameter names or shapes differ): "
                             "diffing compares a model with a tuned copy of itself")


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
    _check_same_shape(base, tuned)
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
    _check_same_shape(base, tuned)
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


def diff_report(base: HookedTransformer, tuned: HookedTransformer, prompts: list[str], out: str | Path) -> dict:
    """Write ``weights.parquet``, ``prompts.parquet``, ``layers.parquet``, ``summary.json`` and a weight-change
    heatmap (layer x component, HTML + PNG)."""
    out = Path(out)
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
    files = heatmap(np.sqrt(grid), [f"L{layer}" for layer in layers], comps, "Weight change ||dW|| by layer and component",
                    out / "weight_change", colorbar="||dW||")
    kl = np.array([r["kl_mean"] for r in per_prompt])
    summary = {
        "n_prompts": len(prompts),
        "kl_mean": float(kl.mean()), "kl_p90": float(np.quantile(kl, 0.9)),
        "next_token_changed": float(np.mean([r["next_token_changed"] for r in per_prompt])),
        "most_changed_parameters": sorted(weights, key=lambda w: -w["relative"])[:5],
        "layers": per_layer,
        "files": ["weights.parquet", "prompts.parquet", "layers.parquet", *(f.name for f in files)],
    }
    write_json(out / "summary.json", summary)
    return summary
