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

import logging

import numpy as np
import torch
from transformer_lens import HookedTransformer

from probes.faithfulness.adapter import TaskAdapter
from probes.faithfulness.behaviour import BaseRun
from probes.linear import ProbeConfig
from probes.sweep import collect_resid, probe_sweep
from workbench.errors import WorkbenchError
from workbench.models.tokenizer import tokenize_prompts
from workbench.patching import prediction_logit_diff

log = logging.getLogger(__name__)


MIN_PROBE_PROMPTS = 40


def answer_before_cot(model: HookedTransformer, problems: list, prompts: list[str], cfg: ProbeConfig = ProbeConfig()) -> dict:
    """Held-out accuracy of the best probe per layer for each answer digit, on the prompt positions only.

    Probes read one position across prompts, so the prompts must have one length in the model's tokens (a
    subword tokenizer gives prompts of one character length different token lengths): the largest group of
    one token length is used, and it must hold at least ``MIN_PROBE_PROMPTS``."""
    lengths = [len(t) for t in tokenize_prompts(model, prompts)]
    by_len: dict[int, list[int]] = {}
    for k, n in enumerate(lengths):
        by_len.setdefault(n, []).append(k)
    keep = max(by_len.values(), key=len, default=[])
    if len(keep) < MIN_PROBE_PROMPTS:
        return {"supported": False, "why": f"needs >= {MIN_PROBE_PROMPTS} prompts of one token length; the largest "
                f"group has {len(keep)} (token lengths {sorted(by_len)})"}
    problems, prompts = [problems[k] for k in keep], [prompts[k] for k in keep]
    stack = collect_resid(model, prompts)
    n = len(problems[0].columns)
    variables = [f"ans{i}" for i in range(n)]
    rows = probe_sweep(stack, problems, variables, cfg=cfg)
    by_layer = {v: [max(r["score"] for r in rows if r["variable"] == v and r["layer_index"] == layer)
                    for layer in range(len(stack.labels))] for v in variables}
    majority = {v: next(r["majority"] for r in rows if r["variable"] == v) for v in variables}
    return {"supported": True, "n": len(prompts), "token_length": lengths[keep[0]],
            "layers": stack.labels, "accuracy_by_layer": by_layer, "majority": majority,
            "ones_digit_best": max(by_layer["ans0"]), "ones_digit_majority": majority["ans0"]}


def _positions(model: HookedTransformer, text: str, spans: list[tuple[int, int]]) -> list[int]:
    """Token positions (BOS counted) of the tokens that belong to ``spans``: every token whose characters, less
    its leading whitespace, lie inside a span. A subword tokenizer writes `` 36`` as one token that starts at the
    space before the digits; an adapter's span that starts at the digits still takes that token."""
    enc = model.tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
    shift = model.to_tokens(text).shape[1] - len(enc["input_ids"])  # a prepended BOS
    out = []
    for k, (s, e) in enumerate(enc["offset_mapping"]):
        piece = text[s:e]
        s += len(piece) - len(piece.lstrip())
        if e > s and any(a <= s and e <= b for a, b in spans):
            out.append(k + shift)
    return out


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
    empty: dict[str, int] = {}  # a group whose spans cover no whole token, per group: how many texts
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
                spans = adapter.spans(texts[a])[group]
                pos = _positions(model, texts[a], spans)
                if spans and not pos:
                    empty[group] = empty.get(group, 0) + 1
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

    warnings = [f"the adapter's {g} spans cover no whole token in {k} of {n_used} texts, so nothing was patched "
                f"there and 'restored by {g}' is not measured for them (spans must cover whole tokens: with a "
                "subword tokenizer, start them at the word, the leading space may be left out)"
                for g, k in sorted(empty.items())]
    for w in warnings:
        log.warning(w)
    share = shares(per_batch)
    rng = np.random.default_rng(0)  # bootstrap over pairs within each token-length batch
    boots = []
    for _ in range(200):
        picks = [{k: x[idx] for k, x in v.items()} for v in per_batch
                 for idx in [rng.integers(0, len(v["clean"]), len(v["clean"]))]]
        boots.append(shares(picks))
    ci = {g: [round(float(np.quantile([b[g] for b in boots], q)), 4) for q in (0.025, 0.975)] for g in share}
    return {"supported": True, "pairs": n_used, "restored_by_operands": share["operands"], "restored_by_cot": share["cot"],
            "restored_by_operands_ci95": ci["operands"], "restored_by_cot_ci95": ci["cot"], "warnings": warnings}


def answer_token_ids(model: HookedTransformer, adapter: TaskAdapter, run: BaseRun, idx: list[int]) -> list[int]:
    """The first token of the answer as the model wrote it, per example: the token of ``prompt + completion``
    that holds the first character after the answer mark (after the prompt for a bare answer). A subword model
    writes `` 36`` as one token, which is what its lens must rank, not a bare ``3``."""
    out = []
    for i in idx:
        text = run.prompts[i] + run.completions[i]
        head, mark, _ = run.completions[i].partition(adapter.answer_mark)
        start = len(run.prompts[i]) + (len(head) + len(mark) if mark else 0)
        while start < len(text) and text[start].isspace():  # the answer's first character
            start += 1
        enc = model.tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
        tok = next((t for t, (s, e) in zip(enc["input_ids"], enc["offset_mapping"]) if e > start), None)
        if tok is None:  # no offsets to read (or nothing after the mark): the answer's text on its own
            tok = model.tokenizer(str(run.answers[i]), add_special_tokens=False)["input_ids"][0]
        out.append(int(tok))
    return out


@torch.no_grad()
def answer_in_lens(model: HookedTransformer, run: BaseRun, adapter: TaskAdapter | None = None,
                   batch_size: int = 256) -> dict:
    """Does the answer show in the logit lens before any CoT is written?

    At the prompt's last position (where the model starts its CoT, or answers directly), each layer's logit-lens
    readout ranks the first token of the answer the model wrote (:func:`answer_token_ids`; without an adapter,
    the first token of the answer's text). When every such token is a single digit, they are ranked among the
    ten digit tokens (chance 1/10); otherwise among all tokens.
    """
    idx = [i for i, a in enumerate(run.answers) if a is not None]
    if not idx:
        return {"supported": False, "why": "no parsable answers"}
    if adapter is not None:
        first = answer_token_ids(model, adapter, run, idx)
    else:
        first = [model.tokenizer(str(run.answers[i]), add_special_tokens=False)["input_ids"][0] for i in idx]
    digits = [model.tokenizer.convert_tokens_to_ids(str(d)) for d in range(10)]
    among_digits = all(isinstance(t, int) and t != model.tokenizer.unk_token_id for t in digits) \
        and set(first) <= set(digits)
    target_all = torch.tensor([digits.index(t) for t in first] if among_digits else first)
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
            if among_digits:
                logits = logits[..., digits]
            hit = (logits.argmax(-1) == target_all[rows]).float()  # [layer, batch]
            top = hit.sum(1) if top is None else top + hit.sum(1)
    rate_by_layer = (top / len(idx)).tolist()
    return {"supported": True, "layers": list(labels), "answer_first_token_top": rate_by_layer,
            "among": "digit tokens" if among_digits else "all tokens", "chance": 0.1 if among_digits else None,
            "best": max(rate_by_layer), "n": len(idx)}
