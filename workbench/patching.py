"""Activation patching sweeps and attribution patching.

Sweeps patch clean activations into a corrupted run, one site at a time, and record a metric. TransformerLens's
``patching`` module does this with one forward pass per site; here the sites of a layer share batched forward
passes (the corrupted batch repeated once per site, each copy patched at its own site, up to ``max_batch``
sequences a pass). The numbers equal TransformerLens's (tested).

Attribution patching (Nanda 2023; Syed et al. 2023) approximates every site's effect at once from one forward
and one backward pass: ``(clean_act - corrupt_act) . d metric / d act`` at the corrupted run.
"""

from __future__ import annotations

from collections.abc import Callable

import einops
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer
from transformer_lens.hook_points import HookPoint

from workbench.errors import WorkbenchError

Metric = Callable[[Float[Tensor, "batch pos d_vocab"]], Float[Tensor, ""]]
"""Logits of a batch -> a scalar, e.g. the mean logit difference of the answer digit."""


def _check_pair(clean: Tensor, corrupt: Tensor) -> None:
    if clean.shape != corrupt.shape:
        raise WorkbenchError(f"clean and corrupted tokens must have one shape, got {tuple(clean.shape)} and "
                             f"{tuple(corrupt.shape)} (patching aligns them position by position)")


@torch.inference_mode()
def _sweep_layer(
    model: HookedTransformer,
    corrupt: Int[Tensor, "batch pos"],
    name: str,
    clean_act: Tensor,
    sites: list[tuple],
    metric: Metric,
    max_batch: int,
) -> Tensor:
    """Metric with each site (an index into one example's activation) patched; sites batched together."""
    b = corrupt.shape[0]
    out = torch.empty(len(sites))
    per_chunk = max(1, max_batch // b)
    for start in range(0, len(sites), per_chunk):
        chunk = sites[start : start + per_chunk]

        def hook(act: Tensor, *, hook: HookPoint) -> Tensor:
            act = act.clone()
            for k, site in enumerate(chunk):
                rows = slice(k * b, (k + 1) * b)
                act[(rows, *site)] = clean_act[(slice(None), *site)]
            return act

        with model.hooks(fwd_hooks=[(name, hook)]):
            logits = model(corrupt.repeat(len(chunk), 1))
        for k in range(len(chunk)):
            out[start + k] = metric(logits[k * b : (k + 1) * b])
    return out


@torch.inference_mode()
def _sweep(model, clean, corrupt, metric, hook_of_layer, site_grid, max_batch) -> Tensor:
    _check_pair(clean, corrupt)
    names = [hook_of_layer(layer) for layer in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(clean, names_filter=names)
    sites = [site for site, _ in site_grid]
    rows = [_sweep_layer(model, corrupt, n, cache[n], sites, metric, max_batch)
            for n in tqdm(names, desc=f"patch {hook_of_layer('*')}", unit="layer", leave=False)]
    shape = site_grid[-1][1]
    return torch.stack(rows).reshape(model.cfg.n_layers, *shape)


def resid_sweep(
    model: HookedTransformer, clean: Int[Tensor, "batch pos"], corrupt: Int[Tensor, "batch pos"], metric: Metric,
    where: str = "resid_pre", max_batch: int = 1024,
) -> Float[Tensor, "layer pos"]:
    """Patch the residual stream (``hook_resid_pre``/``mid``/``post``) at each layer and position.

    Equals ``transformer_lens.patching.get_act_patch_resid_pre`` for ``where='resid_pre'``.
    """
    if where not in ("resid_pre", "resid_mid", "resid_post"):
        raise WorkbenchError(f"where must be resid_pre, resid_mid or resid_post, got {where!r}")
    n_pos = clean.shape[1]
    grid = [((p,), (n_pos,)) for p in range(n_pos)]
    return _sweep(model, clean, corrupt, metric, lambda layer: f"blocks.{layer}.hook_{where}", grid, max_batch)


def mlp_out_sweep(model, clean, corrupt, metric: Metric, max_batch: int = 1024) -> Float[Tensor, "layer pos"]:
    """Patch each layer's MLP output at each position (= ``patching.get_act_patch_mlp_out``)."""
    n_pos = clean.shape[1]
    grid = [((p,), (n_pos,)) for p in range(n_pos)]
    return _sweep(model, clean, corrupt, metric, lambda layer: f"blocks.{layer}.hook_mlp_out", grid, max_batch)


def head_sweep(model, clean, corrupt, metric: Metric, max_batch: int = 1024) -> Float[Tensor, "layer head"]:
    """Patch each head's output (``attn.hook_z``) at all positions (= ``get_act_patch_attn_head_out_all_pos``)."""
    h = model.cfg.n_heads
    grid = [((slice(None), i), (h,)) for i in range(h)]
    return _sweep(model, clean, corrupt, metric, lambda layer: f"blocks.{layer}.attn.hook_z", grid, max_batch)


def head_by_pos_sweep(model, clean, corrupt, metric: Metric, max_batch: int = 1024) -> Float[Tensor, "layer pos head"]:
    """Patch each head at each position (= ``get_act_patch_attn_head_out_by_pos``)."""
    n_pos, h = clean.shape[1], model.cfg.n_heads
    grid = [((p, i), (n_pos, h)) for p in range(n_pos) for i in range(h)]
    return _sweep(model, clean, corrupt, metric, lambda layer: f"blocks.{layer}.attn.hook_z", grid, max_batch)


def _acts_and_grads(model: HookedTransformer, corrupt: Tensor, metric: Metric, names: list[str]):
    """Activations of ``names`` on the corrupted run and the metric's gradient with respect to each."""
    acts: dict[str, Tensor] = {}
    grads: dict[str, Tensor] = {}

    def save_act(act: Tensor, *, hook: HookPoint) -> None:
        acts[hook.name] = act.detach()

    def save_grad(grad: Tensor, *, hook: HookPoint) -> None:
        grads[hook.name] = grad.detach()

    def track(act: Tensor, *, hook: HookPoint) -> Tensor:
        # A frozen model (every parameter requires_grad=False, e.g. a DPO reference) builds no graph at all; the
        # embeddings made a leaf that requires grad give every later activation one, without touching the weights.
        return act if act.requires_grad else act.detach().requires_grad_(True)

    roots = [(n, track) for n in ("hook_embed", "hook_pos_embed") if n in model.hook_dict]
    with torch.enable_grad(), model.hooks(
        fwd_hooks=roots + [(n, save_act) for n in names], bwd_hooks=[(n, save_grad) for n in names]
    ):
        metric(model(corrupt)).backward()
    model.zero_grad(set_to_none=True)
    return acts, grads


def _attribution(model: HookedTransformer, clean: Tensor, corrupt: Tensor, metric: Metric, names: list[str],
                 pattern: str) -> Tensor:
    """``(clean - corrupt) . d metric / d act`` per hook in ``names``, summed as the einops ``pattern`` says."""
    _check_pair(clean, corrupt)
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean, names_filter=names)
    acts, grads = _acts_and_grads(model, corrupt, metric, names)
    return torch.stack([einops.einsum(clean_cache[n] - acts[n], grads[n], pattern) for n in names])


def attribution_patching(
    model: HookedTransformer,
    clean: Int[Tensor, "batch pos"],
    corrupt: Int[Tensor, "batch pos"],
    metric: Metric,
    where: str = "resid_pre",
) -> Float[Tensor, "layer pos"]:
    """Linear estimate of :func:`resid_sweep` from one forward and one backward pass (per batch).

    estimate[layer, pos] = sum over batch and d_model of (clean - corrupt) * d metric / d act, at the corrupted
    run's activations; the metric is a mean over the batch, so the sum over batch matches a patch of all rows.
    """
    names = [f"blocks.{layer}.hook_{where}" for layer in range(model.cfg.n_layers)]
    return _attribution(model, clean, corrupt, metric, names, "batch pos d, batch pos d -> pos")


def attribution_heads(
    model: HookedTransformer,
    clean: Int[Tensor, "batch pos"],
    corrupt: Int[Tensor, "batch pos"],
    metric: Metric,
) -> Float[Tensor, "layer head"]:
    """Linear estimate of :func:`head_sweep` (each head's output patched at all positions) from one forward and
    one backward pass: sum over batch, positions and d_head of (clean z - corrupt z) * d metric / d z."""
    names = [f"blocks.{layer}.attn.hook_z" for layer in range(model.cfg.n_layers)]
    return _attribution(model, clean, corrupt, metric, names, "batch pos head d, batch pos head d -> head")


def attribution_head_by_pos(
    model: HookedTransformer,
    clean: Int[Tensor, "batch pos"],
    corrupt: Int[Tensor, "batch pos"],
    metric: Metric,
) -> Float[Tensor, "layer pos head"]:
    """Linear estimate of :func:`head_by_pos_sweep` (each head at each position) from one forward and one
    backward pass."""
    names = [f"blocks.{layer}.attn.hook_z" for layer in range(model.cfg.n_layers)]
    return _attribution(model, clean, corrupt, metric, names, "batch pos head d, batch pos head d -> pos head")


def spearman(a: Tensor, b: Tensor) -> float:
    """Spearman rank correlation of two effect maps (ties get their average rank)."""
    def ranks(x: Tensor) -> Tensor:
        x = x.flatten().double()
        order = x.argsort()
        r = torch.empty_like(x)
        r[order] = torch.arange(len(x), dtype=torch.float64)
        for v in x.unique():  # average the ranks of ties
            tie = x == v
            r[tie] = r[tie].mean()
        return r

    return correlation(ranks(a), ranks(b))


def correlation(a: Tensor, b: Tensor) -> float:
    """Pearson correlation of two effect maps (attribution vs activation patching)."""
    a, b = a.flatten().double(), b.flatten().double()
    a, b = a - a.mean(), b - b.mean()
    denom = a.norm() * b.norm()
    return float((a @ b) / denom) if denom > 0 else float("nan")



@torch.no_grad()  # not inference_mode: the kept tokens feed attribution patching's backward pass
def prediction_logit_diff(
    model: HookedTransformer, clean: Int[Tensor, "batch pos"], corrupt: Int[Tensor, "batch pos"]
) -> tuple[Metric, Int[Tensor, "kept pos"], Int[Tensor, "kept pos"], Bool[Tensor, " batch"]]:
    """The usual patching metric for any pair set: at the last position, the logit of the clean run's predicted
    token minus that of the corrupted run's. Pairs whose two runs predict the same token carry no signal and are
    dropped; returns the metric, the kept pairs and the mask of kept rows."""
    _check_pair(clean, corrupt)
    good, bad = model(clean)[:, -1].argmax(-1), model(corrupt)[:, -1].argmax(-1)
    keep = good != bad
    if not keep.any():
        raise WorkbenchError("the clean and corrupted prompts predict the same next token in every pair: nothing to patch")
    good, bad = good[keep, None], bad[keep, None]

    def metric(logits: Tensor) -> Tensor:
        last = logits[:, -1]
        return (last.gather(1, good) - last.gather(1, bad)).mean()

    return metric, clean[keep], corrupt[keep], keep
