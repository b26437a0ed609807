"""Activation patching sweeps and attribution patching.

Sweeps patch clean activations into a corrupted run, one site at a time, and record a metric. TransformerLens's
``patching`` module does this with one full forward pass per site; the numbers here equal its (tested), with
less work:

* a site whose clean and corrupted activations are equal in every row patches nothing: its value is the
  corrupted run's metric, with no pass at all; a row where they are equal is the corrupted run's row;
* a patch at layer L changes nothing before L: the pass starts there (``start_at_layer``) from the corrupted
  run's residual stream, or at L + 1 for a patched ``resid_post``; a patched head output (``hook_z``) gives its
  block's attention output through W_O directly, so that block's attention is not run;
* a patch changes no position before the first one it touches (causal attention): the pass runs the later
  positions only, with the earlier positions' keys and values taken from the corrupted run (TransformerLens's
  key-value cache), and the earlier logits are the corrupted run's;
* the (site, row) pieces that remain share forward passes of about :func:`tokens_per_forward` tokens, a size
  set from the model's widths and the torch thread count: on a CPU, huge batches are slower (the activations
  of one op leave the caches) and tiny ones pay per-pass overhead.

Attribution patching (Nanda 2023; Syed et al. 2023) approximates every site's effect at once from one forward
and one backward pass: ``(clean_act - corrupt_act) . d metric / d act`` at the corrupted run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import contextmanager

import einops
import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer
from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry
from transformer_lens.components import AbstractAttention, TransformerBlock
from transformer_lens.hook_points import HookPoint

from workbench.errors import WorkbenchError

Metric = Callable[[Float[Tensor, "batch pos d_vocab"]], Float[Tensor, ""]]
"""Logits of a batch -> a scalar, e.g. the mean logit difference of the answer digit."""


def _check_pair(clean: Tensor, corrupt: Tensor) -> None:
    if clean.shape != corrupt.shape:
        raise WorkbenchError(f"clean and corrupted tokens must have one shape, got {tuple(clean.shape)} and "
                             f"{tuple(corrupt.shape)} (patching aligns them position by position)")


CACHE_BYTES_PER_THREAD = 8 << 20
"""Activation bytes one forward pass may touch per torch thread: about a core's L2 plus its share of L3."""


def tokens_per_forward(model: HookedTransformer, n_pos: int, threads: int | None = None) -> int:
    """Tokens (batch rows x positions run) per batched forward pass of a sweep.

    The widest activations a token has in one layer are its MLP hidden units (``d_mlp``), its attention pattern
    row (``n_heads x n_pos``) and a few ``d_model`` vectors (residual stream, queries, keys, values); the budget
    keeps that for all tokens of a pass within ``CACHE_BYTES_PER_THREAD`` per thread (ops split the batch across
    threads). On the organisms (d_model 128, d_mlp 512, ~50 positions) that is ~1,700 tokens at 1 thread: sweeps
    ran about as fast from 512 to 8,192 tokens a pass and twice as slow at 100,000. Kept within [256, 65,536]
    so that a pass still reuses each weight matrix many times, and at least one sequence.
    """
    cfg = model.cfg
    threads = threads or torch.get_num_threads()
    width = (cfg.d_mlp or 4 * cfg.d_model) + cfg.n_heads * n_pos + 4 * cfg.d_model
    per_token = width * torch.finfo(cfg.dtype).bits // 8
    return max(n_pos, min(65536, max(256, threads * CACHE_BYTES_PER_THREAD // per_token)))


def _units(clean_act: Tensor, corrupt_act: Tensor, sites: list[tuple], suffix: bool):
    """For each site, the batch rows its patch changes and the first position it changes (0 without ``suffix``);
    sites whose patch changes nothing are returned apart."""
    b, n_pos = clean_act.shape[:2]
    differs = clean_act != corrupt_act
    units, unchanged = [], []
    for k, site in enumerate(sites):
        d = differs[(slice(None), *site)]
        if isinstance(site[0], int):
            changed, start = d.reshape(b, -1).any(1), site[0]
        else:  # every position: the patch starts where the first row differs
            by_pos = d.reshape(b, n_pos, -1).any(2)
            changed, start = by_pos.any(1), int(by_pos.any(0).int().argmax())
        rows = changed.nonzero().flatten()
        if len(rows):
            units.append((k, rows, start if suffix else 0))
        else:
            unchanged.append(k)
    return units, unchanged


def _pack(units: list, n_pos: int, budget: int, max_rows: int) -> list[tuple[int, list]]:
    """Forward passes ``(start, [(site, rows), ...])``: a pass runs positions ``start:`` of its rows, at most
    ``budget`` tokens and ``max_rows`` rows. Shortest suffixes first, so small ones share a pass (a unit may run
    from earlier than its own start: those positions are the corrupted run's either way)."""
    passes: list[tuple[int, list]] = []
    parts: list = []
    n_rows, start = 0, n_pos
    for k, rows, first in sorted(units, key=lambda u: -u[2]):
        per = max(1, min(max_rows, budget // (n_pos - first)))
        for i in range(0, len(rows), per):
            part = rows[i : i + per]
            if parts and ((n_rows + len(part)) * (n_pos - first) > budget or n_rows + len(part) > max_rows):
                passes.append((start, parts))
                parts, n_rows = [], 0
            parts.append((k, part))
            n_rows += len(part)
            start = first
    if parts:
        passes.append((start, parts))
    return passes


def _attn_out_of_z(model: HookedTransformer, layer: int) -> Callable[[Tensor], Tensor] | None:
    """Block ``layer``'s attention output from its ``hook_z`` as TransformerLens computes it (the output
    projection of ``AbstractAttention.forward``), or None for the variants that compute it otherwise."""
    cfg, block = model.cfg, model.blocks[layer]
    attn = getattr(block, "attn", None)
    if (type(block) is not TransformerBlock or not isinstance(attn, AbstractAttention)
            or type(attn).forward is not AbstractAttention.forward or block.ln1 is getattr(block, "ln2", None)
            or cfg.use_attn_result or cfg.load_in_4bit or attn.W_O.device.type == "mps"
            or cfg.original_architecture in ("Olmo2ForCausalLM", "Olmo3ForCausalLM")):
        return None
    w = einops.rearrange(attn.W_O, "head_index d_head d_model -> d_model (head_index d_head)").contiguous()
    return lambda z: F.linear(z.to(w.dtype).reshape(z.shape[0], z.shape[1], -1), w, attn.b_O)


@contextmanager
def _attention_output(block: TransformerBlock, out: Tensor):
    """Within, ``block``'s attention returns ``out`` (its layer norm and attention are skipped; the rest of the
    block, MLP and hooks included, runs as ever)."""
    block.attn.forward = lambda *args, **kwargs: out
    block.ln1.forward = lambda x: x
    try:
        yield
    finally:
        del block.attn.forward, block.ln1.forward


@torch.inference_mode()
def _sweep(model: HookedTransformer, clean: Tensor, corrupt: Tensor, metric: Metric | dict[str, Metric],
           hook_of_layer: Callable[[int | str], str], site_grid: list, max_batch: int | None,
           tokens_per_batch: int | None, layers: Sequence[int] | None = None) -> Tensor | dict[str, Tensor]:
    _check_pair(clean, corrupt)
    n_layers, (b, n_pos) = model.cfg.n_layers, clean.shape
    layers = _layers(layers, n_layers)
    metrics = metric if isinstance(metric, dict) else {"": metric}
    names = {layer: hook_of_layer(layer) for layer in layers}
    resid = [f"blocks.{layer}.hook_resid_pre" for layer in range(n_layers)]
    kv = [(f"blocks.{layer}.attn.hook_k", f"blocks.{layer}.attn.hook_v") for layer in range(n_layers)]
    _, _, shortformer, mask = model.input_to_embed(corrupt)
    # With causal attention and no padding mask, positions before the first one a patch changes are the
    # corrupted run's at every layer: a pass runs only the later positions, reading the earlier keys and values
    # from the corrupted run. Otherwise every pass runs all positions.
    suffix = mask is None and model.cfg.attention_dir == "causal"
    _, clean_cache = model.run_with_cache(clean, names_filter=list(names.values()))
    corrupt_logits, corrupt_cache = model.run_with_cache(corrupt, names_filter=sorted(
        set(list(names.values()) + resid + ([n for pair in kv for n in pair] if suffix else []))))
    base = {m: float(f(corrupt_logits)) for m, f in metrics.items()}
    budget = tokens_per_batch or tokens_per_forward(model, n_pos)
    sites = [site for site, _ in site_grid]
    out = {m: torch.empty(len(layers), len(sites)) for m in metrics}
    for row, layer in enumerate(tqdm(layers, desc=f"patch {hook_of_layer('*')}", unit="layer", leave=False)):
        name = names[layer]
        clean_act, corrupt_act = clean_cache[name], corrupt_cache[name]
        units, unchanged = _units(clean_act, corrupt_act, sites, suffix)
        for m in metrics:
            out[m][row, unchanged] = base[m]  # the patch writes the corrupted values back: the corrupted run
        # Where the forward starts: a patched residual stream is the input of its layer (resid_pre) or of the
        # next one (resid_post); a patched head output (z) is its block's attention output through W_O, so that
        # block skips its attention; anything else is patched by a hook in a pass from its own layer.
        first = layer + 1 if name == f"blocks.{layer}.hook_resid_post" else layer
        at_input = name in (resid[layer], f"blocks.{layer}.hook_resid_post")
        from_z = _attn_out_of_z(model, layer) if name == f"blocks.{layer}.attn.hook_z" else None
        patches: list[tuple[tuple, Tensor]] = []

        def patch(act: Tensor, *, hook: HookPoint | None = None) -> Tensor:
            for dst, val in patches:
                act[dst] = val
            return act

        left = {k: len(rows) for k, rows, _ in units}
        pending: dict[int, Tensor] = {}
        with model.hooks(fwd_hooks=[] if at_input or from_z else [(name, patch)]):
            for start, parts in _pack(units, n_pos, budget, max_batch or b * len(sites)):
                r = torch.cat([rows for _, rows in parts])
                patches.clear()
                j = 0
                for k, rows in parts:
                    p, *rest = sites[k]
                    dst = (slice(j, j + len(rows)), p - start if isinstance(p, int) else slice(None), *rest)
                    src = (rows, p if isinstance(p, int) else slice(start, None), *rest)
                    patches.append((dst, clean_act[src]))
                    j += len(rows)
                x = patch(corrupt_act[r, start:]) if at_input else corrupt_cache[resid[layer]][r, start:]
                kwargs = {}
                if start:
                    skip = first + (from_z is not None)  # a skipped attention reads no keys
                    kwargs["past_kv_cache"] = [None] * skip + [
                        TransformerLensKeyValueCacheEntry(corrupt_cache[k][r, :start], corrupt_cache[v][r, :start],
                                                          frozen=True) for k, v in kv[skip:]]
                if shortformer is not None:
                    kwargs["shortformer_pos_embed"] = shortformer[r, start:]
                if mask is not None:
                    kwargs["attention_mask"] = mask[r]
                if from_z is not None:
                    with _attention_output(model.blocks[layer], from_z(patch(corrupt_act[r, start:]))):
                        logits = model(x, start_at_layer=first, **kwargs)
                else:
                    logits = model(x, start_at_layer=first, **kwargs)
                j = 0
                for k, rows in parts:
                    full = pending.get(k)
                    if full is None:
                        full = pending[k] = corrupt_logits.clone()
                    full[rows, start:] = logits[j : j + len(rows)]
                    j += len(rows)
                    left[k] -= len(rows)
                    if not left[k]:
                        full = pending.pop(k)
                        for m, f in metrics.items():
                            out[m][row, k] = f(full)
    shape = site_grid[-1][1]
    maps = {m: o.reshape(len(layers), *shape) for m, o in out.items()}
    return maps if isinstance(metric, dict) else maps[""]


def _layers(layers: Sequence[int] | None, n_layers: int) -> list[int]:
    if layers is None:
        return list(range(n_layers))
    layers = list(layers)
    if not layers or any(not isinstance(x, int) or isinstance(x, bool) or not 0 <= x < n_layers for x in layers):
        raise WorkbenchError(f"layers must be a non-empty list of layer indices in [0, {n_layers}), got {layers!r}")
    return layers


def resid_sweep(
    model: HookedTransformer, clean: Int[Tensor, "batch pos"], corrupt: Int[Tensor, "batch pos"],
    metric: Metric | dict[str, Metric], where: str = "resid_pre", max_batch: int | None = None,
    tokens_per_batch: int | None = None, layers: Sequence[int] | None = None,
) -> Float[Tensor, "layer pos"] | dict[str, Float[Tensor, "layer pos"]]:
    """Patch the residual stream (``hook_resid_pre``/``mid``/``post``) at each layer and position.

    Equals ``transformer_lens.patching.get_act_patch_resid_pre`` for ``where='resid_pre'`` (and
    ``get_act_patch_resid_mid`` for ``'resid_mid'``). Every sweep takes ``max_batch``, the most sequences one
    forward pass may hold, and ``tokens_per_batch``, its token budget (default :func:`tokens_per_forward`);
    ``layers``, the layers to patch (default all: the map has one row per layer given, in that order); and
    ``metric`` as one metric or a dict of named metrics, each read from the same patched passes (then the result
    is a dict of maps: several metrics cost one sweep).
    """
    if where not in ("resid_pre", "resid_mid", "resid_post"):
        raise WorkbenchError(f"where must be resid_pre, resid_mid or resid_post, got {where!r}")
    n_pos = clean.shape[1]
    grid = [((p,), (n_pos,)) for p in range(n_pos)]
    return _sweep(model, clean, corrupt, metric, lambda layer: f"blocks.{layer}.hook_{where}", grid, max_batch,
                  tokens_per_batch, layers)


def mlp_out_sweep(model, clean, corrupt, metric: Metric | dict[str, Metric], max_batch: int | None = None,
                  tokens_per_batch: int | None = None, layers: Sequence[int] | None = None,
                  ) -> Float[Tensor, "layer pos"] | dict[str, Float[Tensor, "layer pos"]]:
    """Patch each layer's MLP output at each position (= ``patching.get_act_patch_mlp_out``)."""
    n_pos = clean.shape[1]
    grid = [((p,), (n_pos,)) for p in range(n_pos)]
    return _sweep(model, clean, corrupt, metric, lambda layer: f"blocks.{layer}.hook_mlp_out", grid, max_batch,
                  tokens_per_batch, layers)


def head_sweep(model, clean, corrupt, metric: Metric | dict[str, Metric], max_batch: int | None = None,
               tokens_per_batch: int | None = None, layers: Sequence[int] | None = None,
               ) -> Float[Tensor, "layer head"] | dict[str, Float[Tensor, "layer head"]]:
    """Patch each head's output (``attn.hook_z``) at all positions (= ``get_act_patch_attn_head_out_all_pos``)."""
    h = model.cfg.n_heads
    grid = [((slice(None), i), (h,)) for i in range(h)]
    return _sweep(model, clean, corrupt, metric, lambda layer: f"blocks.{layer}.attn.hook_z", grid, max_batch,
                  tokens_per_batch, layers)


def head_by_pos_sweep(model, clean, corrupt, metric: Metric | dict[str, Metric], max_batch: int | None = None,
                      tokens_per_batch: int | None = None, layers: Sequence[int] | None = None,
                      ) -> Float[Tensor, "layer pos head"] | dict[str, Float[Tensor, "layer pos head"]]:
    """Patch each head at each position (= ``get_act_patch_attn_head_out_by_pos``)."""
    n_pos, h = clean.shape[1], model.cfg.n_heads
    grid = [((p, i), (n_pos, h)) for p in range(n_pos) for i in range(h)]
    return _sweep(model, clean, corrupt, metric, lambda layer: f"blocks.{layer}.attn.hook_z", grid, max_batch,
                  tokens_per_batch, layers)


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
    return attribution_at(model, clean, corrupt, metric,
                          [f"blocks.{layer}.hook_{where}" for layer in range(model.cfg.n_layers)])


def attribution_at(
    model: HookedTransformer,
    clean: Int[Tensor, "batch pos"],
    corrupt: Int[Tensor, "batch pos"],
    metric: Metric,
    names: Sequence[str],
) -> Float[Tensor, "hook pos"]:
    """:func:`attribution_patching` at any ``[batch, pos, d]`` hooks, one row per name in that order, all from the
    same forward and backward pass (e.g. every ``hook_resid_pre`` and the last ``hook_resid_post``)."""
    return _attribution(model, clean, corrupt, metric, list(names), "batch pos d, batch pos d -> pos")


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
    """Pearson correlation of two effect maps, always in [-1, 1] (nan when either map is constant).

    Each centred map is scaled to unit norm before the dot product (in float64), so the result can only leave
    [-1, 1] by rounding, and it is clipped back: ``(a @ b) / (|a| |b|)`` computed directly can come out at
    ``1.0000000000000002`` for maps that are exactly proportional.
    """
    a, b = a.flatten().double(), b.flatten().double()
    a, b = a - a.mean(), b - b.mean()
    na, nb = a.norm(), b.norm()
    if not (na > 0 and nb > 0) or not (torch.isfinite(na) and torch.isfinite(nb)):
        return float("nan")
    return float(torch.clamp((a / na) @ (b / nb), -1.0, 1.0))


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
