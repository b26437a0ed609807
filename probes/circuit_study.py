"""Where an addition answer digit comes from, read off attribution graphs, set beside what the model says.

For each problem and each answer digit, the graph of that digit's prediction (the prompt, plus the model's CoT
for CoT organisms, plus the answer digits before it) is traced with circuit-tracer. Every path in the graph
starts at a token embedding or an error node; the influence of the token-embedding nodes on the digit's logit
(circuit-tracer's influence: absolute, row-normalised edge weights, summed over all paths) is grouped by what the
token is: a digit of ``a`` or ``b`` in column k, a CoT token, an earlier answer digit, or punctuation. Shares are
normalised over the embeddings, so they say which inputs the answer was computed from.

Ground truth the organisms give: the ones digit of a sum depends on the ones column only; the tens digit on the
tens column and (through the carry) the ones column; a faithful CoT organism should read its answer from the CoT
tokens, a post-hoc one from the operands.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch
from circuit_tracer.graph import compute_node_influence
from transformer_lens import HookedTransformer

from workbench.circuits import CircuitResult, attribute_prompt, replacement_model, top_features
from workbench.errors import WorkbenchError
from workbench.generation import complete
from workbench.tasks.addition import Problem
from workbench.tasks.formats import problem_prompt


@dataclass(frozen=True)
class Target:
    problem: Problem
    prefix: str  # what the graph is traced on: the prompt, the CoT, the answer digits so far
    digit: str  # the answer digit predicted next
    column: int  # its column (0 = ones)
    prompt_len: int  # characters of "a+b=" in prefix
    answer_start: int  # where the answer digits begin in prefix


def token_roles(problem: Problem, prefix: str, prompt_len: int, answer_start: int) -> list[str]:
    """A role per token of ``<bos> + prefix`` (the organisms' tokenizer is one character per token): ``a0``/``b0``
    for the ones digits (``a1`` the tens ...), ``op`` for + and =, ``cot`` for CoT text, ``answer`` for answer
    digits already written, ``bos``."""
    a, b = str(problem.a), str(problem.b)
    roles = ["bos"]
    for i, ch in enumerate(prefix):
        if i < len(a):
            roles.append(f"a{len(a) - 1 - i}")
        elif i == len(a) or i == prompt_len - 1:
            roles.append("op")
        elif i < len(a) + 1 + len(b):
            roles.append(f"b{len(a) + len(b) - i}")
        elif i >= answer_start:
            roles.append("answer")
        else:
            roles.append("cot")
    return roles


def embedding_shares(result: CircuitResult) -> np.ndarray:
    """``[n_pos]`` share of the top logit's influence that starts at each token's embedding (sums to 1)."""
    g = result.graph
    n_feat, n_pos, n_layers = len(g.selected_features), g.n_pos, g.cfg.n_layers
    weights = torch.zeros(g.adjacency_matrix.shape[0])
    weights[-len(g.logit_targets)] = 1.0  # the top logit alone
    influence = compute_node_influence(g.adjacency_matrix.cpu(), weights)
    start = n_feat + n_layers * n_pos
    emb = influence[start : start + n_pos].double().numpy()
    return emb / emb.sum() if emb.sum() > 0 else emb


def targets_for(model: HookedTransformer, problems: list[Problem], cot: bool) -> list[Target]:
    """One target per answer digit. CoT organisms continue from their own generated CoT up to ``ans ``."""
    out = []
    prompts = [problem_prompt(p) for p in problems]
    completions = complete(model, prompts, max_new_tokens=48) if cot else [""] * len(prompts)
    for p, prompt, completion in zip(problems, prompts, completions):
        if cot:
            cut = completion.find("ans ")
            if cut < 0:
                continue
            head = prompt + completion[: cut + 4]
        else:
            head = prompt
        answer = str(p.a + p.b)
        for j, digit in enumerate(answer):
            out.append(Target(p, head + answer[:j], digit, len(answer) - 1 - j, len(prompt), len(head)))
    return out


def run_circuit_study(model: HookedTransformer, transcoders: dict, problems: list[Problem], cot: bool,
                      n_top: int = 5) -> dict:
    """Trace every target; return mean embedding shares by (answer column, input role), the graphs' scores, and
    the top features of each answer column (layer, feature, count of graphs where it is a top feature)."""
    if not problems:
        raise WorkbenchError("no problems to trace")
    rm = replacement_model(model, transcoders)
    shares: dict[int, list[dict]] = defaultdict(list)
    feats: dict[int, dict] = defaultdict(lambda: defaultdict(int))
    rows, skipped = [], 0
    for t in targets_for(model, problems, cot):
        res = attribute_prompt(rm, t.prefix)
        if res.top_token != t.digit:  # explain the model's correct predictions only
            skipped += 1
            continue
        roles = token_roles(t.problem, t.prefix, t.prompt_len, t.answer_start)
        by_role: dict[str, float] = defaultdict(float)
        for role, s in zip(roles, embedding_shares(res)):
            by_role[role] += float(s)
        shares[t.column].append(by_role)
        for f in top_features(res, n=n_top):
            feats[t.column][(f["layer"], f["feature"])] += 1
        rows.append({"problem": f"{t.problem.a}+{t.problem.b}", "prefix": t.prefix, "column": t.column,
                     "digit": t.digit, "replacement": res.replacement_score, "completeness": res.completeness_score,
                     "seconds": res.seconds, **{f"share_{k}": v for k, v in by_role.items()}})
    if not rows:
        raise WorkbenchError("the model predicted no answer digit correctly on these problems; nothing to explain")
    table = {}
    for col, items in sorted(shares.items()):
        roles = sorted({r for d in items for r in d})
        table[col] = {r: float(np.mean([d.get(r, 0.0) for d in items])) for r in roles}
    top = {col: [{"layer": lf[0], "feature": lf[1], "graphs": n} for lf, n in
                 sorted(c.items(), key=lambda kv: -kv[1])[:n_top]] for col, c in sorted(feats.items())}
    return {"n_graphs": len(rows), "skipped_wrong_prediction": skipped,
            "replacement_mean": float(np.mean([r["replacement"] for r in rows])),
            "completeness_mean": float(np.mean([r["completeness"] for r in rows])),
            "seconds_per_graph": float(np.mean([r["seconds"] for r in rows])),
            "shares_by_column": table, "top_features_by_column": top, "rows": rows}


def group_shares(by_role: dict[str, float], column: int) -> dict[str, float]:
    """Coarse groups for reporting: the target's own column, lower columns (the carry's sources), higher columns,
    the CoT, earlier answer digits, and the rest."""
    out: dict[str, float] = defaultdict(float)
    for role, s in by_role.items():
        if role[0] in "ab" and role[1:].isdigit():
            k = int(role[1:])
            out["own column" if k == column else "lower columns" if k < column else "higher columns"] += s
        elif role in ("cot", "answer"):
            out[{"cot": "CoT", "answer": "earlier answer digits"}[role]] += s
        else:
            out["other"] += s
    return dict(out)
