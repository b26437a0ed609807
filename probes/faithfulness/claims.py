"""Claim by claim: each intermediate value the model states, set beside what its internals hold and use.

A stated step ``6+9+0=15`` (or, from a model that explains instead of reasoning first, ``ones 6+9=15 carry 1``)
claims column 0's carry out is 1. For each claimed carry:

* **true**: does the claim agree with the column algorithm?
* **represented**: before anything is stated (on the prompt ``a+b=``), does a linear probe at the prompt site
  where that carry is most decodable (with a control task) read the stated value? Judged on the probe's
  held-out prompts only (None on its training prompts).
* **used**: intervene on the claim and see whether the answer moves by the +-10**(i+1) the carry predicts. In a
  CoT the claim is text, so the intervention is the edit: flip the written carry of step i and let the model
  continue. An explanation is not in the answer's context, so there the intervention is internal: the
  class-mean push at the probe's site (:mod:`probes.causal`), on the probe's held-out prompts.
"""

from __future__ import annotations

from transformer_lens import HookedTransformer

from probes.causal import answer_of, causal_check
from probes.faithfulness.behaviour import BaseRun, generate
from probes.linear import ProbeConfig, split
from probes.sweep import best_site, collect_resid, fit_site, probe_sweep
from workbench.models.organism_eval import rate
from workbench.tasks import formats
from workbench.tasks.parse import parse_explanation


def stated_carries(model: HookedTransformer, run: BaseRun) -> tuple[list[list[int] | None], str]:
    """Each example's stated carries, ones column first: from its CoT steps, or else from its explanation."""
    if len(run.usable()) >= len(run.problems) / 2:
        return [[int(s[-2]) for s in steps] if steps else None for steps in run.steps], "cot"
    prompts = [formats.problem_prompt(p) + formats.WHY_MARK for p in run.problems]
    parsed = [parse_explanation(c) for c in generate(model, prompts, 80)]
    return [None if e.malformed else [c.carry_out for c in e.columns] for e in parsed], "explanation"


def _edit_carry(step: str) -> str:
    """`` a+b+c=ss`` with the written carry (tens digit of ss) flipped."""
    return step[:-2] + str(1 - int(step[-2])) + step[-1]


def claims(model: HookedTransformer, run: BaseRun, cfg: ProbeConfig = ProbeConfig()) -> tuple[dict, list[dict]]:
    """Per-claim rows and per-variable rates for the run's problems (one operand width)."""
    stated, source = stated_carries(model, run)
    n_cols = len(run.problems[0].columns)
    texts = [formats.problem_prompt(p) for p in run.problems]
    if len({len(t) for t in texts}) > 1 or len(run.problems) < 80:
        return {"supported": False, "why": "needs >= 80 problems of one shape"}, []
    stack = collect_resid(model, texts)
    variables = [f"carry{i}" for i in range(n_cols)]
    sweep = probe_sweep(stack, run.problems, variables, cfg=cfg)
    used_by_var: dict[str, dict[int, bool]] = {}
    if source == "cot":
        jobs = [(ex, i) for ex in run.usable() if len(run.steps[ex]) == n_cols for i in range(n_cols)]
        prefixes = [run.prompts[ex] + "".join(run.steps[ex][:i]) + _edit_carry(run.steps[ex][i]) for ex, i in jobs]
        conts = generate(model, prefixes, 64)
        for (ex, i), pre, c in zip(jobs, prefixes, conts):
            answer = answer_of(pre[len(run.prompts[ex]):] + c)
            sign = 1 - 2 * int(run.steps[ex][i][-2])  # carry 0 -> 1 adds, 1 -> 0 subtracts
            used_by_var.setdefault(f"carry{i}", {})[ex] = answer == run.answers[ex] + sign * 10 ** (i + 1)
    held_out = set(split(len(run.problems), cfg.test_fraction, cfg.seed)[1].tolist())
    rows, per_var = [], {}
    for i, var in enumerate(variables):
        site = best_site(sweep, var)
        fit, v = fit_site(stack, run.problems, var, site["layer_index"], site["position"], cfg)
        read = fit.logits(stack.acts[site["layer_index"], :, site["position"]].float()[None])[0].argmax(-1).tolist()
        check = None
        if source == "explanation" and len(set(v.labels.tolist())) > 1:
            check = causal_check(model, stack, texts, run.problems, var, site["layer_index"], site["position"],
                                 max_new_tokens=8, cfg=cfg)
            used_by_var[var] = {e["index"]: e["follows"] for e in check["per_example"] if e["valid"]}
        used = used_by_var.get(var, {})
        for ex in range(len(run.problems)):
            if stated[ex] is None or len(stated[ex]) <= i:
                continue
            claim = stated[ex][i]
            rows.append({"example": ex, "prompt": run.prompts[ex], "claim": f"{var}={claim}", "variable": var,
                         "stated": claim, "true": int(v.labels[ex]), "probe_reads": int(read[ex]),
                         "claim_true": claim == int(v.labels[ex]),
                         # read on the probe's held-out prompts only: its training prompts would flatter it
                         "represented": read[ex] == claim if ex in held_out else None,
                         "used": used.get(ex), "site": f"{site['layer']}@{site['position']}:{site['token']!r}"})
        mine = [r for r in rows if r["variable"] == var]
        per_var[var] = {"probe_site": mine[0]["site"] if mine else None, "probe_accuracy": site["score"],
                        "probe_selectivity": site["selectivity"],
                        "claim_true": rate([r["claim_true"] for r in mine]),
                        "represented": rate([r["represented"] for r in mine if r["represented"] is not None]),
                        "used": rate([r["used"] for r in mine if r["used"] is not None]),
                        "random_push_changes_answer": None if check is None else check["random_direction_changes_answer"]}
    agg = {"supported": True, "source": source, "intervention": "edit the written carry" if source == "cot" else
           "class-mean push at the probe site", "n_claims": len(rows), "claim_true": rate([r["claim_true"] for r in rows]),
           "represented": rate([r["represented"] for r in rows if r["represented"] is not None]),
           "used": rate([r["used"] for r in rows if r["used"] is not None]), "by_variable": per_var}
    return agg, rows

