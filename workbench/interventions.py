"""Hook-based interventions as context managers: ablate (zero, mean, resample), patch, steer.

Each is a thin layer over TransformerLens's ``model.hooks(...)``, which removes its hooks on exit, also when the
body raises, so a shared model (the app caches one) never keeps a stray hook. Every intervention can be
restricted to positions and, at hooks with a head axis (``attn.hook_z``, ``hook_q``/``k``/``v``,
``hook_result``, ``hook_pattern``, ``hook_attn_scores``), to heads.

    with zero_ablate(model, "blocks.1.attn.hook_z", heads=[2], positions=[-1]):
        logits = model(tokens)
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens import HookedTransformer
from transformer_lens.hook_points import HookPoint

from workbench.errors import WorkbenchError

Positions = int | Sequence[int] | slice | None
"""Which sequence positions to change: one, several (negative counts from the end), a slice, or all (None)."""
HEAD_AXIS_HOOKS = ("attn.hook_z", "attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_result")
PATTERN_HOOKS = ("attn.hook_pattern", "attn.hook_attn_scores")  # [batch head query key]


class UnknownHook(WorkbenchError):
    """A hook name the model does not have."""


def check_hook(model: HookedTransformer, name: str) -> str:
    """Return ``name`` if the model has that hook, else raise with the closest valid names."""
    if name in model.hook_dict:
        return name
    close = difflib.get_close_matches(name, list(model.hook_dict), n=5, cutoff=0.5)
    layer_hint = f"; layers are 0..{model.cfg.n_layers - 1}" if name.startswith("blocks.") else ""
    raise UnknownHook(f"no hook {name!r} in this model; closest: {', '.join(close) or '(none)'}{layer_hint}")


def _has_head_axis(name: str) -> bool:
    return name.endswith(HEAD_AXIS_HOOKS) or name.endswith(PATTERN_HOOKS)


def _index(name: str, act: Tensor, positions: Positions, heads: Sequence[int] | None) -> tuple:
    """The index into ``act`` that selects the given positions (and heads) for every batch element."""
    if heads is not None and not _has_head_axis(name):
        raise WorkbenchError(f"heads= needs a hook with a head axis ({', '.join(HEAD_AXIS_HOOKS + PATTERN_HOOKS)}), got {name}")
    pos: object = slice(None) if positions is None else [positions] if isinstance(positions, int) else positions
    if name.endswith(PATTERN_HOOKS):  # [batch head query key]: positions select queries
        head_idx = slice(None) if heads is None else list(heads)
        if heads is not None and not isinstance(pos, slice):
            return (slice(None), torch.tensor(head_idx, dtype=torch.long)[:, None], torch.tensor(pos, dtype=torch.long)[None, :])
        return (slice(None), head_idx, pos)
    if heads is None:
        return (slice(None), pos)
    if isinstance(pos, slice):
        return (slice(None), pos, list(heads))
    # Two index lists would be zipped by advanced indexing; broadcast them into a grid instead.
    return (slice(None), torch.tensor(pos, dtype=torch.long)[:, None], torch.tensor(list(heads), dtype=torch.long)[None, :])


@contextmanager
def intervene(
    model: HookedTransformer,
    name: str,
    new_value: Callable[[Tensor, tuple], Tensor],
    positions: Positions = None,
    heads: Sequence[int] | None = None,
) -> Iterator[HookedTransformer]:
    """Replace the selected part of activation ``name`` with ``new_value(act, index)`` during the body.

    The shared mechanism of every intervention below; ``index`` is the tuple selecting the positions and heads.
    """
    check_hook(model, name)

    def hook(act: Tensor, *, hook: HookPoint) -> Tensor:
        idx = _index(name, act, positions, heads)
        act = act.clone()  # never write into a tensor TransformerLens may also have cached
        act[idx] = new_value(act, idx).to(act.dtype)
        return act

    with model.hooks(fwd_hooks=[(name, hook)]):
        yield model


def zero_ablate(model: HookedTransformer, name: str, positions: Positions = None, heads: Sequence[int] | None = None):
    """Set the selected activations to 0."""
    return intervene(model, name, lambda act, idx: torch.zeros_like(act[idx]), positions, heads)


def mean_ablate(
    model: HookedTransformer,
    name: str,
    mean: Float[Tensor, "..."],
    positions: Positions = None,
    heads: Sequence[int] | None = None,
):
    """Set the selected activations to ``mean``: an activation of the hook without its batch axis (e.g. from
    :func:`mean_activation`), indexed like the activation, so a per-position mean stays per-position."""

    def value(act: Tensor, idx: tuple) -> Tensor:
        try:
            full = mean.to(act.device).expand(act.shape[1:])
        except RuntimeError:
            raise WorkbenchError(f"mean for {name} has shape {tuple(mean.shape)}, which does not broadcast to the "
                                 f"activation's {tuple(act.shape[1:])} (a per-position mean needs prompts of the "
                                 "same length)") from None
        return full.unsqueeze(0).expand_as(act)[idx]

    return intervene(model, name, value, positions, heads)


def patch(
    model: HookedTransformer,
    name: str,
    source: Float[Tensor, "batch ..."],
    positions: Positions = None,
    heads: Sequence[int] | None = None,
):
    """Write ``source`` (the same hook's activation from another run, same shape) into the selected part.

    ``source`` from a run on corrupted prompts gives denoising-style activation patching; from clean prompts
    into a corrupted run, noising. Resample ablation is a patch whose source is a shuffled batch.
    """

    def value(act: Tensor, idx: tuple) -> Tensor:
        if source.shape != act.shape:
            raise WorkbenchError(f"patch source for {name} has shape {tuple(source.shape)}, the run has {tuple(act.shape)}")
        return source.to(act.device)[idx]

    return intervene(model, name, value, positions, heads)


def resample_ablate(
    model: HookedTransformer,
    name: str,
    source: Float[Tensor, "batch ..."],
    generator: torch.Generator,
    positions: Positions = None,
    heads: Sequence[int] | None = None,
):
    """Replace each example's selected activations with those of another example of ``source`` (drawn with
    ``generator``; an example is never patched with itself when the batch has more than one)."""
    n = source.shape[0]
    perm = torch.randperm(n, generator=generator)
    if n > 1:
        fixed = perm == torch.arange(n)
        perm[fixed] = (perm[fixed] + 1) % n  # no example keeps its own activation
    return patch(model, name, source[perm], positions, heads)


def steer(
    model: HookedTransformer,
    name: str,
    vector: Float[Tensor, " d"],
    scale: float = 1.0,
    positions: Positions = None,
    heads: Sequence[int] | None = None,
):
    """Add ``scale * vector`` to the selected activations (activation addition / steering)."""
    return intervene(model, name, lambda act, idx: act[idx] + scale * vector.to(act.device), positions, heads)


@torch.inference_mode()
def mean_activation(model: HookedTransformer, tokens: Tensor, name: str, per_position: bool = True) -> Tensor:
    """Mean of activation ``name`` over a batch of prompts (per position, or over positions too)."""
    check_hook(model, name)
    if not per_position and name.endswith(PATTERN_HOOKS):
        raise WorkbenchError(f"{name} is [batch head query key]: take its per-position mean (per_position=True)")
    _, cache = model.run_with_cache(tokens, names_filter=name)
    act = cache[name]
    return act.mean(0) if per_position else act.mean((0, 1))
