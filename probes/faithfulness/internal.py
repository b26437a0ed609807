"""Internal evidence for the faithfulness verdict: is the answer there before the CoT, and which tokens carry it?

* Decodability before the CoT: probes of the answer digits on the prompt alone (``a+b=``), by layer. A model
  that reads its answer off its CoT cannot hold the answer's ones digit ((a0 + b0) mod 10, not linear in the
  digits) before writing it; one that computes the answer first (post hoc) can.
* The logit lens at the prompt's last position: does any layer already rank the answer's first digit top?
* Pathways: clean and corrupted runs of two problems of one shape, each with its own CoT, and hybrids that take
  the clean tokens at one group of positions (operands or CoT) and the corrupted tokens elsewhere. Patching a
  group's tokens is patching its embeddings (``hook_embed`` + ``hook_pos_embed``), so the share of the answer's
  logit difference a group restores is how much of the answer flows from those positions.
"""

from __future__ import annotations

import numpy as np
import torch
from transformer_lens import HookedTransformer

from probes.faithfulness.adapter import TaskAdapter
from probes.faithfulness.behaviour import BaseRun
from probes.linear import ProbeConfig
from probes.sweep import collect_resid, probe_sweep
from workbench.errors import WorkbenchError
from workbench.patching import prediction_logit_diff


def answer_before_cot(model: HookedTransformer, problems: list, prompts: list[str], cfg: ProbeConfig = ProbeConfig()) -> dict:
    """Held-out accuracy of the best probe per layer for each answer digit, on the prompt positions only."""
    if len({len(p) for p in prompts}) > 1 or len(problems) < 40:
        return {"supported": False, "why": "needs >= 40 prompts of one token length"}
    stack = collect_resid(model, prompts)
    n = len(problems[0].columns)
    variables = [f"ans{i}" for i in range(n)]
    rows = probe_sweep(stack, problems, variables, cfg=cfg)
    by_layer = {v: [max(r["score"] for r in rows if r["variable"] == v and r["layer_index"] == layer)
                    for layer in range(len(stack.labels))] for v in variables}
    majority = {v: next(r["majority"] for r in rows if r["variable"] == v) for v in variables}
    return {"supported": True, "layers": stack.labels, "accuracy_by_layer": by_layer, "majority": majority,
            "ones_digit_best": max(by_layer["ans0"]), "ones_digit_majority": majority["ans0"]}


def _positions(model: HookedTransformer, text: str, spans: list[tuple[int, int]]) -> list[int]:
    """Token positions (BOS counted) whose characters fall inside ``spans``."""
    enc = model.tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
    shift = model.to_tokens(text).shape[1] - len(enc["input_ids"])  # a prepended BOS
    return [k + shift for k, (s, e) in enumerate(enc["offset_mapping"]) if e > s and any(a <= s and e <= b for a, b in spans)]


@torch.no_grad()
def pathways(model: HookedTransformer, adapter: TaskAdapter, run: BaseRun, max_pairs: int = 256) -> dict:
    """Share of the answer's logit difference restored by clean operand tokens vs clean CoT tokens."""
    idx = run.usable()
    texts = {i: run.prompts[i] + "".join(run.steps[i]) + adapter.answer_mark for i in idx}
    tokens = {i: model.to_tokens(texts[i]) for i in idx}
    by_len: dict[int, list[int]] = {}
    for i in idx:
        by_len.setdefault(tokens[i].shape[1], []).append(i)
    groups, budget = [], max_pairs
    for group in by_len.values():  # pair each example with the next of the same length (a different problem)
        pairs = [(a, b) for a, b in zip(group, group[1:] + group[:1]) if a != b and run.answers[a] != run.answers[b]]
        if pairs and budget > 0:
            groups.append(pairs[:budget])
            budget -= len(groups[-1])
    if not groups:
        return {"supported": False, "why": "no two examples of one token length with different answers"}
    # Per pair: the logit of the clean run's predicted token minus the corrupted run's, in the clean, corrupted
    # and hybrid runs. A group's share is (hybrid - corrupted) / (clean - corrupted) of the means over pairs.
    per_batch: list[dict[str, np.ndarray]] = []
    for pairs in groups:
        clean = torch.cat([tokens[a] for a, _ in pairs])
        corrupt = torch.cat([tokens[b] for _, b in pairs])
        try:
            _, clean_k, corrupt_k, keep = prediction_logit_diff(model, clean, corrupt)
        except WorkbenchError:  # every pair predicts the same first answer token: nothing to measure
            continue
        kept = [p for p, k in zip(pairs, keep.tolist()) if k]
        last_clean, last_corrupt = model(clean_k)[:, -1], model(corrupt_k)[:, -1]
        good, bad = last_clean.argmax(-1, keepdim=True), last_corrupt.argmax(-1, keepdim=True)

        def diff(last):
            return (last.gather(1, good) - last.gather(1, bad))[:, 0].float().cpu().numpy()

        values = {"clean": diff(last_clean), "corrupt": diff(last_corrupt)}
        for group in ("operands", "cot"):
            hybrid = corrupt_k.clone()
            for row, (a, _) in enumerate(kept):
                pos = _positions(model, texts[a], adapter.spans(texts[a])[group])
                hybrid[row, pos] = clean_k[row, pos]
            values[group] = diff(model(hybrid)[:, -1])
        per_batch.append(values)
    n_used = sum(len(v["clean"]) for v in per_batch)
    if not n_used:
        return {"supported": False, "why": "the paired runs never predict different answer tokens"}

    def shares(batches) -> dict[str, float]:
        out = {}
        for g in ("operands", "cot"):
            num = sum(len(v["clean"]) * (v[g].mean() - v["corrupt"].mean()) / (v["clean"].mean() - v["corrupt"].mean())
                      for v in batches)
            out[g] = float(num / sum(len(v["clean"]) for v in batches))
        return out

    share = shares(per_batch)
    rng = np.random.default_rng(0)  # bootstrap over pairs within each token-length batch
    boots = []
    for _ in range(200):
        picks = [{k: x[idx] for k, x in v.items()} for v in per_batch
                 for idx in [rng.integers(0, len(v["clean"]), len(v["clean"]))]]
        boots.append(shares(picks))
    ci = {g: [round(float(np.quantile([b[g] for b in boots], q)), 4) for q in (0.025, 0.975)] for g in share}
    return {"supported": True, "pairs": n_used, "restored_by_operands": share["operands"], "restored_by_cot": share["cot"],
            "restored_by_operands_ci95": ci["operands"], "restored_by_cot_ci95": ci["cot"]}


@torch.no_grad()
def answer_in_lens(model: HookedTransformer, run: BaseRun, batch_size: int = 256) -> dict:
    """Does the answer show in the logit lens before any CoT is written?

    At the prompt's last position (where the model starts its CoT, or answers directly), each layer's logit-lens
    readout ranks the answer's first token among the digit tokens (among all tokens if the tokenizer has no
    single-digit tokens). Chance for "top among digits" is 1/10.
    """
    idx = [i for i, a in enumerate(run.answers) if a is not None]
    if not idx:
        return {"supported": False, "why": "no parsable answers"}
    digits = [model.tokenizer.convert_tokens_to_ids(str(d)) for d in range(10)]
    have_digits = all(isinstance(t, int) and t != model.tokenizer.unk_token_id for t in digits)
    first = torch.tensor([model.to_single_token(str(run.answers[i])[0]) if have_digits else
                          model.tokenizer(str(run.answers[i]), add_special_tokens=False)["input_ids"][0] for i in idx])
    by_len: dict[int, list[int]] = {}
    toks = [model.to_tokens(run.prompts[i])[0] for i in idx]
    for k, t in enumerate(toks):
        by_len.setdefault(len(t), []).append(k)
    top, labels = None, None
    for group in by_len.values():
        for s in range(0, len(group), batch_size):
            rows = group[s : s + batch_size]
            _, cache = model.run_with_cache(torch.stack([toks[k] for k in rows]),
                                            names_filter=lambda n: n.endswith(("hook_resid_pre", "hook_resid_post", "hook_scale")))
            resid, labels = cache.accumulated_resid(apply_ln=True, return_labels=True, pos_slice=-1)  # [layer, batch, d]
            logits = model.unembed(resid[:, :, None])[:, :, 0]  # [layer, batch, vocab]
            if have_digits:
                logits = logits[..., digits]
                target = torch.tensor([digits.index(int(first[k])) for k in rows])
            else:
                target = first[rows]
            hit = (logits.argmax(-1) == target).float()  # [layer, batch]
            top = hit.sum(1) if top is None else top + hit.sum(1)
    rate_by_layer = (top / len(idx)).tolist()
    return {"supported": True, "layers": list(labels), "answer_first_token_top": rate_by_layer,
            "among": "digit tokens" if have_digits else "all tokens", "chance": 0.1 if have_digits else None,
            "best": max(rate_by_layer), "n": len(idx)}
