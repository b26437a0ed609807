"""Probe every task variable at every (layer, position) of a prompt set: the "where is it decodable" table.

Activations are the residual stream entering each block (``blocks.L.hook_resid_pre``) plus the stream after the
last block, cached in one batched pass (TransformerLens ``run_with_cache`` via :mod:`workbench.caching`). Texts
must share one token length so positions align, e.g. problems with the same operand widths.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens import HookedTransformer

from probes.linear import (ProbeConfig, ProbeFit, fit_ridge, fit_ridge_classifiers, majority_accuracy, ridge_design,
                           split)
from probes.variables import Variable, control_labels, task_variables
from workbench.caching import cache_activations
from workbench.errors import WorkbenchError
from workbench.tasks.addition import Problem


@dataclass(frozen=True)
class ResidStack:
    acts: Float[Tensor, "layer n pos d_model"]
    hooks: list[str]
    """Hook of each layer row."""
    labels: list[str]
    """``L_pre`` for the stream entering block L, ``final_post`` after the last block (TransformerLens's labels)."""
    tokens: list[str]
    """The first text's tokens, for axis labels."""


def resid_hooks(model: HookedTransformer) -> tuple[list[str], list[str]]:
    n = model.cfg.n_layers
    hooks = [f"blocks.{layer}.hook_resid_pre" for layer in range(n)] + [f"blocks.{n - 1}.hook_resid_post"]
    return hooks, [f"{layer}_pre" for layer in range(n)] + ["final_post"]


def collect_resid(model: HookedTransformer, texts: Sequence[str], batch_size: int = 256) -> ResidStack:
    """The residual stream of ``texts`` (one token length) at every layer and position."""
    hooks, labels = resid_hooks(model)
    acts = cache_activations(model, list(texts), hooks, positions=None, batch_size=batch_size)
    return ResidStack(torch.stack([acts[h] for h in hooks]), hooks, labels, model.to_str_tokens(texts[0]))


def select_variables(problems: list[Problem], names: Sequence[str] | None) -> list[Variable]:
    variables = task_variables(problems)
    if names is None:
        return variables
    known = {v.name: v for v in variables}
    if unknown := [n for n in names if n not in known]:
        raise WorkbenchError(f"unknown variables {unknown}; for these problems: {', '.join(known)}")
    return [known[n] for n in names]


def probe_sweep(
    stack: ResidStack,
    problems: list[Problem],
    variables: Sequence[str] | None = None,
    positions: Sequence[int] | None = None,
    cfg: ProbeConfig = ProbeConfig(),
) -> list[dict]:
    """Held-out score of a probe and of its control task per addition variable x layer x position: one row each.

    Classification rows report accuracy; the ``answer`` row reports ridge R^2. ``selectivity`` = score -
    control score (Hewitt & Liang 2019); ``majority`` is the held-out accuracy of always guessing the most
    frequent training class.
    """
    if stack.acts.shape[1] != len(problems):
        raise WorkbenchError(f"{stack.acts.shape[1]} activation rows but {len(problems)} problems")
    chosen = select_variables(problems, variables)
    return sweep_variables(stack, chosen, [control_labels(v, problems, cfg.seed) for v in chosen], positions, cfg)


def sweep_variables(
    stack: ResidStack,
    variables: list[Variable],
    controls: list[np.ndarray],
    positions: Sequence[int] | None = None,
    cfg: ProbeConfig = ProbeConfig(),
) -> list[dict]:
    """:func:`probe_sweep` for any variables (one label per row of ``stack``) and their control labels."""
    n_layer, n, n_pos, d = stack.acts.shape
    if bad := [v.name for v in variables if len(v.labels) != n]:
        raise WorkbenchError(f"variables {bad} do not have one label per activation row ({n})")
    pos = list(range(n_pos)) if positions is None else [p % n_pos for p in positions]
    x = stack.acts[:, :, pos].permute(0, 2, 1, 3).reshape(n_layer * len(pos), n, d)  # sites = layer x pos
    train, test = split(n, cfg.test_fraction, cfg.seed)
    scores: dict[str, tuple[Tensor, Tensor, float, str]] = {}
    design = ridge_design(x, train, cfg.ridge)  # one standardisation and Gram matrix per site for every target
    reg = [(v, c) for v, c in zip(variables, controls) if not v.n_classes]
    if reg:
        r2 = fit_ridge(x, [v.labels for v, _ in reg] + [c for _, c in reg], train, test, cfg.ridge, design)
        for k, (var, _) in enumerate(reg):
            scores[var.name] = (r2[k], r2[k + len(reg)], 0.0, "r2")
    cls = [(v, c) for v, c in zip(variables, controls) if v.n_classes]
    if cls:  # every class variable and its control from one Gram matrix per site
        fits = fit_ridge_classifiers(x, [v.labels for v, _ in cls] + [c for _, c in cls],
                                     [v.n_classes for v, _ in cls] * 2, train, test, cfg.ridge, design)
        for k, (var, _) in enumerate(cls):
            scores[var.name] = (fits[k].test_accuracy, fits[k + len(cls)].test_accuracy,
                                majority_accuracy(var.labels, train, test), "accuracy")
    rows = []
    for var in variables:
        score, ctrl, floor, metric = scores[var.name]
        for s in range(len(score)):
            layer, p = divmod(s, len(pos))
            rows.append({
                "variable": var.name, "metric": metric, "layer": stack.labels[layer], "layer_index": layer,
                "hook": stack.hooks[layer], "position": pos[p], "token": stack.tokens[pos[p]],
                "score": float(score[s]), "control": float(ctrl[s]), "selectivity": float(score[s] - ctrl[s]),
                "majority": floor, "n_train": len(train), "n_test": len(test),
            })
    return rows


def best_site(rows: list[dict], variable: str, max_position: int | None = None) -> dict:
    """The row of ``variable`` with the highest selectivity (ties: the later layer, then the later position),
    optionally among positions <= ``max_position``."""
    cand = [r for r in rows if r["variable"] == variable and (max_position is None or r["position"] <= max_position)]
    if not cand:
        raise WorkbenchError(f"no probe rows for variable {variable!r}")
    return max(cand, key=lambda r: (round(r["selectivity"], 6), r["layer_index"], r["position"]))


def fit_site(stack: ResidStack, problems: list[Problem], variable: str, layer: int, position: int,
             cfg: ProbeConfig = ProbeConfig()) -> tuple[ProbeFit, Variable]:
    """The probe of one variable at one (layer index, position), trained on the same split as the sweep."""
    var = select_variables(problems, [variable])[0]
    if var.n_classes == 0:
        raise WorkbenchError(f"{variable!r} is a regression variable; only class variables have a probe direction")
    train, test = split(len(problems), cfg.test_fraction, cfg.seed)
    fit = fit_ridge_classifiers(stack.acts[layer, :, position][None], [var.labels], [var.n_classes], train, test, cfg.ridge)
    return fit[0], var


def matrix(rows: list[dict], variable: str, field: str = "selectivity") -> tuple[np.ndarray, list[str], list[int]]:
    """``[layer, position]`` array of one field for one variable, with the layer labels and positions."""
    sel = [r for r in rows if r["variable"] == variable]
    layers = sorted({(r["layer_index"], r["layer"]) for r in sel})
    positions = sorted({r["position"] for r in sel})
    out = np.full((len(layers), len(positions)), np.nan)
    for r in sel:
        out[r["layer_index"] - layers[0][0], positions.index(r["position"])] = r[field]
    return out, [label for _, label in layers], positions
