"""Batched greedy or sampled completion of prompts, through TransformerLens's ``generate``.

Prompts are grouped by token length, so no batch holds padding: a prompt's completion is the same whether it is
generated alone or in a batch (left padding would shift standard positional embeddings).
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
) -> list[str]:
    """The text each prompt's completion adds before the end-of-text token (greedy when temperature is 0).

    Sampling with a seed is reproducible for the same list of prompts; prompts are batched by token length, so
    one prompt's sample depends on which other prompts share the call.
    """
    if temperature < 0:
        raise WorkbenchError(f"temperature must be >= 0, got {temperature}")
    if max_new_tokens < 1:
        raise WorkbenchError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    tokens = tokenize_prompts(model, prompts, reserve=max_new_tokens)
    with torch.random.fork_rng(devices=[]):  # a seed here must not reset the caller's global random state
        if seed is not None:
            torch.manual_seed(seed)
        return _generate(model, tokens, max_new_tokens, temperature, batch_size)


def _generate(model: HookedTransformer, tokens: list[torch.Tensor], max_new_tokens: int, temperature: float,
              batch_size: int) -> list[str]:
    groups: dict[int, list[int]] = defaultdict(list)
    for i, t in enumerate(tokens):
        groups[len(t)].append(i)
    eos = model.tokenizer.eos_token_id
    out: list[str] = [""] * len(tokens)
    for length, idx in sorted(groups.items()):
        for start in range(0, len(idx), batch_size):
            chunk = idx[start : start + batch_size]
            batch = torch.stack([tokens[i] for i in chunk]).to(model.cfg.device)
            gen = model.generate(
                batch,
                max_new_tokens=max_new_tokens,
                do_sample=temperature > 0,
                temperature=max(temperature, 1e-8),
                stop_at_eos=eos is not None,
                verbose=False,
            )
            for row, i in zip(gen[:, length:].tolist(), chunk):
                if eos is not None and eos in row:
                    row = row[: row.index(eos)]
                out[i] = model.tokenizer.decode(row, skip_special_tokens=True)
    return out
