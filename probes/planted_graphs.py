"""Attribution graphs and transcoder features scored against a planted mechanism.

Two questions for an organism trained by interchange intervention (:mod:`workbench.models.iit`), whose variables
sit in the residual stream after block L at ``=`` (the *site*):

* **Where do the graphs of its answer digits draw from?** Each answer digit of held-out 3-digit problems is
  traced with circuit-tracer (the model's own correct predictions only, the digit's logit as the target). A
  graph's MLP nodes (transcoder features and error nodes) sit at a (layer, position); their influence on the
  digit's logit (circuit-tracer's, absolute and row-normalised, over all paths) is summed per cell and divided
  by the influence of every MLP node of the graph. The site's writer is MLP L at ``=``: the last MLP whose
  output enters the site. Its localisation AUROC is its rank among the cells at prompt positions (1.0 when it
  draws the most influence, 0.5 when it is typical), per answer digit.
* **Which transcoder features track the planted variables?** Every feature's activation at every layer x
  prompt position, on more held-out problems, against each variable of the planted causal model and each carry
  of the stated algorithm: the share of the activation's variance the variable's value explains (the
  correlation ratio eta^2) for a variable of few values (a carry, a digit), the squared rank correlation for one
  of many (the magnitude, where one mean per value would fit noise). Reported: the best feature at the site's
  writer and the best elsewhere, with the best score on shuffled labels at the writer as the noise floor.

A graph says through which cells influence flows, not which variable a cell holds; the features are what can tie
a cell to a variable, and only as well as the transcoders reconstruct it (the graphs' replacement scores say how
much flows through error nodes instead).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch
from circuit_tracer.graph import compute_node_influence
from transformer_lens import HookedTransformer

from probes.planted import STATED_MODEL, _rank_auroc
from workbench.circuits import attribute_prompt, replacement_model
from workbench.models.iit import CAUSAL_MODELS, column_carries, parallel_values
from workbench.models.tokenizer import tokenize_prompts
from workbench.models.zoo import Recipe
from workbench.saes import transcoder_hooks
from workbench.tasks import formats
from workbench.tasks.addition import sample_problems

COLUMN_NAMES = ("ones", "tens", "hundreds", "thousands")


def _site(recipe: Recipe) -> int:
    """The layer of the MLP that last writes into the planted site (``blocks.L.hook_resid_post`` -> L,
    ``blocks.L.hook_resid_pre`` -> L - 1)."""
    if recipe.iit is None:
        raise ValueError(f"{recipe.name} has no planted mechanism")
    hook = recipe.iit.alignments[0].hook
    layer = int(hook.split(".")[1])
    return layer if hook.endswith("hook_resid_post") else layer - 1


def variable_values(a: np.ndarray, b: np.ndarray) -> dict[str, np.ndarray]:
    """The values of every variable of the causal models, over problems: the carries and the parallel pathways."""
    carries = column_carries(a, b)
    out = {name: carries[int(name.removeprefix("carry"))] for name in CAUSAL_MODELS["carry"][0]}
    return out | parallel_values(a, b)


def position_names(model: HookedTransformer, prompt: str) -> list[str]:
    """Names of the prompt's positions that hold for every 3-digit problem: ``bos``, ``a2`` (a's hundreds digit),
    ``a1``, ``a0``, ``+``, ``b2``, ``b1``, ``b0``, ``=``."""
    from probes.circuit_study import token_roles
    from workbench.tasks.addition import Problem

    a, b = prompt[:-1].split("+")
    roles = token_roles(Problem(int(a), int(b)), prompt, len(prompt), len(prompt))
    names = [r if r != "op" else ch for r, ch in zip(roles, " " + prompt)]
    if len(names) != len(tokenize_prompts(model, [prompt])[0]):
        raise ValueError("position names assume one token per character after a BOS (the organisms' tokenizer)")
    return names


def mlp_cell_shares(graph) -> np.ndarray:
    """``[n_layers, n_pos]``: each (MLP layer, position) cell's share of the influence of all MLP nodes (features
    and error nodes) on the graph's first logit target."""
    n_feat, n_pos, n_layers = len(graph.selected_features), graph.n_pos, graph.cfg.n_layers
    weights = torch.zeros(graph.adjacency_matrix.shape[0])
    weights[-len(graph.logit_targets)] = 1.0
    influence = compute_node_influence(graph.adjacency_matrix.cpu(), weights).double()
    cells = np.zeros((n_layers, n_pos))
    layer_pos = graph.active_features[graph.selected_features][:, :2].cpu().numpy()
    np.add.at(cells, (layer_pos[:, 0], layer_pos[:, 1]), influence[:n_feat].numpy())
    cells += influence[n_feat : n_feat + n_layers * n_pos].numpy().reshape(n_layers, n_pos)
    total = cells.sum()
    return cells / total if total > 0 else cells


def graph_localisation(model: HookedTransformer, transcoders: dict, recipe: Recipe, n: int = 12,
                       seed: int = 0) -> dict:
    """Per answer column: the mean share map of :func:`mlp_cell_shares` over its graphs (prompt positions, then
    one column summing the answer digits written before it), the site writer's share, the best cell, and the
    writer's localisation AUROC among the prompt cells (mean over graphs, and of the mean map)."""
    layer = _site(recipe)
    problems = sample_problems(n, (3,), "test", seed)
    prompts = [formats.problem_prompt(p) for p in problems]
    jobs = [(p, prompt + str(p.a + p.b)[:j], str(p.a + p.b)[j], len(str(p.a + p.b)) - 1 - j)
            for p, prompt in zip(problems, prompts) for j in range(len(str(p.a + p.b)))]
    with torch.inference_mode():  # the model's own next token on every prefix: graphs explain correct ones only
        predicted = [model.tokenizer.decode([int(model(t[None])[0, -1].argmax())])
                     for t in tokenize_prompts(model, [j[1] for j in jobs])]
    rm = replacement_model(model, transcoders)
    n_prompt = len(tokenize_prompts(model, prompts[:1])[0])  # BOS and a+b=: one length for 3-digit operands
    pos = n_prompt - 1  # '='
    maps, aurocs, scores, skipped = defaultdict(list), defaultdict(list), defaultdict(list), 0
    for (p, prefix, digit, column), guess in zip(jobs, predicted):
        if guess != digit:
            skipped += 1
            continue
        (token,) = model.tokenizer.encode(digit, add_special_tokens=False)
        res = attribute_prompt(rm, prefix, target=("token", token))
        cells = mlp_cell_shares(res.graph)
        row = np.concatenate([cells[:, :n_prompt], cells[:, n_prompt:].sum(1, keepdims=True)], axis=1)
        maps[column].append(row)
        prompt_cells = cells[:, :n_prompt]
        aurocs[column].append(_rank_auroc(prompt_cells[layer, pos],
                                          np.delete(prompt_cells.flatten(), layer * n_prompt + pos)))
        scores[column].append((res.replacement_score, res.completeness_score))
    tokens = position_names(model, prompts[0])
    out = {"site": {"mlp_layer": layer, "position": pos, "token": tokens[pos]}, "n_problems": n,
           "skipped_wrong_prediction": skipped, "columns": {}}
    for column in sorted(maps, reverse=True):
        mean = np.mean(maps[column], axis=0)
        prompt_cells = mean[:, :n_prompt]
        best = np.unravel_index(np.argmax(prompt_cells), prompt_cells.shape)
        others = np.delete(prompt_cells.flatten(), layer * n_prompt + pos)
        out["columns"][COLUMN_NAMES[column]] = {
            "n_graphs": len(maps[column]),
            "map": np.round(mean, 4).tolist(),
            "map_columns": tokens + ["earlier answer digits"],
            "site_writer_share": round(float(mean[layer, pos]), 4),
            "site_position_share": round(float(mean[: layer + 1, pos].sum()), 4),
            "best": {"mlp_layer": int(best[0]), "position": int(best[1]), "token": tokens[best[1]],
                     "share": round(float(prompt_cells[best]), 4)},
            "localisation_auroc": _rank_auroc(prompt_cells[layer, pos], others),
            "localisation_auroc_per_graph": round(float(np.mean(aurocs[column])), 4),
            "replacement_mean": round(float(np.mean([s[0] for s in scores[column]])), 4),
            "completeness_mean": round(float(np.mean([s[1] for s in scores[column]])), 4),
        }
    return out


def _eta_squared(acts: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``[n_features]`` share of each feature's variance across problems explained by ``labels``' classes."""
    acts = acts.astype(np.float64)
    mean = acts.mean(0)
    total = ((acts - mean) ** 2).sum(0)
    between = np.zeros(acts.shape[1])
    for value in np.unique(labels):
        rows = labels == value
        between += rows.sum() * (acts[rows].mean(0) - mean) ** 2
    # a feature that does not vary (dead, or at a position every prompt shares) explains nothing; rounding would
    # otherwise divide noise by noise
    varies = total > 1e-8 * len(acts) * np.maximum(1.0, mean**2)
    return np.where(varies, np.minimum(between / np.where(varies, total, 1.0), 1.0), 0.0)


def _rank_r2(acts: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``[n_features]`` squared Spearman correlation of each feature with ``values`` (a feature that does not vary
    scores 0): for a variable with many values, where eta^2 would fit noise with one mean per value."""
    def ranks(x: np.ndarray) -> np.ndarray:
        order = np.argsort(x, axis=0, kind="stable")
        r = np.empty_like(order, dtype=np.float64)
        np.put_along_axis(r, order, np.arange(len(x), dtype=np.float64)[:, None].repeat(x.shape[1], 1), axis=0)
        # ties share their mean rank
        for j in range(x.shape[1]):
            _, inv, counts = np.unique(x[:, j], return_inverse=True, return_counts=True)
            if len(counts) < len(x):
                sums = np.bincount(inv, weights=r[:, j])
                r[:, j] = (sums / counts)[inv]
        return r

    ra, rv = ranks(acts.astype(np.float64)), ranks(values.astype(np.float64)[:, None])[:, 0]
    ra -= ra.mean(0)
    rv -= rv.mean()
    denom = np.sqrt((ra**2).sum(0) * (rv**2).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(denom > 0, (ra * rv[:, None]).sum(0) / np.where(denom > 0, denom, 1.0), 0.0)
    return r**2


ORDERED_ABOVE = 10
"""A variable with more distinct values than this (the magnitude) is scored by squared rank correlation."""


def tracking_score(acts: np.ndarray, values: np.ndarray) -> np.ndarray:
    """eta^2 for a variable of few values (carries, digits), squared Spearman correlation for one of many."""
    return _rank_r2(acts, values) if len(np.unique(values)) > ORDERED_ABOVE else _eta_squared(acts, values)


@torch.inference_mode()
def feature_tracking(model: HookedTransformer, transcoders: dict, recipe: Recipe, n: int = 600,
                     seed: int = 1) -> dict:
    """Per variable (the planted causal model's, and the stated algorithm's carries): the best transcoder
    feature at the site's writer (MLP L at ``=``) and at any other layer x prompt position, by
    :func:`tracking_score`, with the best score at the writer on shuffled labels (the noise floor of n problems
    and d_sae features)."""
    layer = _site(recipe)
    problems = sample_problems(n, (3,), "test", seed)
    a, b = np.array([p.a for p in problems]), np.array([p.b for p in problems])
    values = variable_values(a, b)
    names = list(CAUSAL_MODELS[recipe.iit.causal_model][0])
    names += [v for v in CAUSAL_MODELS[STATED_MODEL][0] if v not in names]
    prompts = [formats.problem_prompt(p) for p in problems]
    tokens = torch.stack(tokenize_prompts(model, prompts))
    hooks = [transcoder_hooks(i)[0] for i in sorted(transcoders)]
    _, cache = model.run_with_cache(tokens, names_filter=hooks)
    feats = {i: transcoders[i].encode(cache[h]).float().numpy() for i, h in zip(sorted(transcoders), hooks)}
    str_tokens = position_names(model, prompts[0])
    pos = tokens.shape[1] - 1
    rng = np.random.default_rng(seed)
    planted = {al.variable for al in recipe.iit.alignments}
    out = {"site": {"mlp_layer": layer, "position": pos, "token": str_tokens[pos]}, "n_problems": n,
           "d_sae": {i: int(f.shape[-1]) for i, f in feats.items()}, "variables": {}}
    for name in names:
        labels = values[name]
        best_here, best_else = None, None
        for i, f in feats.items():
            for q in range(tokens.shape[1]):
                eta = tracking_score(f[:, q], labels)
                k = int(np.argmax(eta))
                cand = {"mlp_layer": i, "position": q, "token": str_tokens[q], "feature": k,
                        "score": round(float(eta[k]), 4)}
                if (i, q) == (layer, pos):
                    best_here = cand
                elif best_else is None or cand["score"] > best_else["score"]:
                    best_else = cand
        floor = float(tracking_score(feats[layer][:, pos], rng.permutation(labels)).max())
        out["variables"][name] = {
            "planted": name in planted, "n_values": int(len(np.unique(labels))),
            "score": "spearman_r2" if len(np.unique(labels)) > ORDERED_ABOVE else "eta2",
            "at_site_writer": best_here, "best_elsewhere": best_else, "shuffled_floor": round(floor, 4)}
    return out


def lines(graphs: dict, features: dict) -> list[str]:
    """A short report: one line per answer column, one per variable."""
    site = graphs["site"]
    out = [f"    attribution graphs against the site's writer (MLP {site['mlp_layer']} at {site['token']!r}; "
           f"{graphs['n_problems']} problems, {graphs['skipped_wrong_prediction']} wrong digits left out):"]
    for column, c in graphs["columns"].items():
        b = c["best"]
        out.append(f"     {column} digit ({c['n_graphs']} graphs, replacement {c['replacement_mean']:.2f}): the writer "
                   f"draws {c['site_writer_share']:.2f} of MLP influence, best cell MLP {b['mlp_layer']} at "
                   f"{b['token']!r} {b['share']:.2f}; localisation AUROC {c['localisation_auroc']:.2f}")
    out.append(f"    transcoder features against the variables (the best single feature; n={features['n_problems']}):")
    for name, v in features["variables"].items():
        h, e = v["at_site_writer"], v["best_elsewhere"]
        out.append(f"     {name} ({'planted' if v['planted'] else 'not planted'}; {v['score']}): at the writer feature "
                   f"{h['feature']} {h['score']:.2f}, elsewhere {e['score']:.2f} (MLP {e['mlp_layer']} at "
                   f"{e['token']!r}), shuffled floor {v['shuffled_floor']:.2f}")
    return out
