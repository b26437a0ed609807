"""Probes of a user's own variables: a JSONL file of prompts, each with the values of the variables to probe.

Each line is ``{"prompt": "...", "labels": {"VARIABLE": value, ...}}``; every line names the same variables.
A variable is a class variable (values: strings, integers or booleans; each distinct value is a class) unless it
is listed in ``regress`` (numbers; probed by ridge regression, scored by held-out R^2).

Positions: prompts of one token length are probed at every position. Prompts of several lengths are aligned at
their end and probed at the last ``k`` positions, ``k`` the shortest prompt's length (position ``-1`` is every
prompt's last token).

Control: a variable's own values reassigned to the prompts at random (seeded). This is the control the data
allows: the addition study's Hewitt & Liang controls need the inputs that determine each variable, which a
dataset does not say. It measures what the probe can fit from nothing (chance, class frequencies, probe
capacity), so selectivity = score - control is above 0 only where the variable is read out from the prompt's
activations.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from transformer_lens import HookedTransformer

from probes.linear import ProbeConfig
from probes.sweep import ResidStack, best_site, matrix, resid_hooks, sweep_variables
from probes.variables import Variable
from workbench.caching import cache_tokens
from workbench.errors import WorkbenchError
from workbench.figures import heatmap
from workbench.io import write_json, write_parquet
from workbench.models.tokenizer import tokenize_prompts

MIN_ROWS = 20


def _class_key(value) -> tuple[str, str]:
    return type(value).__name__, str(value)


def dataset_variables(rows: list[dict], regress: Sequence[str] = (), names: Sequence[str] | None = None,
                      source: str = "dataset") -> list[Variable]:
    """The variables of ``rows`` (each ``{"labels": {name: value}}``), in first-seen order, or those in ``names``.
    Errors name rows by their 1-based index among the file's non-blank lines."""
    bad = [i + 1 for i, r in enumerate(rows) if not isinstance(r.get("labels"), dict) or not r["labels"]]
    if bad:
        raise WorkbenchError(f"{source}: rows {bad[:5]} have no 'labels' object, e.g. "
                             '{"prompt": "...", "labels": {"subject_plural": true}}')
    found = list(dict.fromkeys(k for r in rows for k in r["labels"]))
    if names is not None:
        if unknown := [n for n in names if n not in found]:
            raise WorkbenchError(f"unknown variables {unknown}; {source} labels: {', '.join(found)}")
        found = list(dict.fromkeys(names))
    if unknown := [n for n in regress if n not in found]:
        raise WorkbenchError(f"--regress {unknown}: not among the variables probed ({', '.join(found)})")
    out = []
    for name in found:
        if missing := [i + 1 for i, r in enumerate(rows) if name not in r["labels"]]:
            raise WorkbenchError(f"{source}: variable {name!r} is missing on rows {missing[:5]}; every row must "
                                 "label every variable probed (or choose variables with --variables)")
        values = [r["labels"][name] for r in rows]
        if name in regress:
            if bad := [i + 1 for i, v in enumerate(values) if isinstance(v, bool) or not isinstance(v, int | float)
                       or not np.isfinite(v)]:
                raise WorkbenchError(f"{source}: {name!r} is regressed but rows {bad[:5]} hold no finite number")
            labels = np.array(values, dtype=float)
            if labels.std() == 0:
                raise WorkbenchError(f"{source}: {name!r} has one value on every line; nothing to probe")
            out.append(Variable(name, labels, 0, None))
            continue
        if bad := [i + 1 for i, v in enumerate(values) if not isinstance(v, str | int | bool)]:
            raise WorkbenchError(f"{source}: class variable {name!r} holds a {type(values[bad[0] - 1]).__name__} on "
                                 f"rows {bad[:5]}; classes are strings, integers or booleans (numbers to regress: "
                                 f"--regress {name})")
        classes = sorted({_class_key(v) for v in values})
        if len(classes) < 2:
            raise WorkbenchError(f"{source}: {name!r} has one value on every line; nothing to probe")
        index = {c: i for i, c in enumerate(classes)}
        out.append(Variable(name, np.array([index[_class_key(v)] for v in values]), len(classes), None))
    return out


def shuffled_control(variable: Variable, seed: int) -> np.ndarray:
    """The variable's own labels in a seeded random order."""
    rng = np.random.default_rng([seed, sum(map(ord, variable.name))])
    return rng.permutation(variable.labels)


def collect_aligned(model: HookedTransformer, texts: list[str]) -> tuple[ResidStack, str]:
    """The residual stream of ``texts`` at every layer: at every position if they share one token length, else
    at the last ``k`` positions (``k`` = the shortest length), with a sentence saying which."""
    toks = tokenize_prompts(model, texts)
    lengths = [len(t) for t in toks]
    hooks, labels = resid_hooks(model)
    if len(set(lengths)) == 1:
        acts = cache_tokens(model, toks, hooks, positions=None)
        tokens, where = model.to_str_tokens(texts[0]), f"every position (all prompts are {lengths[0]} tokens)"
    else:
        k = min(lengths)
        acts = cache_tokens(model, toks, hooks, positions=list(range(-k, 0)))
        tokens = [f"[{i}]" for i in range(-k, 0)]
        where = (f"the last {k} positions, counted from each prompt's end (prompts are {min(lengths)} to "
                 f"{max(lengths)} tokens)")
    return ResidStack(torch.stack([acts[h] for h in hooks]), hooks, labels, tokens), where


def run_dataset_probe_study(
    model: HookedTransformer,
    rows: list[dict],
    out: str | Path,
    regress: Sequence[str] = (),
    variables: Sequence[str] | None = None,
    cfg: ProbeConfig = ProbeConfig(),
    source: str = "dataset",
) -> dict:
    """Probe every labelled variable at every layer x position of the prompts; the files of
    :func:`probes.study.run_probe_study` (no causal checks: a dataset says nothing of how to intervene)."""
    out = Path(out)
    if len(rows) < MIN_ROWS:
        raise WorkbenchError(f"{source} has {len(rows)} lines; probes need at least {MIN_ROWS} (a held-out "
                             f"{cfg.test_fraction:.0%} is scored)")
    chosen = dataset_variables(rows, regress, variables, source)
    texts = [r["prompt"] for r in rows]
    stack, where = collect_aligned(model, texts)
    probe_rows = sweep_variables(stack, chosen, [shuffled_control(v, cfg.seed) for v in chosen], cfg=cfg)
    n_pos = stack.acts.shape[2]
    for r in probe_rows:  # the same for prompts of one length; the only meaning for end-aligned prompts
        r["position_from_end"] = r["position"] - n_pos
    write_parquet(out / "probes.parquet", probe_rows)
    figures, best, stems = [], {}, set()
    for var in chosen:
        stem = f"probe_{re.sub(r'[^A-Za-z0-9_.-]', '_', var.name)}"
        while stem in stems:  # two names that differ only in characters a file name cannot hold
            stem += "_"
        stems.add(stem)
        values, layers, positions = matrix(probe_rows, var.name)
        metric = "R^2" if var.n_classes == 0 else "accuracy"
        figures += heatmap(values, layers, [stack.tokens[p] for p in positions],
                           f"{var.name}: probe {metric} minus shuffled-label control (selectivity), {len(rows)} "
                           "prompts", out / "figures" / stem, colorbar="selectivity", diverging=True)
        b = best_site(probe_rows, var.name)
        best[var.name] = {k: b[k] for k in ("layer", "position", "position_from_end", "token", "score", "control",
                                            "selectivity", "majority", "metric")} | {"classes": var.n_classes}
    summary = {"n_prompts": len(rows), "source": source, "positions": where,
               "control": "each variable's values reassigned to the prompts at random (seeded)",
               "example": texts[0], "best_sites": best,
               "files": ["probes.parquet", *sorted(str(Path(f).relative_to(out)) for f in figures)]}
    write_json(out / "summary.json", summary)
    return summary
