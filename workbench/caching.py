"""In-memory activation caching: a thin layer over TransformerLens's ``run_with_cache``.

What it adds is only what a study needs around it: hook-name patterns checked against the model, batching of
many prompts, and keeping only chosen positions (e.g. the last token) so memory scales with what is kept.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections import defaultdict
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor
from transformer_lens import HookedTransformer

from workbench.errors import WorkbenchError
from workbench.interventions import PATTERN_HOOKS, Positions
from workbench.models.tokenizer import tokenize_prompts


_EMBEDDING_HOOKS = ("hook_embed", "hook_pos_embed", "hook_tokens")


def blocks_needed(names: Sequence[str]) -> int | None:
    """How many blocks a forward pass must run for every hook in ``names`` to fire: one past the last block
    named, 0 for embedding hooks only, None where a hook after the blocks (``ln_final``, ``unembed``) is wanted.
    Passed as ``stop_at_layer``, the forward skips the rest (the unembedding of a large vocabulary included),
    as SAELens's activation store does."""
    last = 0
    for name in names:
        if name.startswith("blocks.") and name.split(".")[1].isdigit():
            last = max(last, int(name.split(".")[1]) + 1)
        elif name not in _EMBEDDING_HOOKS:
            return None
    return last


def resolve_hooks(model: HookedTransformer, patterns: str | Sequence[str]) -> list[str]:
    """Hook names matching glob ``patterns`` (``blocks.*.hook_resid_post``), in the model's order."""
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    names = list(model.hook_dict)
    out = []
    for pattern in patterns:
        hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            close = difflib.get_close_matches(pattern, names, n=5, cutoff=0.5)
            raise WorkbenchError(f"no hook matches {pattern!r}; closest: {', '.join(close) or '(none)'} "
                                 "(patterns are globs, e.g. 'blocks.*.hook_resid_post')")
        out += [h for h in hits if h not in out]
    return sorted(out, key=names.index)


def _select(name: str, act: Tensor, positions: Positions) -> Tensor:
    if positions is None:
        return act
    idx = [positions] if isinstance(positions, int) else positions
    return act[:, :, idx] if name.endswith(PATTERN_HOOKS) else act[:, idx]  # patterns: select query positions


def _fired(names: list[str], cached: dict, requested: str | Sequence[str]) -> list[str]:
    """Drop hooks that exist but did not fire (e.g. ``hook_attn_in`` without ``use_attn_in``) if a glob found
    them; a hook asked for by its exact name that did not fire is an error."""
    exact = {requested} if isinstance(requested, str) else set(requested)
    silent = [n for n in names if n not in cached]
    if silent_exact := [n for n in silent if n in exact]:
        raise WorkbenchError(f"hooks {silent_exact} exist but do not fire in this model's configuration "
                             "(e.g. hook_attn_in needs use_attn_in=True)")
    fired = [n for n in names if n in cached]
    if not fired:
        raise WorkbenchError(f"none of the hooks {sorted(exact)} match fires in this model's configuration "
                             f"(matched but silent: {', '.join(silent[:4])}{', ...' if len(silent) > 4 else ''}; "
                             "e.g. hook_attn_in needs use_attn_in=True); choose hooks that run, e.g. "
                             "'blocks.*.hook_resid_post'")
    return fired


def cache_activations(
    model: HookedTransformer,
    prompts: Sequence[str],
    hooks: str | Sequence[str],
    positions: Positions = None,
    batch_size: int = 256,
) -> dict[str, Tensor]:
    """Activations of ``hooks`` on ``prompts``: ``{name: [n_prompts, n_positions, ...]}`` on the CPU.

    Prompts of one call must tokenize to the same length unless ``positions`` picks positions counted from
    the end (e.g. ``-1``), which are aligned whatever the length.
    """
    return cache_tokens(model, tokenize_prompts(model, list(prompts)), hooks, positions, batch_size)


def cached_row_shape(name: str, act: Tensor, pad_to: int | None) -> tuple[int, ...]:
    """The shape one prompt's cached ``name`` has, from a batch of its activations: its positions padded to
    ``pad_to`` when given (attention patterns are never padded: their prompts all have one length)."""
    if pad_to is None or name.endswith(PATTERN_HOOKS):
        return tuple(act.shape[1:])
    return (pad_to, *act.shape[2:])


@torch.inference_mode()
def cached_batches(
    model: HookedTransformer,
    toks: list[Tensor],
    hooks: str | Sequence[str],
    positions: Positions = None,
    batch_size: int = 256,
    pad_to: int | None = None,
) -> Iterator[tuple[list[int], dict[str, Tensor]]]:
    """The batches :func:`cache_tokens` runs, one at a time: ``(rows, {name: activations})`` with the indices of
    the batch's prompts in ``toks`` (ascending) and their selected activations on the CPU, unpadded
    (``[len(rows), positions, ...]``). For a writer that takes each batch as it comes instead of one buffer per
    hook."""
    names = resolve_hooks(model, hooks)
    if isinstance(positions, slice):
        raise WorkbenchError("positions must be an int, a list of ints, or None; not a slice")
    if not toks:
        raise WorkbenchError("no prompts to cache")
    lengths = {len(t) for t in toks}
    pos_list = [] if positions is None else [positions] if isinstance(positions, int) else list(positions)
    from_end = positions is not None and all(i < 0 for i in pos_list)
    if pos_list and (max(abs(i) for i in pos_list) > min(lengths) or max(pos_list) >= min(lengths)):
        raise WorkbenchError(f"positions {pos_list} do not exist in the shortest prompt ({min(lengths)} tokens)")
    if pad_to is not None and (positions is not None or pad_to < max(lengths)):
        raise WorkbenchError(f"pad_to needs positions=None and at least {max(lengths)} positions, got {pad_to}")
    if len(lengths) > 1 and not from_end and pad_to is None:
        raise WorkbenchError(f"prompts have different token lengths {sorted(lengths)}: pass positions counted "
                             "from the end (e.g. -1) or prompts of one length")
    if len(lengths) > 1 and any(n.endswith(PATTERN_HOOKS) for n in names):
        raise WorkbenchError("attention patterns of prompts of different lengths cannot be stacked (their key axes "
                             "differ): cache them for prompts of one length")
    by_len: dict[int, list[int]] = defaultdict(list)
    for i, t in enumerate(toks):
        by_len[len(t)].append(i)
    first, stop = True, blocks_needed(names)
    for _, idx in sorted(by_len.items()):
        for start in range(0, len(idx), batch_size):
            chunk = idx[start : start + batch_size]
            logits, cache = model.run_with_cache(torch.stack([toks[i] for i in chunk]), names_filter=names,
                                                 stop_at_layer=stop)
            if first:
                names = _fired(names, cache.cache_dict, hooks)
                first = False
            acts = {name: _select(name, cache[name], positions).cpu() for name in names}
            del logits, cache  # only the selected activations outlive the batch
            yield chunk, acts


@torch.inference_mode()
def cache_tokens(
    model: HookedTransformer,
    toks: list[Tensor],
    hooks: str | Sequence[str],
    positions: Positions = None,
    batch_size: int = 256,
    pad_to: int | None = None,
) -> dict[str, Tensor]:
    """:func:`cache_activations` for prompts already tokenized (one 1-D tensor of ids per prompt).

    With ``positions=None`` and ``pad_to``, prompts of different lengths are allowed: every position is kept and
    the rows are zero-padded on the right to ``pad_to`` positions (the caller keeps the lengths to unpad).
    """
    out: dict[str, Tensor] = {}
    # Zero-filled only where a row can hold padding; consecutive rows are copied as a slice, not scattered.
    zeros = pad_to is not None and bool(toks) and min(len(t) for t in toks) < pad_to
    for chunk, acts in cached_batches(model, toks, hooks, positions, batch_size, pad_to):
        rows = slice(chunk[0], chunk[-1] + 1) if chunk[-1] - chunk[0] == len(chunk) - 1 else chunk
        for name, act in acts.items():
            shape = cached_row_shape(name, act, pad_to)
            if name not in out:  # one buffer per hook, filled in the caller's prompt order: no concatenation copies
                out[name] = (torch.zeros if zeros else torch.empty)((len(toks), *shape), dtype=act.dtype)
            if act.shape[1:] == shape:
                out[name][rows] = act
            else:
                out[name][rows, : act.shape[1]] = act
    return out
