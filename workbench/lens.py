"""Logit lens: read the residual stream after each layer through the final LayerNorm and the unembedding.

Built on TransformerLens's ``ActivationCache.accumulated_resid(apply_ln=True)``, which applies the final
LayerNorm to each layer's stream with a scale computed from that stream (nostalgebraist 2020), so the last row
equals the model's own logits exactly. The tuned lens (:mod:`workbench.tuned_lens`) starts from this readout.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer

from workbench.errors import WorkbenchError
from workbench.models.tokenizer import tokenize_prompts


@dataclass(frozen=True)
class LensReadout:
    labels: list[str]
    """One per row, TransformerLens's labels: ``L_pre`` is the stream entering block L (``0_pre``: the
    embeddings), ``final_post`` the stream after the last block."""
    log_probs: Float[Tensor, "layer pos d_vocab"]
    top_tokens: Int[Tensor, "layer pos k"]
    top_probs: Float[Tensor, "layer pos k"]
    target_prob: Float[Tensor, "layer pos"] | None
    target_rank: Int[Tensor, "layer pos"] | None
    """0 = the target is the lens's top token."""


@torch.inference_mode()
def logit_lens(
    model: HookedTransformer,
    prompt: str | Int[Tensor, " pos"],
    target: int | Int[Tensor, " pos"] | None = None,
    k: int = 5,
) -> LensReadout:
    """Logit lens of one prompt over layers x positions.

    ``target``: a token id to track at every position, or one id per position (e.g. the next tokens), whose
    probability and rank each layer's readout gives.
    """
    if isinstance(prompt, str):
        tokens = tokenize_prompts(model, [prompt])[0].reshape(1, -1)  # refuses, never truncates, a long prompt
    else:
        if prompt.dim() > 2 or (prompt.dim() == 2 and prompt.shape[0] != 1):
            raise WorkbenchError(f"logit_lens reads one prompt: tokens of shape [pos] or [1, pos], got {tuple(prompt.shape)}")
        tokens = prompt.reshape(1, -1)
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith(("hook_resid_pre", "hook_resid_post", "hook_scale")))
    resid, labels = cache.accumulated_resid(apply_ln=True, return_labels=True)  # [layer, batch, pos, d_model]
    return readout_from_log_probs(list(labels), model.unembed(resid[:, 0]).log_softmax(-1), target, k)


def readout_from_log_probs(
    labels: list[str], log_probs: Float[Tensor, "layer pos d_vocab"], target: int | Int[Tensor, " pos"] | None, k: int
) -> LensReadout:
    """Top-k tokens and the target's probability and rank of each row of a lens's log-probs."""
    d_vocab = log_probs.shape[-1]
    if not 1 <= k <= d_vocab:
        raise WorkbenchError(f"k must be in 1..{d_vocab}, got {k}")
    top = log_probs.topk(k, dim=-1)
    target_prob = target_rank = None
    if target is not None:
        t = torch.as_tensor(target, device=log_probs.device).expand(log_probs.shape[1])
        if not ((0 <= t) & (t < d_vocab)).all():
            raise WorkbenchError(f"target token ids must be in 0..{d_vocab - 1}")
        lp_t = log_probs.gather(-1, t.expand(log_probs.shape[0], -1).unsqueeze(-1)).squeeze(-1)
        target_prob, target_rank = lp_t.exp(), (log_probs > lp_t.unsqueeze(-1)).sum(-1)
    return LensReadout(list(labels), log_probs, top.indices, top.values.exp(), target_prob, target_rank)
