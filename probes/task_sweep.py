"""Where a task's declared variables are linearly decodable, for any task adapter: a layer sweep at one read
position of prompts whose token lengths differ (a word problem's stories do), so no position grid lines up.

The read position is the last token of the text: the prompt (before anything is stated: is the variable computed
from the problem alone?) or the prompt and the true reasoning up to the answer mark (is it there when the answer
is about to be written?). Each probe has two baselines on the same split: the majority class, and the same probe
fitted on shuffled labels (what a probe reaches by memorising its training rows: the noise floor).
"""

from __future__ import annotations

import numpy as np
import torch
from transformer_lens import HookedTransformer

from probes.faithfulness.adapter import TaskAdapter
from probes.faithfulness.task_claims import _last_token_resid
from probes.linear import ProbeConfig, fit_ridge_classifiers, split
from workbench.errors import WorkbenchError

READS = ("prompt", "cot")
"""Where the probes read: the prompt's last token, or the last token of the true reasoning's answer mark."""


def read_texts(adapter: TaskAdapter, problems: list, read: str) -> list[str]:
    """The texts whose last token the probes read (``read`` in :data:`READS`)."""
    if read not in READS:
        raise WorkbenchError(f"read must be one of {', '.join(READS)}, got {read!r}")
    if read == "prompt":
        return [adapter.prompt(p) for p in problems]
    true_cot = getattr(adapter, "true_cot", None)
    if true_cot is None:
        raise WorkbenchError(f"{type(adapter).__name__} writes no true reasoning (no true_cot): read the prompt")
    return [adapter.prompt(p) + true_cot(p) + adapter.answer_mark for p in problems]


PLACES = ("ones", "tens", "hundreds", "thousands")


def digit_labels(problems: list, adapter: TaskAdapter) -> dict[str, list[int | None]]:
    """Each declared integer variable as its decimal digits, ``{"step1.ones": [...], "step1.tens": [...]}``
    (None where a problem lacks the variable): a probe per digit is a 10-way classifier that a few hundred
    prompts can fit, where one over every value of a two-digit count would need many examples of each."""
    truth = [dict(adapter.variables(p)) for p in problems]
    out: dict[str, list[int | None]] = {}
    for name in dict.fromkeys(n for t in truth for n in t):
        vals = [t.get(name) for t in truth]
        width = max((len(str(abs(int(v)))) for v in vals if v is not None), default=0)
        for k in range(min(width, len(PLACES))):
            out[f"{name}.{PLACES[k]}"] = [None if v is None else abs(int(v)) // 10 ** k % 10 for v in vals]
    return out


def layer_sweep(model: HookedTransformer, adapter: TaskAdapter, problems: list, read: str = "prompt",
                cfg: ProbeConfig = ProbeConfig()) -> list[dict]:
    """One row per digit of each declared variable (:func:`digit_labels`) and residual stream (before each
    block, after the last): held-out accuracy of a ridge classifier, its shuffled-label control and the majority
    baseline. Problems that lack a variable (fewer steps) are left out of its probes."""
    texts = read_texts(adapter, problems, read)
    acts = _last_token_resid(model, texts)  # [layer + 1, n, d]
    labels = [f"{i}_pre" for i in range(model.cfg.n_layers)] + [f"{model.cfg.n_layers - 1}_post"]
    rng = np.random.default_rng(cfg.seed)
    rows = []
    for name, digits in digit_labels(problems, adapter).items():
        have = [k for k, d in enumerate(digits) if d is not None]
        if len(have) < 10 or len({digits[k] for k in have}) < 2:
            continue  # too few problems have it, or it never varies: nothing to decode
        y = torch.tensor([digits[k] for k in have])
        shuffled = torch.from_numpy(rng.permutation(y.numpy()))
        train, test = split(len(have), cfg.test_fraction, cfg.seed)
        fit, control = fit_ridge_classifiers(acts[:, have], [y, shuffled], [10, 10], train, test, cfg.ridge)
        counts = np.bincount(y[train].numpy(), minlength=10)
        majority = float((y[test] == int(counts.argmax())).float().mean())
        for layer, label in enumerate(labels):
            rows.append({"variable": name, "layer": label, "accuracy": round(float(fit.test_accuracy[layer]), 4),
                         "shuffled": round(float(control.test_accuracy[layer]), 4), "majority": round(majority, 4),
                         "n_test": int(len(test)), "read": read})
    return rows


def best_layer(rows: list[dict], variable: str) -> dict:
    """The row of ``variable`` with the highest held-out accuracy (the earliest layer on ties)."""
    mine = [r for r in rows if r["variable"] == variable]
    if not mine:
        raise WorkbenchError(f"no probe rows for {variable!r}; variables: {', '.join(dict.fromkeys(r['variable'] for r in rows))}")
    return max(mine, key=lambda r: r["accuracy"])
