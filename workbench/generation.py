"""Batched greedy or sampled completion of prompts, with TransformerLens's generation step (see
:func:`generate_batch`).

By default prompts are grouped by token length, so no batch holds padding and a prompt's completion is bit for bit
the same whether it is generated alone or in a batch. With ``padding="left"`` prompts of different lengths share
a batch, left-padded and masked (TransformerLens shifts the positions of each row past its padding): many fewer
forward passes when lengths vary (stories of a word problem), the same greedy tokens up to float rounding in a
near-tie (the padded matmuls sum in another order). Either way a call is deterministic for its list of prompts.
"""

from __future__ import annotations

from collections import defaultdict

import torch
import transformer_lens.utilities as tl_utils
from jaxtyping import Int
from torch import Tensor
from transformer_lens import HookedTransformer
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

from workbench.errors import WorkbenchError
from workbench.models.tokenizer import tokenize_prompts


class _HeadMajorEntry:
    """A key-value cache entry in the layout TransformerLens's attention reads it in, allocated once for the
    whole generation: keys as ``[batch, head, d_head, length]`` and values as ``[batch, head, length, d_head]``.

    TransformerLens's own entry concatenates the whole cache with each new token, and its attention then
    rearranges keys and values to those layouts, which ``matmul`` copies to contiguous memory every step. Here a
    step writes one position, and ``past_keys`` / ``past_values`` are views of the buffers in the
    ``[batch, pos, head, d_head]`` order TransformerLens expects, so its rearrange lands on the buffers' own layout
    and the matmuls read them in place. The values are the same numbers, so the tokens are the same (tested
    against TransformerLens's ``generate``)."""

    frozen = False

    def __init__(self, like: Tensor, length: int):
        b, _, h, d = like.shape
        self.keys = like.new_empty((b, h, d, length))
        self.values = like.new_empty((b, h, length, d))
        self.size = 0

    @property
    def past_keys(self) -> Tensor:
        return self.keys[..., : self.size].permute(0, 3, 1, 2)

    @property
    def past_values(self) -> Tensor:
        return self.values[:, :, : self.size].permute(0, 2, 1, 3)

    def append(self, new_keys: Tensor, new_values: Tensor) -> tuple[Tensor, Tensor]:
        if self.frozen:  # as TransformerLens's entry: the keys and values with the new ones, nothing stored
            return (torch.cat([self.past_keys, new_keys], dim=1), torch.cat([self.past_values, new_values], dim=1))
        end = self.size + new_keys.shape[1]
        self.keys[..., self.size : end] = new_keys.permute(0, 2, 3, 1)
        self.values[:, :, self.size : end] = new_values.permute(0, 2, 1, 3)
        self.size = end
        return self.past_keys, self.past_values

    def keep(self, rows: Tensor) -> None:
        """Only ``rows`` of the batch go on (the used positions are copied, not the whole buffers)."""
        keys, values = self.keys.new_empty((len(rows), *self.keys.shape[1:])), self.values.new_empty(
            (len(rows), *self.values.shape[1:]))
        keys[..., : self.size] = self.keys[rows, ..., : self.size]
        values[:, :, : self.size] = self.values[rows, :, : self.size]
        self.keys, self.values = keys, values


@torch.inference_mode()
def complete(
    model: HookedTransformer,
    prompts: list[str],
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    batch_size: int = 512,
    seed: int | None = None,
    padding: str = "none",
) -> list[str]:
    """The text each prompt's completion adds before the end-of-text token (greedy when temperature is 0).

    Sampling with a seed is reproducible for the same list of prompts; prompts are batched (by token length
    unless ``padding="left"``, see the module), so one prompt's sample depends on which other prompts share the
    call.
    """
    if temperature < 0:
        raise WorkbenchError(f"temperature must be >= 0, got {temperature}")
    if max_new_tokens < 1:
        raise WorkbenchError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if padding not in ("none", "left"):
        raise WorkbenchError(f"padding must be 'none' or 'left', got {padding!r}")
    tokens = tokenize_prompts(model, prompts, reserve=max_new_tokens)
    with torch.random.fork_rng(devices=[]):  # a seed here must not reset the caller's global random state
        if seed is not None:
            torch.manual_seed(seed)
        return _generate(model, tokens, max_new_tokens, temperature, batch_size, padding)


def _batches(model: HookedTransformer, tokens: list[torch.Tensor], batch_size: int, padding: str):
    """``(indices, batch)`` chunks: one token length each, or (left padding) up to ``batch_size`` prompts of
    neighbouring lengths padded to the longest. A prompt that itself starts with the pad id would be masked as
    padding, so such prompts keep batches of their own length."""
    groups: dict[int, list[int]] = defaultdict(list)
    for i, t in enumerate(tokens):
        groups[len(t)].append(i)
    pad = model.tokenizer.pad_token_id
    if padding == "left" and pad is not None:
        clash = {i for i, t in enumerate(tokens) if int(t[0]) == pad and model.tokenizer.bos_token_id != pad}
        order = [i for _, idx in sorted(groups.items()) for i in idx if i not in clash]
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            longest = max(len(tokens[i]) for i in chunk)
            yield chunk, torch.stack([torch.cat([torch.full((longest - len(tokens[i]),), pad, dtype=tokens[i].dtype),
                                                 tokens[i]]) for i in chunk])
        groups = {n: [i for i in idx if i in clash] for n, idx in groups.items()}
    for _, idx in sorted(groups.items()):
        for start in range(0, len(idx), batch_size):
            chunk = idx[start : start + batch_size]
            if chunk:
                yield chunk, torch.stack([tokens[i] for i in chunk])


def _generate(model: HookedTransformer, tokens: list[torch.Tensor], max_new_tokens: int, temperature: float,
              batch_size: int, padding: str = "none") -> list[str]:
    eos = model.tokenizer.eos_token_id
    out: list[str] = [""] * len(tokens)
    for chunk, batch in _batches(model, tokens, batch_size, padding):
        padded = len({len(tokens[i]) for i in chunk}) > 1
        gen = generate_batch(model, batch.to(model.cfg.device), max_new_tokens, temperature, eos, padded)
        for row, i in zip(gen.tolist(), chunk):
            if eos is not None and eos in row:
                row = row[: row.index(eos)]
            out[i] = model.tokenizer.decode(row, skip_special_tokens=True)
    return out


def generate_batch(model: HookedTransformer, batch: Int[torch.Tensor, "batch pos"], max_new_tokens: int,
                   temperature: float, eos: int | None, padded: bool) -> Int[torch.Tensor, "batch new"]:
    """The new tokens of ``batch`` (``eos`` after a row's end), computed as TransformerLens's ``generate`` does:
    the same attention mask, positions, key-value cache and forward calls, and the same sampler on a tensor of
    the whole batch's shape, so greedy tokens and a seeded sample's stream are TransformerLens's own. Three costs
    of that loop are dropped: rows that have ended leave the batch (their cache rows with them) once they are a
    quarter of it, instead of being run on to the longest row's end; each step embeds the new token only, not the
    whole sequence again; and the key-value cache is allocated once, in the layout the attention reads
    (:class:`_HeadMajorEntry`), instead of being concatenated and copied every step. A forward hook therefore sees
    the batch shrink as rows end."""
    device = batch.device
    tokenizer = model.tokenizer
    side = tokenizer.padding_side
    tokenizer.padding_side = "left" if padded else side  # where TransformerLens's mask looks for padding
    try:
        mask = tl_utils.get_attention_mask(tokenizer, batch, model.cfg.default_prepend_bos).to(device)
    finally:
        tokenizer.padding_side = side
    n = batch.shape[0]
    new = torch.full((n, max_new_tokens), eos if eos is not None else 0, dtype=batch.dtype, device=device)
    alive = torch.arange(n, device=device)  # the batch rows still generating, in cache order
    cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, n)
    cache.entries = [_HeadMajorEntry(e.past_keys, batch.shape[1] + max_new_tokens) for e in cache.entries]
    model.eval()
    residual, shortformer = model.get_residual(model.embed(batch), 0, attention_mask=mask, device=device)
    done = torch.zeros(n, dtype=torch.bool, device=device)  # rows of the cache that have ended, not yet dropped
    for step in range(max_new_tokens):
        logits = model.forward(residual, return_type="logits", past_kv_cache=cache, start_at_layer=0,
                               shortformer_pos_embed=shortformer, attention_mask=mask)[:, -1, :]
        if temperature > 0:
            # The sampler draws its noise for the whole batch's shape, so each row's draw is the one it would get
            # had no row left the batch; rows that have left get a flat distribution, and no ended row is read.
            full = torch.zeros((n, logits.shape[-1]), dtype=logits.dtype, device=device)
            full[alive] = logits
            sampled = tl_utils.sample_logits(full, temperature=temperature)[alive]
        else:
            sampled = logits.argmax(-1)
        new[alive[~done], step] = sampled[~done]
        if step == max_new_tokens - 1:
            break
        if eos is not None:
            done = done | (sampled == eos)
            if done.all():
                break
            # Ended rows leave the batch once they are a quarter of it: dropping them one step at a time would
            # copy the cache nearly every step, keeping them all would run them to the longest row's end.
            if 4 * int(done.sum()) >= len(done):
                keep = (~done).nonzero().squeeze(1)
                alive, sampled, mask, done = alive[keep], sampled[keep], mask[keep], done[keep]
                for entry in cache.entries:
                    entry.keep(keep)
                cache.previous_attention_mask = cache.previous_attention_mask[keep]
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        residual, shortformer = model.get_residual(model.embed(sampled[:, None]), cache.entries[0].past_keys.shape[1],
                                                   attention_mask=mask, device=device)
    return new


def transformer_lens_batch(model: HookedTransformer, batch: Int[torch.Tensor, "batch pos"], max_new_tokens: int,
                           temperature: float, padded: bool) -> Int[torch.Tensor, "batch new"]:
    """The same batch through TransformerLens's own ``generate`` (the reference :func:`generate_batch` is tested
    and benchmarked against): its new tokens, up to where every row has ended."""
    gen = model.generate(batch, max_new_tokens=max_new_tokens, do_sample=temperature > 0,
                         temperature=max(temperature, 1e-8), stop_at_eos=model.tokenizer.eos_token_id is not None,
                         verbose=False, **({"padding_side": "left"} if padded else {}))
    return gen[:, batch.shape[1]:]

