"""Mechanism planting by interchange-intervention training (IIT; Geiger et al. 2022), with the strictness term of
strict IIT (Gupta et al. 2024, InterpBench).

A recipe that plants a mechanism names a high-level causal model of the task (:data:`CAUSAL_MODELS`) and aligns
each of its variables with a site of the network: a block of residual-stream coordinates at one hook, at the
position of the prompt's last token (``=``, where a direct answerer starts its answer). Next to the task loss,
each training step

1. runs a *source* problem and takes the site's activation;
2. runs a *base* problem with the site overwritten by the source's, teacher-forced on the answer the causal model
   gives for the base with that variable set to the source's value, and adds that answer's cross-entropy (IIT);
3. runs the base with every coordinate of the site's hook at that position *outside* the aligned blocks
   overwritten by the source's, and adds the cross-entropy of the base's own answer (strictness: what is not
   aligned with a variable must not move the output).

So after training, the aligned coordinates hold the variable in the sense that matters causally: swapping them
swaps the variable's value in the answer, and the interchange-intervention accuracy (IIA) in the card measures
how often. What the other positions and layers compute is not fixed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from transformer_lens import HookedTransformer

MAX_COLUMNS = 4


@dataclass(frozen=True)
class Alignment:
    """A high-level variable and the site it is planted at."""

    variable: str
    hook: str
    """A residual-stream hook, e.g. ``blocks.1.hook_resid_post``."""
    dims: tuple[int, int]
    """The coordinates [start, stop) of that residual stream, at the prompt's last position."""


@dataclass(frozen=True)
class IITConfig:
    causal_model: str
    """A key of :data:`CAUSAL_MODELS`."""
    alignments: tuple[Alignment, ...]
    weight: float = 1.0
    """Weight of the interchange loss against the task loss."""
    strict_weight: float = 0.5
    """Weight of the strictness loss."""
    pairs_per_step: int = 192
    """Base/source pairs per step (each step plants one variable, in turn)."""

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict | None) -> "IITConfig | None":
        if d is None:
            return None
        al = tuple(Alignment(a["variable"], a["hook"], tuple(a["dims"])) for a in d["alignments"])
        return cls(**{**d, "alignments": al})


def _digit(x: np.ndarray, i: int) -> np.ndarray:
    return (x // 10**i) % 10


def _columns(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    width = lambda x: np.where(x > 0, np.floor(np.log10(np.maximum(x, 1))).astype(np.int64) + 1, 1)
    return np.maximum(width(a), width(b))


def column_carries(a: np.ndarray, b: np.ndarray) -> list[np.ndarray]:
    """Carry out of each column (ones first) of the column algorithm, as arrays over problems."""
    out, c = [], np.zeros_like(a)
    for i in range(MAX_COLUMNS):
        c = (_digit(a, i) + _digit(b, i) + c) // 10
        out.append(c)
    return out


def _carry_sum(a: np.ndarray, b: np.ndarray, fixed: dict[int, np.ndarray]) -> np.ndarray:
    """The column algorithm's answer with the carries out of the columns in ``fixed`` set (downstream recomputed)."""
    cols = _columns(a, b)
    total, c = np.zeros_like(a), np.zeros_like(a)
    for i in range(MAX_COLUMNS):
        active = i < cols
        s = _digit(a, i) + _digit(b, i) + c
        total = total + np.where(active, (s % 10) * 10**i, 0)
        c_out = fixed.get(i, s // 10)
        total = total + np.where(i == cols - 1, c_out * 10 ** (i + 1), 0)
        c = np.where(active, c_out, 0)
    return total


def carry_model(a, b, a_src, b_src, variable: str) -> np.ndarray:
    """The textbook algorithm: ``carryI`` is the carry out of column I, read by column I+1."""
    i = int(variable.removeprefix("carry"))
    return _carry_sum(a, b, {i: column_carries(a_src, b_src)[i]})


def parallel_values(a: np.ndarray, b: np.ndarray) -> dict[str, np.ndarray]:
    """The parallel pathways of the 36+59 finding: a coarse magnitude (the sum to the five below it) and the exact
    ones digit, neither of which holds the carry."""
    s = a + b
    return {"magnitude": 5 * (s // 5), "ones": (_digit(a, 0) + _digit(b, 0)) % 10}


def combine(magnitude: np.ndarray, ones: np.ndarray) -> np.ndarray:
    """The one number within [magnitude - 4, magnitude + 5] that ends in ``ones``."""
    lo = magnitude - 4
    return lo + (ones - lo) % 10


def parallel_model(a, b, a_src, b_src, variable: str) -> np.ndarray:
    v = parallel_values(a, b)
    v[variable] = parallel_values(a_src, b_src)[variable]
    return combine(v["magnitude"], v["ones"])


CAUSAL_MODELS: dict[str, tuple[tuple[str, ...], Callable]] = {
    "carry": (("carry0", "carry1"), carry_model),
    "parallel": (("magnitude", "ones"), parallel_model),
}
"""High-level models of a+b: their variables and the answer with one variable taken from a source problem."""


def joint_counterfactual(causal_model: str, a, b, a_src, b_src) -> np.ndarray:
    """The causal model's answer for the base with *every* one of its variables taken from the source: what a
    patch of a whole site that holds all of them gives."""
    a, b, a_src, b_src = map(np.asarray, (a, b, a_src, b_src))
    names, _ = CAUSAL_MODELS[causal_model]
    if causal_model == "carry":
        carries, columns = column_carries(a_src, b_src), [int(v.removeprefix("carry")) for v in names]
        return _carry_sum(a, b, {i: carries[i] for i in columns})
    if causal_model == "parallel":
        v = parallel_values(a_src, b_src)
        return combine(v["magnitude"], v["ones"])
    raise ValueError(f"no joint counterfactual for {causal_model!r}")


def counterfactual(cfg: IITConfig | str, variable: str, a, b, a_src, b_src) -> np.ndarray:
    causal_model = cfg if isinstance(cfg, str) else cfg.causal_model
    names, fn = CAUSAL_MODELS[causal_model]
    if variable not in names:
        raise ValueError(f"{causal_model} has no variable {variable!r}; it has {', '.join(names)}")
    return fn(np.asarray(a), np.asarray(b), np.asarray(a_src), np.asarray(b_src), variable)


def check_config(cfg: IITConfig, d_model: int) -> None:
    names = CAUSAL_MODELS.get(cfg.causal_model, (None,))[0]
    if names is None:
        raise ValueError(f"unknown causal model {cfg.causal_model!r}; models: {', '.join(CAUSAL_MODELS)}")
    hooks = {al.hook for al in cfg.alignments}
    if len(hooks) != 1:
        raise ValueError("every aligned variable must sit at one hook (the strictness term swaps the rest of it)")
    taken = np.zeros(d_model, dtype=bool)
    for al in cfg.alignments:
        lo, hi = al.dims
        if al.variable not in names or not 0 <= lo < hi <= d_model or taken[lo:hi].any():
            raise ValueError(f"alignment {al} must name a variable of {cfg.causal_model} and a block of unused "
                             f"coordinates within 0..{d_model}")
        taken[lo:hi] = True


def _patched_logits(model: HookedTransformer, tokens: Tensor, pos: Tensor, hook: str, dims: Tensor,
                    source: Tensor) -> Tensor:
    """Logits of ``tokens`` with the residual at ``hook``, row r, position ``pos[r]``, coordinates ``dims``
    replaced by ``source[r, dims]``."""
    rows = torch.arange(tokens.shape[0])

    def swap(act, hook):
        out = act.clone()
        out[rows[:, None], pos[:, None], dims[None, :]] = source[:, dims].to(out.dtype)
        return out

    return model.run_with_hooks(tokens, fwd_hooks=[(hook, swap)], return_type="logits")


def _masked_ce(logits: Tensor, tokens: Tensor, mask: Tensor) -> Tensor:
    nll = F.cross_entropy(logits.transpose(1, 2), tokens[:, 1:], reduction="none")
    m = mask[:, 1:]
    return (nll * m).sum() / m.sum()


def encode_direct(tokenizer, a: np.ndarray, b: np.ndarray, answers: np.ndarray) -> dict:
    """Direct prompts ``a+b=`` teacher-forced on ``answers``: tokens, the answer's loss mask, and the position of
    the prompt's last token (``=``, the site's position) in each row."""
    from workbench.models.trainer import encode_samples  # the trainer imports this module
    from workbench.tasks.formats import Sample

    enc = encode_samples(tokenizer, [Sample(f"{x}+{y}=", str(z)) for x, y, z in zip(a, b, answers)])
    return {"tokens": enc.tokens, "mask": enc.loss_mask, "pos": enc.loss_mask.float().argmax(1) - 1}


def site_activation(model: HookedTransformer, hook: str, source: dict) -> Tensor:
    """The residual at ``hook`` of each source row at its ``=``: ``[rows, d_model]``."""
    captured = {}

    def keep(act, hook):
        captured["act"] = act

    model.run_with_hooks(source["tokens"], fwd_hooks=[(hook, keep)], return_type=None)
    return captured["act"][torch.arange(source["tokens"].shape[0]), source["pos"]]


def iit_losses(model: HookedTransformer, cfg: IITConfig, alignment: Alignment, base: dict, source: dict,
               cf: dict) -> tuple[Tensor, Tensor]:
    """The interchange loss and the strictness loss of one batch of pairs.

    ``base``/``cf``: tokens, loss mask and the last prompt position of the base problem teacher-forced on its own
    answer / on the counterfactual answer; ``source``: the source prompts' tokens and last prompt position."""
    src = site_activation(model, alignment.hook, source)
    lo, hi = alignment.dims
    aligned = torch.arange(lo, hi)
    logits = _patched_logits(model, cf["tokens"][:, :-1], cf["pos"], alignment.hook, aligned, src)
    interchange = _masked_ce(logits, cf["tokens"], cf["mask"])
    used = torch.zeros(src.shape[1], dtype=torch.bool)
    for al in cfg.alignments:
        used[al.dims[0]:al.dims[1]] = True
    rest = torch.nonzero(~used).flatten()
    logits = _patched_logits(model, base["tokens"][:, :-1], base["pos"], alignment.hook, rest, src)
    strict = _masked_ce(logits, base["tokens"], base["mask"])
    return interchange, strict


@torch.no_grad()
def interchange_accuracy(model: HookedTransformer, cfg: IITConfig, a: np.ndarray, b: np.ndarray, a_src: np.ndarray,
                         b_src: np.ndarray, batch: int = 512) -> dict[str, dict]:
    """Interchange-intervention accuracy per aligned variable (Geiger et al.): how often the base run with the
    site taken from the source writes exactly the causal model's counterfactual answer (each answer token and the
    end of text the arg max in turn, which is when greedy decoding writes it). Only pairs whose counterfactual
    answer differs from the base's are counted, so an ignored site scores 0, not the share of unchanged answers."""
    from workbench.models.organism_eval import rate

    out = {}
    for al in cfg.alignments:
        cf = counterfactual(cfg, al.variable, a, b, a_src, b_src)
        keep = np.flatnonzero(cf != a + b)
        hits = []
        for s in range(0, len(keep), batch):
            k = keep[s:s + batch]
            src = encode_direct(model.tokenizer, a_src[k], b_src[k], a_src[k] + b_src[k])
            tgt = encode_direct(model.tokenizer, a[k], b[k], cf[k])
            act = site_activation(model, al.hook, src)
            logits = _patched_logits(model, tgt["tokens"][:, :-1], tgt["pos"], al.hook, torch.arange(*al.dims), act)
            right = (logits.argmax(-1) == tgt["tokens"][:, 1:]) | ~tgt["mask"][:, 1:]
            hits += right.all(-1).tolist()
        out[al.variable] = {**rate(hits), "site": f"{al.hook}[=, {al.dims[0]}:{al.dims[1]}]"}
    return out
