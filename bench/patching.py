"""Attribution patching against the activation-patching sweep it approximates, on the organisms, in one run.

For each organism and a pair set that moves its answer (``cot-step`` for the CoT organisms, ``hint`` for
adder-hint, ``operand`` for adder-direct; 32 pairs), both methods score the same nodes: every attention head's
output (all positions: ``head_sweep`` vs ``attribution_heads``) and every head at every position
(``head_by_pos_sweep`` vs ``attribution_head_by_pos``). Reported: seconds of each (best of 3), the speed-up,
and the Spearman rank correlation of the two effect maps (the goal: >= 20x faster at Spearman >= 0.9).

The activation sweep here is already the batched one (all sites of a layer share forward passes), which is
faster than TransformerLens's one-pass-per-site ``patching`` functions that it equals.

    python bench/patching.py
"""

from __future__ import annotations

import json
import time

import torch

from workbench.models.loader import load_model
from workbench.patching import (
    attribution_head_by_pos, attribution_heads, head_by_pos_sweep, head_sweep, prediction_logit_diff, spearman,
)
from workbench.tasks.pairs import make_pairs

PAIRS = {"adder-cot-faithful": "cot-step", "adder-cot-posthoc": "cot-step", "adder-hint": "hint",
         "adder-direct": "operand"}


def best_of(fn, repeats: int = 3):
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return out, min(times)


def main() -> None:
    torch.set_num_threads(2)
    result = {}
    for name, kind in PAIRS.items():
        model = load_model(name)
        clean_t, corrupt_t = make_pairs(kind, 32, 3, seed=0)
        clean = torch.cat([model.to_tokens(t) for t in clean_t])
        corrupt = torch.cat([model.to_tokens(t) for t in corrupt_t])
        metric, clean, corrupt, _ = prediction_logit_diff(model, clean, corrupt)
        row = {"pairs": kind, "n_pairs": len(clean)}
        for nodes, act_fn, attr_fn in (("heads", head_sweep, attribution_heads),
                                       ("head_by_pos", head_by_pos_sweep, attribution_head_by_pos)):
            base = metric(model(corrupt)).item()
            act, t_act = best_of(lambda: act_fn(model, clean, corrupt, metric))
            attr, t_attr = best_of(lambda: attr_fn(model, clean, corrupt, metric))
            rho = spearman(attr, act - base)
            row[nodes] = {"nodes": act.numel(), "activation_s": round(t_act, 3), "attribution_s": round(t_attr, 4),
                          "speedup": round(t_act / t_attr, 1), "spearman": round(rho, 3),
                          "goal_met": t_act / t_attr >= 20 and rho >= 0.9}
        result[name] = row
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
