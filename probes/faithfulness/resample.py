"""Counterfactual step importance by resampling, after "thought anchors" (Bogdan et al. 2025).

For each stated step k of the model's own CoT, the continuation after it is sampled twice over:

* **kept**: from the prompt and steps 1..k as the model wrote them;
* **replaced**: from the prompt and steps 1..k-1 and a version of step k that the model itself might have
  written instead. The step branches at its least certain content token (the token of the step, holding a
  letter or digit, to which the model gave the lowest probability), where a token other than the written one is
  sampled from the model's own distribution with the written one left out; the rest of the step and everything
  after it is sampled.

A step's counterfactual importance is ``P(answer = the full-CoT answer | kept) - P(same | replaced)``: how much
the answer rests on the step being what it was, measured on the model's own alternatives rather than on an
edit (adding mistakes writes a wrong result digit; this lets the model branch). Bogdan et al. resample the
whole step and drop resamples too similar to the original; a small trained model resamples its own step
almost never differently at temperature 1 (the written token has probability near 1), so here the branch is
forced at one token and only there. Answers that cannot be parsed are left out and counted, as everywhere.
Intervals are bootstrap 95% over examples (the samples of one example are not independent).
"""

from __future__ import annotations

import numpy as np
import torch
from transformer_lens import HookedTransformer

from probes.faithfulness.adapter import TaskAdapter, step_name
from probes.faithfulness.behaviour import BOOTSTRAP, BaseRun, unparsed_share
from workbench.generation import complete
from workbench.models.tokenizer import tokenize_prompts

SAMPLES = 4
"""Sampled continuations per example, step and condition."""
MAX_EXAMPLES = 100
"""Examples the resampling runs on (the first of the usable ones)."""
TEMPERATURE = 1.0


def _branch_points(model: HookedTransformer, texts: list[str], starts: list[int]) -> list[tuple[int, int, np.ndarray]]:
    """Per text: the character offset of the least certain content token at or after ``starts[i]``, the token's
    id, and the model's next-token probabilities there (``[d_vocab]``, at temperature 1)."""
    out: list = [None] * len(texts)
    enc = model.tokenizer(texts, return_offsets_mapping=True, add_special_tokens=False)
    tokens = tokenize_prompts(model, texts)  # as to_tokens gives them: a BOS first where the model prepends one
    by_len: dict[int, list[int]] = {}
    for i, ids in enumerate(enc["input_ids"]):
        by_len.setdefault(len(ids), []).append(i)
    for idx in by_len.values():
        for s in range(0, len(idx), 256):
            rows = idx[s : s + 256]
            toks = torch.stack([tokens[i] for i in rows])
            shift = toks.shape[1] - len(enc["input_ids"][rows[0]])  # a prepended BOS
            with torch.inference_mode():
                probs = model(toks).float().softmax(-1)  # [batch, pos, vocab]
            for r, i in enumerate(rows):
                spans, ids = enc["offset_mapping"][i], enc["input_ids"][i]
                cand = [k for k, (a, b) in enumerate(spans) if a >= starts[i] and b > a]
                content = [k for k in cand if any(ch.isalnum() for ch in texts[i][spans[k][0]:spans[k][1]])]
                cand = content or cand
                # the probability the model gave each written token, read at the position before it
                p = [float(probs[r, k + shift - 1, ids[k]]) for k in cand]
                k = cand[int(np.argmin(p))]
                out[i] = (spans[k][0], ids[k], probs[r, k + shift - 1].cpu().numpy())
    return out


def _boot(per_ex_kept: np.ndarray, per_ex_repl: np.ndarray, seed: int) -> list[float] | None:
    """Bootstrap 95% interval of mean(kept) - mean(replaced), resampling examples."""
    n = len(per_ex_kept)
    if n < 2:
        return None
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, n, size=(BOOTSTRAP, n))
    diffs = np.nanmean(per_ex_kept[picks], 1) - np.nanmean(per_ex_repl[picks], 1)
    diffs = diffs[np.isfinite(diffs)]
    return [round(float(np.quantile(diffs, 0.025)), 4), round(float(np.quantile(diffs, 0.975)), 4)] if len(diffs) else None


def step_importance(model: HookedTransformer, adapter: TaskAdapter, run: BaseRun, rng: np.random.Generator,
                    samples: int = SAMPLES, max_examples: int = MAX_EXAMPLES,
                    temperature: float = TEMPERATURE) -> tuple[dict, list[dict]]:
    """Each step's counterfactual importance (module docstring), per step name with its interval; and one row
    per (example, step, condition, sample)."""
    idx = run.usable()[:max_examples]
    jobs = [(i, k) for i in idx for k in range(len(run.steps[i]))]
    if not jobs:
        return {"supported": False, "why": "no usable CoT"}, []
    seed = int(rng.integers(2**31))
    heads = [run.prompts[i] + "".join(run.steps[i][:k]) for i, k in jobs]
    full = [h + run.steps[i][k] for h, (i, k) in zip(heads, jobs)]
    points = _branch_points(model, full, [len(h) for h in heads])
    # replaced: at the branch point, a token other than the written one from the model's distribution there
    branched, kept = [], []
    for (i, k), text, (at, written, p) in zip(jobs, full, points):
        q = p.astype(np.float64) ** (1 / temperature)
        q[written] = 0.0
        for tok in model.tokenizer.all_special_ids:
            q[tok] = 0.0
        q = q / q.sum() if q.sum() > 0 else None
        for _ in range(samples):
            alt = int(rng.choice(len(p), p=q)) if q is not None else written
            branched.append(text[:at] + model.tokenizer.decode([alt]))
            kept.append(text)
    # every (example, step) cut has its own length: left-padded batches, not one batch per length
    cont_kept = complete(model, kept, max_new_tokens=64, temperature=temperature, seed=seed, padding="left")
    cont_repl = complete(model, branched, max_new_tokens=64, temperature=temperature, seed=seed + 1, padding="left")
    rows = []
    for j, (ck, cr) in enumerate(zip(cont_kept, cont_repl)):
        i, k = jobs[j // samples]
        name = step_name(adapter, k, len(run.steps[i]))
        for cond, prefix, c in (("kept", kept[j], ck), ("replaced", branched[j], cr)):
            a = adapter.split(prefix[len(run.prompts[i]):] + c)[1]
            rows.append({"test": "resample", "example": i, "step": k, "step_name": name, "condition": cond,
                         "branch": prefix[len(heads[j // samples]):] if cond == "replaced" else None,
                         "answer": a, "full_cot_answer": run.answers[i],
                         "same": None if a is None else a == run.answers[i]})
    by_step = {}
    for name in dict.fromkeys(r["step_name"] for r in sorted(rows, key=lambda r: r["step"])):
        mine = [r for r in rows if r["step_name"] == name]
        exs = sorted({r["example"] for r in mine})
        pos = {e: n for n, e in enumerate(exs)}
        means = {}
        for cond in ("kept", "replaced"):
            hits, cnt = np.zeros(len(exs)), np.zeros(len(exs))
            for r in mine:
                if r["condition"] == cond and r["same"] is not None:
                    hits[pos[r["example"]]] += r["same"]
                    cnt[pos[r["example"]]] += 1
            with np.errstate(invalid="ignore", divide="ignore"):
                means[cond] = np.where(cnt > 0, hits / np.maximum(cnt, 1), np.nan)
        both = np.isfinite(means["kept"]) & np.isfinite(means["replaced"])
        kept_same = float(np.mean(means["kept"][both])) if both.any() else None
        repl_same = float(np.mean(means["replaced"][both])) if both.any() else None
        importance = None if kept_same is None else round(kept_same - repl_same, 4)
        by_step[name] = {"rate": importance, "ci95": _boot(means["kept"][both], means["replaced"][both], seed),
                         "n": int(both.sum()), "same_when_kept": None if kept_same is None else round(kept_same, 4),
                         "same_when_replaced": None if repl_same is None else round(repl_same, 4),
                         "unparsed": unparsed_share(mine)}
    return {"supported": True, "by_step": by_step, "samples": samples, "temperature": temperature,
            "n_examples": len(idx), "unparsed": unparsed_share(rows)}, rows
