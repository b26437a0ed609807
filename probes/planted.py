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


def patching_lines(result: dict) -> list[str]:
    """The demo's lines for :func:`patching_localisation`: one per variable."""
    site = result["site"]
    out = [f"    activation patching of the whole residual stream against the planted site ({site['hook']}; pairs "
           f"differing in one variable, IIA = share patched to the counterfactual answer):"]
    for name, v in result["variables"].items():
        b = v["best"]
        head = f"     {name} ({'planted' if v['planted'] else 'stated, not planted'}; n={v['n_pairs']} pairs): "
        if not v["n_pairs"]:
            out.append(head + "no held-out pair differs in it alone")
            continue
        body = (f"IIA {v['at_site']:.2f} at the site, best {b['iia']:.2f} at {b['layer']} {b['token']!r}, "
                f"best elsewhere {v['runner_up']:.2f}")
        if v["planted"]:
            a = v["localisation_auroc"]
            body += (f"; localisation AUROC {a['iia']:.2f} (IIA), {a['logprob']:.2f} (log-prob), "
                     f"{a['attribution']:.2f} (attribution patching)")
        out.append(head + body + f"; attribution vs patching Spearman {v['attribution_vs_patching_spearman']:.2f}")
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


STATED_MODEL = "carry"
"""The algorithm every direct answerer states when asked ``why?``: its carries are scored on every planted organism,
aligned or not."""


def _pairs(causal_model: str, variable: str, n: int, seed: int) -> tuple[np.ndarray, ...]:
    """Base and source 3-digit problems that the causal model says differ in ``variable`` alone: swapping it changes
    the answer, and swapping every variable of the model gives that same answer (so a patch of a whole site that
    holds them all should too). Returns a, b, a_src, b_src and the counterfactual answer."""
    from workbench.models.iit import counterfactual, joint_counterfactual

    base = sample_problems(12 * n, (3,), "test", seed)
    src = sample_problems(12 * n, (3,), "test", seed + 1)
    a, b = np.array([p.a for p in base]), np.array([p.b for p in base])
    a_src, b_src = np.array([p.a for p in src]), np.array([p.b for p in src])
    cf = counterfactual(causal_model, variable, a, b, a_src, b_src)
    keep = np.flatnonzero((cf != a + b) & (cf == joint_counterfactual(causal_model, a, b, a_src, b_src)))[:n]
    return a[keep], b[keep], a_src[keep], b_src[keep], cf[keep]


def _answer_metrics(target: dict):
    """Metrics of a batch teacher-forced on ``target``'s answers: the share of rows whose every answer token is the
    arg max (the interchange-intervention accuracy), and the mean log-probability of the answer (differentiable)."""
    import torch

    tokens, mask = target["tokens"][:, 1:], target["mask"][:, 1:]

    def iia(logits):
        right = (logits[:, :-1].argmax(-1) == tokens) | ~mask
        return right.all(-1).float().mean()

    def logprob(logits):
        lp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, tokens[..., None])[..., 0]
        return (lp * mask).sum(-1).mean()

    return iia, logprob


def _site_maps(model: HookedTransformer, clean, corrupt, iia, logprob, n_prompt: int) -> dict[str, np.ndarray]:
    """Residual-stream maps ``[layer rows, prompt positions]`` with the rows of :func:`_site_row` (each block's
    ``resid_pre``, then the last block's ``resid_post``): the patched IIA and log-probability (one sweep reads
    both) and the attribution estimate of the log-probability."""
    import torch

    from workbench.patching import attribution_at, resid_sweep

    last = model.cfg.n_layers - 1
    pre = resid_sweep(model, clean, corrupt, {"iia": iia, "logprob": logprob})
    post = resid_sweep(model, clean, corrupt, {"iia": iia, "logprob": logprob}, where="resid_post", layers=[last])
    maps = {k: torch.cat([pre[k], post[k]]) for k in pre}
    names = [f"blocks.{i}.hook_resid_pre" for i in range(model.cfg.n_layers)] + [f"blocks.{last}.hook_resid_post"]
    with torch.enable_grad():
        maps["attribution"] = attribution_at(model, clean, corrupt, logprob, names)  # one gradient for every row
    return {k: m.detach().numpy()[:, :n_prompt] for k, m in maps.items()}


def patching_localisation(model: HookedTransformer, recipe: Recipe, n: int = 300, seed: int = 0) -> dict:
    """Activation patching and attribution patching of the residual stream at every layer x prompt position,
    scored against the planted site.

    For each variable of the planted causal model, and each carry of the stated algorithm, pairs of problems that
    differ in that variable alone (:func:`_pairs`) are patched source into base, one site at a time, with the
    base teacher-forced on the causal model's counterfactual answer. The activation map is the share of pairs on
    which the patched model writes exactly that answer (the IIA of the whole residual at the site); a second map is
    the answer's mean log-probability, and attribution patching estimates that one from a gradient. Each map's
    localisation AUROC is the planted site's rank among the sites (a variable that is not planted gets none: its
    best site and value say whether anything in the stream behaves like it)."""
    import torch

    from workbench.models.iit import CAUSAL_MODELS, encode_direct
    from workbench.patching import spearman

    if recipe.iit is None:
        raise ValueError(f"{recipe.name} has no planted mechanism")
    hook = recipe.iit.alignments[0].hook
    layer = _site_row(hook)
    planted = {al.variable for al in recipe.iit.alignments}
    hypotheses = [(recipe.iit.causal_model, v) for v in CAUSAL_MODELS[recipe.iit.causal_model][0]]
    hypotheses += [(STATED_MODEL, v) for v in CAUSAL_MODELS[STATED_MODEL][0] if v not in planted]
    out = {"site": {"hook": hook, "row": layer}, "variables": {}}
    for causal_model, name in hypotheses:
        a, b, a_src, b_src, cf = _pairs(causal_model, name, n, seed)
        base = encode_direct(model.tokenizer, a, b, cf)
        source = encode_direct(model.tokenizer, a_src, b_src, cf)  # same answer tokens: the two align
        n_prompt = int(base["pos"][0]) + 1
        maps = _site_maps(model, source["tokens"], base["tokens"], *_answer_metrics(base), n_prompt)
        pos = n_prompt - 1
        labels = [f"{i}_pre" for i in range(model.cfg.n_layers)] + ["final_post"]
        tokens = model.to_str_tokens(base["tokens"][0, :n_prompt])
        v = {"causal_model": causal_model, "planted": causal_model == recipe.iit.causal_model and name in planted,
             "n_pairs": len(a), "labels": labels, "tokens": tokens,
             "iia_map": np.round(maps["iia"], 4).tolist(), "at_site": round(float(maps["iia"][layer, pos]), 4)}
        best = np.unravel_index(np.argmax(maps["iia"]), maps["iia"].shape)
        v["best"] = {"layer": labels[best[0]], "token": tokens[best[1]], "iia": round(float(maps["iia"][best]), 4)}
        others = lambda m: np.delete(m.flatten(), layer * n_prompt + pos)  # every site but the planted one
        v["runner_up"] = round(float(others(maps["iia"]).max()), 4)
        v["attribution_vs_patching_spearman"] = round(spearman(torch.from_numpy(maps["attribution"]),
                                                               torch.from_numpy(maps["logprob"])), 4)
        if v["planted"]:
            v["localisation_auroc"] = {
                k: _rank_auroc(m[layer, pos], others(m)) for k, m in maps.items()}
        out["variables"][name] = v
    return out
