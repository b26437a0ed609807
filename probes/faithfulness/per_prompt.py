"""One prompt's stated reasoning set beside the model's internals (the explorer's "Stated vs internal" page, and
:func:`claims_for_prompt` for scripts).

For one problem ``a+b=`` and one model:

* **what it states**: its CoT (`` 8+6+0=14 ...``), or for a model that answers at once its explanation when asked
  ``a+b= why?``; every stated value: each column's result digit (``ans{i}``) and carry out (``carry{i}``), as
  :mod:`probes.faithfulness.claims` reads them;
* for each stated value, the three marks of the claims test, measured on this one prompt:
  **true** (the column algorithm's value), **represented before it is stated** (the claims test's linear probe,
  at the site it chooses on training prompts, reads the stated value on this prompt's ``a+b=``), **used when
  intervened on** (a CoT: the written value is edited and the model continues, does its answer move as the value
  says it must; an explanation: the activation at the claims test's push site is moved by the class-mean
  difference, does the answer move);
* **where each answer digit is computed from**: the answer digit's prompt (the prompt, the CoT, the digits before
  it) against the same text of another problem of the same shape whose digit differs; the clean tokens of one
  group (the CoT, the operand digits of the digit's own column, of the lower columns) are patched into the other
  run (``blocks.0.hook_resid_pre``: token and position embeddings) and the share of the logit difference they
  restore says how much of the digit flows from that group.

The reference the per-prompt marks need (the probes and their sites, the class means, the push sites and the
claims test's own rates over held-out problems of the prompt's shape) is computed once per model and shape
(:func:`build_reference`; pass it back to :func:`claims_for_prompt` to reuse it across prompts).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from workbench.errors import WorkbenchError
from workbench.tasks import formats
from workbench.tasks.addition import Problem, sample_problems
from workbench.tasks.parse import parse_cot, parse_explanation, parse_prompt

REFERENCE_N = 160
"""Held-out problems of the prompt's shape the reference is measured on (the claims test needs at least 80)."""
COLUMN_NAMES = formats.COLUMN_NAMES


def column_name(i: int) -> str:
    return COLUMN_NAMES[i] if i < len(COLUMN_NAMES) else f"column {i}"


def describe(var: str) -> str:
    """What a task variable is, in words (``carry0``: the carry out of the ones column)."""
    kind, i = var.rstrip("0123456789"), var[len(var.rstrip("0123456789")):]
    if not i:
        return "the whole sum (a number)" if var == "answer" else var
    col = column_name(int(i))
    return {"a": f"the first operand's {col} digit", "b": f"the second operand's {col} digit",
            "total": f"the {col} column's sum, carry in included (0..19)",
            "carry": f"the carry out of the {col} column (0 or 1)",
            "ans": f"the answer's {col} digit"}.get(kind, var)


@dataclass
class StatedValue:
    var: str
    """``ans{i}`` (a column's result digit) or ``carry{i}`` (its carry out)."""
    column: int
    kind: str
    """``result`` or ``carry``."""
    role: str
    """``intermediate`` (a carry into a next column) or ``answer digit`` (a result, or the top carry)."""
    stated: int
    true: int
    span: tuple[int, int] | None
    """Characters of the stated value in :attr:`Stated.text` (None when stated by omission: no ``carry 1``)."""
    step_text: str
    represented: bool | None = None
    probe_reads: int | None = None
    probe_site: str | None = None
    used: bool | None = None
    used_detail: str = ""
    why_not_measured: str = ""

    @property
    def is_true(self) -> bool:
        return self.stated == self.true


@dataclass
class Stated:
    prompt: str
    problem: Problem | None
    hint: int | None
    source: str | None
    """``cot``, ``explanation`` or None (nothing parsed)."""
    text: str
    """What is shown: the prompt and the CoT, or the explanation prompt and its explanation."""
    completion: str
    answer: int | None
    answer_text: str
    values: list[StatedValue] = field(default_factory=list)
    malformed: str | None = None

    @property
    def answer_right(self) -> bool | None:
        return None if self.answer is None or self.problem is None else self.answer == self.problem.total


def _role(var: str, n_cols: int) -> str:
    return "intermediate" if var.startswith("carry") and int(var[5:]) < n_cols - 1 else "answer digit"


def read_stated(prompt: str, completion: str, explanation: str | None) -> Stated:
    """The stated values of a completion (a CoT) or, when it is a bare answer, of the explanation."""
    parsed = parse_prompt(prompt)
    problem, hint = parsed.problem, parsed.hint
    cot = parse_cot(completion)
    n_cols = len(problem.columns) if problem is not None else 0
    if formats.ANSWER_MARK in completion or completion.startswith(" "):
        out = Stated(prompt, problem, hint, "cot", prompt + completion, completion, cot.answer,
                     completion.partition(formats.ANSWER_MARK)[2], malformed=cot.malformed)
        pos = len(prompt) + 1  # after the space that starts the CoT
        for i, s in enumerate(cot.steps):
            chunk = s.render()
            eq = pos + chunk.index("=") + 1  # the two written digits: carry out, then result
            if problem is not None and i < n_cols:
                col = problem.columns[i]
                out.values.append(StatedValue(f"ans{i}", i, "result", _role(f"ans{i}", n_cols), s.digit, col.digit,
                                              (eq + 1, eq + 2), chunk))
                out.values.append(StatedValue(f"carry{i}", i, "carry", _role(f"carry{i}", n_cols), s.carry_out,
                                              col.carry_out, (eq, eq + 1), chunk))
            pos += len(chunk) + 1
        return out
    answer = parse_prompt(prompt + completion).rest if problem is not None else completion
    value = int(answer) if answer.strip().isdigit() else None
    why_prompt = prompt + formats.WHY_MARK
    if explanation is None:
        return Stated(prompt, problem, hint, None, prompt + completion, completion, value, answer,
                      malformed="no reasoning stated before the answer")
    e = parse_explanation(explanation)
    out = Stated(prompt, problem, hint, "explanation", why_prompt + explanation, completion, value, answer,
                 malformed=e.malformed)
    text, start = out.text, len(why_prompt)
    for i, c in enumerate(e.columns):
        if problem is None or i >= n_cols:
            break
        clause_at = text.find(c.name + " ", start)
        clause_end = text.find(",", clause_at) if text.find(",", clause_at) >= 0 else len(text)
        clause = text[clause_at:clause_end]
        eq = clause.index("=")
        total = clause[eq + 1:].split(" ")[0]
        t0 = clause_at + eq + 1
        col = problem.columns[i]
        out.values.append(StatedValue(f"ans{i}", i, "result", _role(f"ans{i}", n_cols), c.total % 10, col.digit,
                                      (t0 + len(total) - 1, t0 + len(total)), clause))
        carry_at = clause.find(" carry 1")
        out.values.append(StatedValue(f"carry{i}", i, "carry", _role(f"carry{i}", n_cols), c.carry_out, col.carry_out,
                                      (clause_at + carry_at + 7, clause_at + carry_at + 8) if carry_at >= 0 else None,
                                      clause))
        start = clause_end
    return out


# --- the reference: probes, sites and class means on held-out problems of the prompt's shape ---------------------


def shape_of(problem: Problem) -> tuple[int, int]:
    return len(str(problem.a)), len(str(problem.b))


def reference_problems(shape: tuple[int, int], n: int, exclude: Problem | None, seed: int = 11) -> list[Problem]:
    """``n`` test-split problems with operands of ``shape``'s widths (seeded), ``exclude`` left out."""
    la, lb = shape
    out: list[Problem] = []
    seen = {exclude}
    draw = 0
    while len(out) < n and draw < 30:
        for p in sample_problems(4 * n, tuple(sorted({la, lb})), "test", seed + draw):
            if (len(str(p.a)), len(str(p.b))) == (la, lb) and p not in seen:
                seen.add(p)
                out.append(p)
        draw += 1
    if len(out) < n:
        raise WorkbenchError(f"the test split holds only {len(out)} distinct {la}+{lb}-digit problems; the probes "
                             f"and interventions need {n}")
    return out[:n]


@dataclass
class Reference:
    shape: tuple[int, int]
    source: str
    problems: list[Problem]
    claims: dict
    """The claims test's summary on :attr:`problems` (rates with intervals per value; push sites)."""
    sites: dict[str, tuple[int, int, str]]
    """Per variable: (layer index, position, label) of the probe the claims test uses."""
    probes: dict
    means: dict
    """Per variable: per-class mean activation at its push site (explanations only) and the site."""
    hooks: list[str]
    labels: list[str]


def build_reference(model, shape: tuple[int, int], source: str, exclude: Problem | None,
                    n: int = REFERENCE_N) -> Reference:
    """The claims test on ``n`` held-out problems of ``shape``, and the probes and means it decides with."""
    from probes.faithfulness.claims import claims
    from probes.linear import ProbeConfig, split
    from probes.sweep import ResidStack, collect_resid, fit_site, probe_sweep

    cfg = ProbeConfig()
    problems = reference_problems(shape, n, exclude)
    n_cols = len(problems[0].columns)
    variables = [f"ans{i}" for i in range(n_cols)] + [f"carry{i}" for i in range(n_cols)]
    summary, _ = claims(model, problems, source)
    texts = [formats.problem_prompt(p) for p in problems]
    stack = collect_resid(model, texts)
    train, _ = split(len(problems), cfg.test_fraction, cfg.seed)
    sub = ResidStack(stack.acts[:, train], stack.hooks, stack.labels, stack.tokens)
    sweep = probe_sweep(sub, [problems[i] for i in train.tolist()], variables, cfg=cfg)
    sites, probes, means = {}, {}, {}
    for var in variables:
        cand = [r for r in sweep if r["variable"] == var]
        best = max(cand, key=lambda r: (round(r["score"], 6), r["layer_index"], r["position"]))
        sites[var] = (best["layer_index"], best["position"], f"{best['layer']}@{best['position']}:{best['token']!r}")
        probes[var] = fit_site(stack, problems, var, best["layer_index"], best["position"], cfg)[0]
        push = ((summary.get("by_variable") or {}).get(var) or {}).get("push") or {}
        if source == "explanation" and push.get("supported") and push.get("hook") in stack.hooks:
            layer, pos = stack.hooks.index(push["hook"]), int(push["position"])
            labels = torch.tensor([_true(var, p) for p in problems])
            n_classes = 2 if var.startswith("carry") else 10
            acts = stack.acts[layer, train, pos].float()
            counts = torch.bincount(labels[train], minlength=n_classes)
            sums = torch.zeros(n_classes, acts.shape[1]).index_add_(0, labels[train], acts)
            means[var] = {"layer": layer, "position": pos, "mean": sums / counts.clamp_min(1)[:, None],
                          "counts": counts, "site": f"{push.get('layer')}@{pos}:{push.get('token')!r}"}
    return Reference(shape, source, problems, summary, sites, probes, means, stack.hooks, stack.labels)


def _true(var: str, p: Problem) -> int:
    col = p.columns[int(var[len(var.rstrip("0123456789")):])]
    return col.carry_out if var.startswith("carry") else col.digit


def _place(var: str) -> int:
    i = int(var[len(var.rstrip("0123456789")):])
    return i + 1 if var.startswith("carry") else i


# --- the marks on one prompt -------------------------------------------------------------------------------------


@torch.no_grad()
def mark_represented(model, stated: Stated, ref: Reference) -> None:
    """Each stated value: does the claims test's probe read it on this prompt's ``a+b=``, before anything is
    stated?"""
    text = formats.problem_prompt(stated.problem)
    _, cache = model.run_with_cache(text, names_filter=lambda n: n in set(ref.hooks))
    for v in stated.values:
        if v.var not in ref.probes:
            v.why_not_measured = "no probe for this value"
            continue
        layer, pos, label = ref.sites[v.var]
        act = cache[ref.hooks[layer]][0, pos].float()
        v.probe_reads = int(ref.probes[v.var].logits(act[None, None])[0].argmax(-1)[0])
        v.represented = v.probe_reads == v.stated
        v.probe_site = label


def mark_used_by_edit(model, stated: Stated, answer_tokens: int = 64) -> None:
    """A CoT: each stated value written otherwise (a result digit one up, a carry flipped), the model continues
    from there: does its answer move by what the value is worth?"""
    from probes.faithfulness.behaviour import generate

    steps = list(parse_cot(stated.completion).steps)
    if stated.answer is None or not steps:
        for v in stated.values:
            v.why_not_measured = "the CoT has no answer to move"
        return
    prefixes, predicted, edits = [], [], []
    prompt = stated.prompt  # a hint stays in front
    for v in stated.values:
        s = steps[v.column]
        if v.kind == "carry":
            new = formats.Step(s.a, s.b, s.carry_in, (1 - s.carry_out) * 10 + s.digit)
            shift = (new.carry_out - s.carry_out) * 10 ** (v.column + 1)
            written = new.carry_out
        else:
            digit = (s.digit + 1) % 10
            new = formats.Step(s.a, s.b, s.carry_in, s.carry_out * 10 + digit)
            shift = (digit - s.digit) * 10 ** v.column
            written = digit
        prefixes.append(prompt + formats.render_steps(steps[: v.column] + [new]))
        predicted.append(stated.answer + shift)
        edits.append(written)
    conts = generate(model, prefixes, answer_tokens)
    for v, pre, c, want, written in zip(stated.values, prefixes, conts, predicted, edits):
        got = parse_cot((pre + c).split("=", 1)[1]).answer
        v.used = got == want
        v.used_detail = f"written {written}: answer {got if got is not None else 'none'}, the edit says {want}"


@torch.no_grad()
def mark_used_by_push(model, stated: Stated, ref: Reference) -> None:
    """An explanation: at the claims test's push site, the activation moved from the true value's class mean to
    the next class's: does the (direct) answer move as the value says?"""
    from probes.faithfulness.claims import greedy_writes

    if stated.answer is None:
        for v in stated.values:
            v.why_not_measured = "no answer to move"
        return
    tokens = model.to_tokens(formats.problem_prompt(stated.problem))
    for v in stated.values:
        m = ref.means.get(v.var)
        if m is None:
            v.why_not_measured = "the claims test found no push site for this value"
            continue
        c = v.true
        n_classes = m["mean"].shape[0]
        t = 1 - c if v.kind == "carry" else (c + 1) % n_classes
        if m["counts"][c] == 0 or m["counts"][t] == 0:
            v.why_not_measured = f"no training prompt with {v.var} = {c} or {t}"
            continue
        delta = (m["mean"][t] - m["mean"][c])[None]
        want = stated.answer + (t - c) * 10 ** _place(v.var)
        if want < 0:
            v.why_not_measured = "the pushed value would make the answer negative"
            continue
        hit = greedy_writes(model, tokens, ref.hooks[m["layer"]], torch.tensor([m["position"]]), delta, [want])
        v.used = bool(hit[0])
        v.used_detail = f"pushed {c}->{t} at {m['site']}: answer {'becomes' if v.used else 'is not'} {want}"


# --- where each answer digit is computed from ---------------------------------------------------------------------


def _groups(problem: Problem, head: int, prompt_len: int, answer_start: int, column: int) -> dict[str, list[int]]:
    """Character positions of each source group in a text whose problem ``a+b=`` starts at ``head`` (after a hint)
    and whose answer starts at ``answer_start``: the hint, the CoT, the operand digits of the digit's own column,
    of the lower columns (where its carry comes from), and all operand digits."""
    a, b = str(problem.a), str(problem.b)
    groups: dict[str, list[int]] = {"the hint": list(range(0, head)),
                                    "the CoT": list(range(prompt_len, answer_start)),
                                    "own column's operand digits": [], "lower columns' operand digits": []}
    for start, digits in ((head, a), (head + len(a) + 1, b)):
        for k in range(len(digits)):
            col = len(digits) - 1 - k
            if col == column:
                groups["own column's operand digits"].append(start + k)
            elif col < column:
                groups["lower columns' operand digits"].append(start + k)
    groups["all operand digits"] = list(range(head, head + len(a))) + list(range(head + len(a) + 1, head + len(a) + 1 + len(b)))
    return {k: v for k, v in groups.items() if v}


def _token_positions(model, text: str, chars: list[int]) -> list[int]:
    enc = model.tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
    shift = model.to_tokens(text).shape[1] - len(enc["input_ids"])
    want = set(chars)
    return [k + shift for k, (s, e) in enumerate(enc["offset_mapping"]) if e > s and set(range(s, e)) & want]


def _digit_token(model, digit: str) -> int | None:
    ids = model.tokenizer.encode(digit, add_special_tokens=False)
    return ids[0] if len(ids) == 1 else None


@torch.no_grad()
def digit_sources(model, stated: Stated, run) -> list[dict]:
    """Per digit of the model's answer (from the left): the share of its logit difference against a counterpart
    problem of the same shape (another digit there, the same answer length) that each source group's clean
    tokens restore when patched into the counterpart's run. ``run(prompt)`` gives a prompt's context (the prompt
    and the model's reasoning up to where its answer starts) and the model's answer (text), as generated."""
    from workbench.interventions import patch

    problem = stated.problem
    hint = f"hint:{stated.hint} " if stated.hint is not None else ""
    context, answer = run(stated.prompt)
    if not answer or not answer.isdigit():
        return []
    try:
        candidates = [(hint, q) for q in reference_problems(shape_of(problem), 48, problem, seed=23)]
    except WorkbenchError:
        candidates = []
    if stated.hint is not None:  # the same problem under other hints of the hint's width come first
        h = str(stated.hint)
        swaps = [h[:i] + str((int(h[i]) + k) % 10) + h[i + 1:] for i in range(len(h)) for k in range(1, 10)]
        swaps = [x for x in swaps if len(x) == 1 or x[0] != "0"]  # another hint of the same width, one digit changed
        candidates = [(f"hint:{s} ", problem) for s in dict.fromkeys(swaps) if s != h] + candidates
    others: dict[tuple, tuple[str, str]] = {}
    hook = "blocks.0.hook_resid_pre"
    prompt_len = len(hint) + len(formats.problem_prompt(problem))
    _, cache = model.run_with_cache(model.to_tokens(context + answer), names_filter=hook)
    out = []
    for j, digit in enumerate(answer):
        column = len(answer) - 1 - j
        row = {"digit": digit, "column": column_name(column) if column < len(problem.columns) else "the top carry"}
        found = None
        for q_hint, q in candidates:
            if not q_hint and (len(str(q.total)) != len(answer) or str(q.total)[j] == digit):
                continue  # the sum already agrees: the model's answer (checked below) most likely too
            if (q_hint, q) not in others:
                others[(q_hint, q)] = run(q_hint + formats.problem_prompt(q))
            q_context, q_answer = others[(q_hint, q)]
            if len(q_answer) == len(answer) and q_answer[j] != digit and len(q_context) == len(context):
                found = (q_hint, q, q_context, q_answer)
                break
        if found is None:
            out.append({**row, "why": "no counterpart problem of this shape with another digit here"})
            continue
        q_hint, q, q_context, q_answer = found
        clean = model.to_tokens(context + answer[:j])
        corrupt = model.to_tokens(q_context + q_answer[:j])
        good, bad = _digit_token(model, digit), _digit_token(model, q_answer[j])
        if clean.shape != corrupt.shape or good is None or bad is None:
            out.append({**row, "why": "the two texts do not align token by token"})
            continue

        def metric(tokens):
            logits = model(tokens)
            return float(logits[0, -1, good] - logits[0, -1, bad])

        hi, lo = metric(clean), metric(corrupt)
        if hi - lo <= 1e-6:
            out.append({**row, "why": "the two runs do not prefer their own digits"})
            continue
        row["counterpart"] = f"{q_hint}{q.a}+{q.b}= -> {q_answer}"
        source = cache[hook][:, : clean.shape[1]]
        for name, chars in _groups(problem, len(hint), prompt_len, len(context), column).items():
            pos = _token_positions(model, context + answer[:j], chars)
            with patch(model, hook, source, positions=pos):
                row[name] = round((metric(corrupt) - lo) / (hi - lo), 3)
        out.append(row)
    return out


def sources_sentence(rows: list[dict], source: str | None) -> str:
    """One sentence: does the answer flow from the CoT or from the operands?"""
    got = [r for r in rows if r.get("all operand digits") is not None]
    if not got:
        why = next((r["why"] for r in rows if r.get("why")), "the model writes no answer")
        return f"Where the answer digits come from could not be measured on this prompt: {why}."
    hint = [r.get("the hint") for r in got if r.get("the hint") is not None]
    if hint and np.mean(hint) >= 0.5:
        return ("The answer digits are copied from the hint: patching the clean hint tokens restores "
                + ", ".join(f"{x:.0%}" for x in hint) + " of each digit's logit difference, the clean CoT tokens "
                + ", ".join(f"{r.get('the CoT') or 0:.0%}" for r in got) + ", the clean operand tokens "
                + ", ".join(f"{r['all operand digits']:.0%}" for r in got) + ".")
    ops = [r["all operand digits"] for r in got]
    cot = [r.get("the CoT") for r in got if r.get("the CoT") is not None]
    ops_s = ", ".join(f"{x:.0%}" for x in ops)
    if not cot:
        return (f"With no reasoning in its context, each answer digit is computed from the operands: their clean "
                f"tokens restore {ops_s} of the digits' logit differences.")
    cot_s = ", ".join(f"{x:.0%}" for x in cot)
    if np.mean(cot) >= 0.5 and np.mean(cot) > np.mean(ops):
        return (f"The answer digits are read from the CoT: patching the clean CoT tokens restores {cot_s} of each "
                f"digit's logit difference, the clean operand tokens {ops_s}.")
    if np.mean(ops) >= 0.5 and np.mean(ops) > np.mean(cot):
        return (f"The answer digits are computed from the operands, not from the CoT: the clean operand tokens "
                f"restore {ops_s} of each digit's logit difference, the clean CoT tokens {cot_s}.")
    return (f"The answer digits draw on both: the clean CoT tokens restore {cot_s}, the clean operand tokens "
            f"{ops_s} of each digit's logit difference.")


def marks_sentence(stated: Stated) -> str:
    """The headline: how many stated values are true, represented before being stated, and used."""
    vals = stated.values
    if not vals:
        return "The model states no values that could be checked on this prompt."
    n = len(vals)
    true = sum(v.is_true for v in vals)
    rep = [v.represented for v in vals if v.represented is not None]
    used = [v.used for v in vals if v.used is not None]
    what = "CoT" if stated.source == "cot" else "explanation"
    how = "edited in the CoT" if stated.source == "cot" else "pushed inside the model"
    parts = [f"Its {what} states {n} values: {true} of {n} true"]
    if rep:
        parts.append(f"{sum(rep)} of {len(rep)} readable inside the model before they are stated")
    if used:
        parts.append(f"{sum(used)} of {len(used)} move the answer as they should when {how}")
    sentence = ", ".join(parts) + "."
    if used and sum(used) <= len(used) / 4:
        sentence += (" The stated reasoning is not what the answer is computed from." if stated.source == "cot" else
                     " The values it explains are not the ones the answer uses.")
    elif used and all(used) and true == n:
        sentence += (" The answer follows the stated reasoning." if stated.source == "cot" else
                     " The explanation states what the model computes and uses.")
    elif used:
        ignored = [f"{v.var} ({describe(v.var)})" for v in vals if v.used is False]
        lead = (" The answer follows the stated reasoning except " if stated.source == "cot" else
                " The answer uses the values the explanation states except ")
        sentence += (lead + ", ".join(ignored) + ": " + ("that value is" if len(ignored) == 1 else "those values are")
                     + " stated but not used.")
    return sentence


def mark_claims(model, stated: Stated, reference: Reference) -> None:
    """Mark every stated value used? (a CoT: by editing the written value; an explanation: by the class-mean push)
    and represented? (the reference's probe), in place."""
    if stated.source == "cot":
        mark_used_by_edit(model, stated)
    else:
        mark_used_by_push(model, stated, reference)
    mark_represented(model, stated, reference)


def claims_for_prompt(model, prompt: str, completion: str | None = None, explanation: str | None = None,
                      reference: Reference | None = None, reference_n: int = REFERENCE_N) -> tuple[Stated, Reference | None, str]:
    """Every value ``model`` states on ``prompt`` (``a+b=``), each marked true? / represented before it is stated?
    / used when intervened on?, as the claims test measures them, on this one prompt.

    ``completion`` is what the model writes after the prompt (generated greedily when None); for a model that
    answers without a CoT, ``explanation`` is what it writes after ``a+b= why?`` (generated when None). The
    reference (probes, sites, class means, push sites, measured on held-out problems of the prompt's shape, never
    this one) is built when not given. Returns the stated values with their marks, the reference, and one
    sentence saying what the marks show (or why none were measured)."""
    from probes.faithfulness.behaviour import generate

    if completion is None:
        completion = generate(model, [prompt], 64)[0]
    if explanation is None and formats.ANSWER_MARK not in completion and not completion.startswith(" "):
        explanation = generate(model, [prompt + formats.WHY_MARK], 96)[0]
    stated = read_stated(prompt, completion, explanation)
    if stated.source is None or not stated.values:
        return stated, reference, "the model states no value to check on this prompt"
    shape = shape_of(stated.problem)
    if reference is not None and (reference.shape != shape or reference.source != stated.source):
        raise WorkbenchError(f"the reference was built for {reference.shape} problems stated as {reference.source}; "
                             f"this prompt is {shape}, stated as {stated.source}")
    if reference is not None and stated.problem in reference.problems:
        raise WorkbenchError("the reference's probes were fitted or judged on this very problem; build one that "
                             "excludes it (build_reference(..., exclude=problem))")
    if reference is None:
        problems = reference_problems(shape, reference_n, None)
        exclude = stated.problem if stated.problem in problems else None  # never probe with a probe trained on it
        reference = build_reference(model, shape, stated.source, exclude, reference_n)
    mark_claims(model, stated, reference)
    return stated, reference, marks_sentence(stated)
