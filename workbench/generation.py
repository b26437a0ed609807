"""Batched greedy or sampled completion of prompts, through TransformerLens's ``generate``.

By default prompts are grouped by token length, so no batch holds padding and a prompt's completion is bit for bit
the same whether it is generated alone or in a batch. With ``padding="left"`` prompts of different lengths share
a batch, left-padded and masked (TransformerLens shifts the positions of each row past its padding): many fewer
forward passes when lengths vary (stories of a word problem), the same greedy tokens up to float rounding in a
near-tie (the padded matmuls sum in another order). Either way a call is deterministic for its list of prompts.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from transformer_lens import HookedTransformer

from workbench.errors import WorkbenchError
from workbench.models.tokenizer import tokenize_prompts


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
        gen = model.generate(
            batch.to(model.cfg.device),
            max_new_tokens=max_new_tokens,
            do_sample=temperature > 0,
            temperature=max(temperature, 1e-8),
            stop_at_eos=eos is not None,
            verbose=False,
            **({"padding_side": "left"} if padded else {}),  # where TransformerLens's mask looks for padding
        )
        for row, i in zip(gen[:, batch.shape[1]:].tolist(), chunk):
            if eos is not None and eos in row:
                row = row[: row.index(eos)]
            out[i] = model.tokenizer.decode(row, skip_special_tokens=True)
    return out
