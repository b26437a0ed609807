"""Causal check of a probe: move the activation along the probe's direction and see if the answer follows.

A probe that reads a variable shows it is *represented*; this asks whether the model *uses* it. At the probe's
site, each held-out prompt's activation is moved along the probe's direction from the variable's true class
``c`` to ``t = (c + 1) mod n_classes`` (a carry flips; a digit goes up by one), just far enough that the probe's
logit difference is mirrored (``logit_t - logit_c`` becomes ``logit_c - logit_t`` of the clean run, times
``scale``). The model then completes the prompt greedily under the intervention (the push stays on the site's
position at every step). If the variable is used as the
column algorithm uses it, the answer changes by exactly ``(t - c) * 10**k`` (``k`` = the variable's place value:
column i for digits and totals, i + 1 for the carry out of column i). A random direction of the same length is
the control: it shows how often a push of that size changes the answer at all.
"""

from __future__ import annotations

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer
from transformer_lens.hook_points import HookPoint

from probes.linear import ProbeConfig, split
from probes.sweep import ResidStack, fit_site
from workbench.errors import WorkbenchError
from workbench.models.organism_eval import rate
from workbench.tasks.addition import Problem
from workbench.tasks.parse import parse_answer, parse_cot, parse_prompt
from workbench.tasks.formats import ANSWER_MARK


def place_value(variable: str) -> int:
    """Power of ten by which a unit change of ``variable`` changes the sum."""
    if variable.startswith("carry"):
        return int(variable[5:]) + 1
    for prefix in ("total", "ans", "a", "b"):
        if variable.startswith(prefix) and variable[len(prefix):].isdigit():
            return int(variable[len(prefix):])
    raise WorkbenchError(f"the causal check needs a column variable (a{{i}}, b{{i}}, total{{i}}, carry{{i}}, ans{{i}}), got {variable!r}")


def answer_of(completion: str) -> int | None:
    """The answer in a completion after ``a+b=``: after ``ans`` in a CoT, else the bare number."""
    if ANSWER_MARK in completion:
        return parse_cot(completion).answer
    return parse_answer(completion.strip())[0]


@torch.inference_mode()
def greedy_with_delta(
    model: HookedTransformer,
    tokens: Int[Tensor, "batch pos"],
    hook: str,
    position: int,
    delta: Float[Tensor, "batch d_model"] | None,
    max_new_tokens: int,
) -> list[str]:
    """Greedy completions with ``delta`` added to ``hook`` at the absolute ``position`` on every step.

    No KV cache: each step re-runs the whole sequence, so the intervention sits at the same absolute position and
    every later position sees the moved activation (at organism sizes this costs milliseconds).
    """
    def add(act: Tensor, *, hook: HookPoint) -> Tensor:
        act = act.clone()
        act[:, position] += delta.to(act.dtype)
        return act

    hooks = [] if delta is None else [(hook, add)]
    eos = model.tokenizer.eos_token_id
    toks = tokens
    with model.hooks(fwd_hooks=hooks):
        for _ in range(max_new_tokens):
            nxt = model(toks)[:, -1].argmax(-1, keepdim=True)
            toks = torch.cat([toks, nxt], 1)
            if eos is not None and (toks[:, tokens.shape[1]:] == eos).any(1).all():
                break
    out = []
    for row in toks.tolist():
        if eos is not None and eos in row[tokens.shape[1]:]:
            row = row[: tokens.shape[1] + row[tokens.shape[1]:].index(eos)]
        out.append(model.tokenizer.decode(row, skip_special_tokens=True))
    return out


def causal_check(
    model: HookedTransformer,
    stack: ResidStack,
    texts: list[str],
    problems: list[Problem],
    variable: str,
    layer: int,
    position: int,
    scale: float = 1.0,
    max_new_tokens: int = 48,
    cfg: ProbeConfig = ProbeConfig(),
) -> dict:
    """Intervene along the probe of ``variable`` at (``layer`` row of ``stack``, ``position``) on the held-out
    prompts; rates (with Wilson intervals) of answers that follow the variable, stay, or do something else."""
    k = place_value(variable)
    fit, var = fit_site(stack, problems, variable, layer, position, cfg)
    train, test = split(len(problems), cfg.test_fraction, cfg.seed)
    acts = stack.acts[layer, :, position].float()  # [n, d]
    labels = torch.as_tensor(var.labels, dtype=torch.long)
    # Class means on the training split; the push is the mean displacement between the two classes.
    counts = torch.bincount(labels[train], minlength=var.n_classes)
    means = torch.zeros(var.n_classes, acts.shape[1]).index_add_(0, labels[train], acts[train]) / counts.clamp_min(1)[:, None]
    c = labels[test]
    t = (c + 1) % var.n_classes
    keep = (counts[c] > 0) & (counts[t] > 0)  # both classes must have been seen to define the push
    test, c, t = test[keep].tolist(), c[keep], t[keep]
    if not test:
        raise WorkbenchError(f"{variable!r} has fewer than two classes in these prompts: nothing to flip")
    x = acts[test]
    delta = (means[t] - means[c]) * scale
    moved = fit.logits((x + delta)[None])[0].argmax(-1)
    g = torch.Generator().manual_seed(cfg.seed)
    rand = torch.randn(x.shape, generator=g)
    rand_delta = rand / rand.norm(dim=1, keepdim=True) * delta.norm(dim=1, keepdim=True)

    hook = stack.hooks[layer]
    # The prompt up to its '=' is always given whole (cutting it would make the model invent the rest of a
    # problem); past '=', the text is teacher-forced up to the site and the rest is generated under the push.
    eq = model.to_tokens(texts[0][: texts[0].index("=") + 1]).shape[1] - 1
    prefix = torch.stack([model.to_tokens(texts[i])[0, : max(position, eq) + 1] for i in test])
    runs = {name: greedy_with_delta(model, prefix, hook, position, d, max_new_tokens)
            for name, d in (("clean", None), ("probe", delta), ("random", rand_delta))}
    answers = {name: [answer_of(parse_prompt(s).rest) for s in out] for name, out in runs.items()}
    base = np.array([a if a is not None else -1 for a in answers["clean"]])
    predicted = base + (t - c).numpy() * 10**k
    probe = np.array([a if a is not None else -2 for a in answers["probe"]])
    rnd = np.array([a if a is not None else -2 for a in answers["random"]])
    valid = base >= 0
    return {
        "variable": variable, "layer": stack.labels[layer], "hook": hook, "position": position,
        "token": stack.tokens[position], "n": int(valid.sum()), "scale": scale,
        "probe_flipped": rate((moved == t).numpy()),
        "answer_follows_variable": rate(probe[valid] == predicted[valid]),
        "answer_unchanged": rate(probe[valid] == base[valid]),
        "answer_other": rate((probe[valid] != base[valid]) & (probe[valid] != predicted[valid])),
        "random_direction_changes_answer": rate(rnd[valid] != base[valid]),
        "random_direction_follows_variable": rate(rnd[valid] == predicted[valid]),
        "mean_push_norm": float(delta.norm(dim=1).mean()),
        "per_example": [{"index": i, "follows": bool(probe[j] == predicted[j]), "valid": bool(valid[j])}
                        for j, i in enumerate(test)],
        "examples": [
            {"text": runs["clean"][j], "clean": answers["clean"][j], "predicted": int(predicted[j]),
             "intervened": answers["probe"][j]} for j, i in enumerate(test[:5])
        ],
    }
