"""Probes scored against a planted mechanism: where an organism trained by interchange intervention
(:mod:`workbench.models.iit`) holds its variables, set beside where a linear probe finds them.

For each variable a probe can read on the prompt ``a+b=`` (the carries, the ones digit ``ans0``), a probe is fitted
at every layer x position on the whole residual stream, and at the planted site on each aligned block of
coordinates alone. The localisation AUROC of a variable is the share of the other sites whose held-out accuracy
is below the planted site's (ties half): 1.0 when the probe ranks the planted site first, 0.5 when it cannot
tell it from the rest.
"""

from __future__ import annotations

import numpy as np
from transformer_lens import HookedTransformer

from probes.linear import ProbeConfig
from probes.sweep import ResidStack, collect_resid, probe_sweep, select_variables, sweep_variables
from probes.variables import control_labels
from workbench.models.zoo import Recipe
from workbench.tasks import formats
from workbench.tasks.addition import sample_problems

VARIABLES = ("carry0", "carry1", "ans0")
"""Probed on 3-digit prompts: the carries out of the ones and the tens column, and the ones digit of the sum."""
PLANTED_AS = {"carry0": "carry0", "carry1": "carry1", "ans0": "ones"}
"""Which causal-model variable (:data:`workbench.models.iit.CAUSAL_MODELS`) each probed variable is, where planted."""


def _site_row(hook: str) -> int:
    """The row of a residual stack (:func:`probes.sweep.resid_hooks`: ``L_pre`` per block, then ``final_post``)
    that a residual hook is: ``blocks.L.hook_resid_post`` equals block L+1's pre, or ``final_post`` after the last."""
    layer = int(hook.split(".")[1])
    return layer + 1 if hook.endswith("hook_resid_post") else layer


def _rank_auroc(here: float, others: np.ndarray) -> float:
    """The share of the other sites scoring below the planted one (ties half)."""
    return round(float((others < here).mean() + 0.5 * (others == here).mean()), 4)


def planted_localisation(model: HookedTransformer, recipe: Recipe, n: int = 800, seed: int = 0,
                         cfg: ProbeConfig = ProbeConfig()) -> dict:
    """Per probed variable: the best site, the planted site (whole residual and each aligned block), and the
    localisation AUROC of the planted site, on ``n`` held-out 3-digit problems."""
    if recipe.iit is None:
        raise ValueError(f"{recipe.name} has no planted mechanism")
    problems = sample_problems(n, (3,), "test", seed)
    stack = collect_resid(model, [formats.problem_prompt(p) for p in problems])
    rows = probe_sweep(stack, problems, VARIABLES, cfg=cfg)
    hook = recipe.iit.alignments[0].hook
    layer, pos = _site_row(hook), stack.acts.shape[2] - 1  # the prompt's last token, '='
    variables = select_variables(problems, VARIABLES)
    controls = [control_labels(v, problems, cfg.seed) for v in variables]
    blocks = {}
    for al in recipe.iit.alignments:  # the aligned coordinates alone, at the planted layer and position
        lo, hi = al.dims
        sub = ResidStack(stack.acts[layer:layer + 1, :, pos:pos + 1, lo:hi], [hook], [stack.labels[layer]],
                         stack.tokens[pos:pos + 1])
        for r in sweep_variables(sub, variables, controls, cfg=cfg):
            blocks.setdefault(r["variable"], {})[al.variable] = round(r["score"], 4)
    out = {"site": {"hook": hook, "layer": stack.labels[layer], "position": pos, "token": stack.tokens[pos]},
           "n_test": rows[0]["n_test"], "variables": {}}
    for name in VARIABLES:
        mine = [r for r in rows if r["variable"] == name]
        best = max(mine, key=lambda r: (round(r["score"], 6), r["layer_index"], r["position"]))
        here = next(r for r in mine if r["layer_index"] == layer and r["position"] == pos)
        others = np.array([r["score"] for r in mine if r is not here])
        planted = PLANTED_AS[name] in {al.variable for al in recipe.iit.alignments}
        out["variables"][name] = {
            "planted": planted,
            "best": {"layer": best["layer"], "position": best["position"], "token": best["token"],
                     "accuracy": round(best["score"], 4)},
            "at_site": round(here["score"], 4), "majority": round(here["majority"], 4),
            "at_site_by_block": blocks.get(name, {}),
            "localisation_auroc": _rank_auroc(here["score"], others) if planted else None,
        }
    return out


def lines(result: dict) -> list[str]:
    """The demo's lines: one per probed variable."""
    site = result["site"]
    out = [f"    probes against the planted site ({site['layer']} at {site['token']!r}; n={result['n_test']} held out):"]
    for name, v in result["variables"].items():
        b = v["best"]
        blocks = ", ".join(f"{k} block {a:.2f}" for k, a in v["at_site_by_block"].items())
        where = (f"planted there: site {v['at_site']:.2f} ({blocks}), best {b['accuracy']:.2f} at {b['layer']} "
                 f"{b['token']!r}, localisation AUROC {v['localisation_auroc']:.2f}") if v["planted"] else \
            (f"not planted: best {b['accuracy']:.2f} at {b['layer']} {b['token']!r}, at the site {v['at_site']:.2f} "
             f"({blocks})")
        out.append(f"     {name}: {where} (majority {v['majority']:.2f})")
    for name, v in (result.get("push") or {}).items():
        u = v["used"] or {}
        lo, hi = u.get("ci95", (0, 0))
        out.append(f"    the claims' push of {name} {'(planted)' if v['planted'] else '(not planted)'}: moves the answer "
                   f"as stated {v['at_site']:.2f} at the site, chosen site {v['chosen']} (used {u.get('rate', 0):.2f} "
                   f"[{lo:.2f}, {hi:.2f}])" + (f", localisation AUROC {v['localisation_auroc']:.2f}" if v["planted"] else ""))
    return out


def push_localisation(summary: dict, recipe: Recipe) -> dict:
    """The claims test's push (a stated carry moved to its other value by the class-mean difference) scored
    against the planted site: for each intermediate variable it pushed, the share of selection prompts on which
    the push at the planted site moves the answer as stated, the site it chose, and the localisation AUROC of
    the planted site among every layer x prompt position it searched."""
    if recipe.iit is None:
        raise ValueError(f"{recipe.name} has no planted mechanism")
    layer = _site_row(recipe.iit.alignments[0].hook)
    planted = {al.variable for al in recipe.iit.alignments}
    out = {}
    for name, v in ((summary.get("claims") or {}).get("by_variable") or {}).items():
        push = v.get("push") or {}
        grid = push.get("selection_by_layer_position")
        if v.get("role") != "intermediate" or not grid:
            continue
        grid = np.asarray(grid, dtype=float)
        pos = grid.shape[1] - 1  # the prompt's last token, '='
        here = grid[layer, pos]
        others = np.delete(grid.flatten(), layer * grid.shape[1] + pos)
        out[name] = {"planted": PLANTED_AS.get(name, name) in planted, "at_site": round(float(here), 4),
                     "chosen": f"{push.get('layer')} at {push.get('token')}", "used": v.get("used"),
                     "localisation_auroc": _rank_auroc(here, others)}
    return out
