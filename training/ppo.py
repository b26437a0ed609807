"""RLHF with PPO: sample completions, score them, and push the policy toward higher reward at a KL cost.

Follows Ouyang et al. 2022 (InstructGPT) as implemented by TRL's ``PPOTrainer`` and described in Huang et al.
2024, "The N+ implementation details of RLHF with PPO": a per-token KL penalty to a frozen reference with the
sequence score added at the last completion token, GAE over completion tokens, whitened advantages, clipped policy
and value losses, logits divided by the sampling temperature, and a penalty for completions that never end.

TRL's trainer wraps Hugging Face models; ours are HookedTransformers (so trained policies stay hookable and load
with the workbench's checkpoint loader), which is why the loop is written here. The metric names are TRL's.

Data: a list of prompts (TRL's ``prompt`` column, see ``common.load_rows``). Rewards: any
``reward_fn(prompts, completions) -> scores`` (a reward model from ``reward.py``, or a rule).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import shutil
import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from training.common import Batch, MetricLog
from workbench.errors import WorkbenchError
from workbench.io import atomic_dir
from workbench.models.checkpoint import save_checkpoint
from workbench.models.tokenizer import tokenize_prompts
from workbench.models.trainer import deterministic_cpu

log = logging.getLogger(__name__)
RewardFn = Callable[[list[str], list[str]], Tensor]


@dataclass(frozen=True)
class PPOConfig:
    lr: float = 1e-5
    """Adam learning rate (policy and value head together)."""
    steps: int = 100
    """PPO iterations: each is one rollout of ``batch_size`` prompts and ``ppo_epochs`` passes over it."""
    batch_size: int = 64
    """Prompts per rollout (drawn uniformly with replacement, seeded by the iteration)."""
    ppo_epochs: int = 4
    """Passes of clipped updates over each rollout."""
    minibatch_size: int = 16
    """Rollout sequences per gradient step."""
    gamma: float = 1.0
    """Discount over completion tokens (1: the score counts fully at every token, as in TRL)."""
    lam: float = 0.95
    """GAE lambda: bias (0, one-step TD) against variance (1, Monte Carlo returns)."""
    cliprange: float = 0.2
    """Policy ratio clip epsilon (Schulman et al. 2017, eq. 7)."""
    cliprange_value: float = 0.2
    """How far a value prediction may move from its rollout value before the loss stops rewarding it."""
    vf_coef: float = 0.1
    """Weight of the value loss against the policy loss."""
    kl_coef: float = 0.05
    """Initial beta of the per-token reward -beta * (log pi - log pi_ref)."""
    adaptive_kl: bool = False
    """Adapt beta toward ``target_kl`` (Ziegler et al. 2019, section 2.2) instead of holding it fixed."""
    target_kl: float = 6.0
    """Target summed KL per completion for the adaptive controller."""
    horizon: int = 10_000
    """Adaptive controller horizon in sequences: beta moves by at most 20% per ``horizon`` sequences."""
    missing_eos_penalty: float = 1.0
    """Subtracted from the score of a completion with no EOS within ``max_new_tokens`` (0 to disable)."""
    max_new_tokens: int = 16
    """Tokens sampled per completion, the EOS included."""
    temperature: float = 1.0
    """Sampling temperature; log-probs are taken from logits divided by it, so they are the sampler's."""
    whiten_advantages: bool = True
    """Normalise advantages to mean 0, variance 1 over the rollout's completion tokens."""
    seed: int = 0
    """Seeds prompt draws, sampling and minibatch order (each iteration from ``(seed, iteration)``)."""
    checkpoint_every: int = 10
    """Iterations between resumable checkpoints."""
    num_threads: int = 4
    """CPU threads; fixed, with deterministic kernels, so a seed gives the same weights bit for bit on CPU."""


# ---- pure functions -------------------------------------------------------------------------------------------


def masked_mean(x: Float[Tensor, "batch pos"], mask: Bool[Tensor, "batch pos"]) -> Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def per_token_rewards(
    score: Float[Tensor, " batch"], logprobs: Float[Tensor, "batch pos"], ref_logprobs: Float[Tensor, "batch pos"],
    mask: Bool[Tensor, "batch pos"], kl_coef: float,
) -> tuple[Float[Tensor, "batch pos"], Float[Tensor, "batch pos"]]:
    """r_t = -beta * (log pi(a_t) - log pi_ref(a_t)) at completion tokens, plus the score at the last one (EOS).

    Ziegler et al. 2019 eq. 2 / Ouyang et al. 2022 eq. 2, spread over tokens as TRL does. Returns the rewards
    and the per-token KL estimate (0 outside ``mask``).
    """
    kl = (logprobs - ref_logprobs) * mask
    rewards = -kl_coef * kl
    last = (mask.cumsum(-1) * mask).argmax(-1)  # the last completion position of each row
    return rewards.index_put((torch.arange(len(score), device=score.device), last), score, accumulate=True), kl


def gae(
    rewards: Float[Tensor, "batch pos"], values: Float[Tensor, "batch pos"], mask: Bool[Tensor, "batch pos"],
    gamma: float, lam: float,
) -> tuple[Float[Tensor, "batch pos"], Float[Tensor, "batch pos"]]:
    """Generalised advantage estimates and returns (Schulman et al. 2016, eq. 16).

    A_t = sum_l (gamma lam)^l delta_{t+l}, delta_t = r_t + gamma V_{t+1} - V_t, computed backwards over positions
    and vectorised over the batch. An episode is a row's run of ``mask`` positions; past its end V = 0 and nothing
    flows back. Returns = A + V (the value targets). Both are 0 outside ``mask``.
    """
    m = mask.to(values.dtype)
    next_mask = F.pad(m[:, 1:], (0, 1))
    deltas = rewards + gamma * F.pad(values[:, 1:], (0, 1)) * next_mask - values
    advantages, running = torch.zeros_like(values), torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        running = deltas[:, t] + gamma * lam * next_mask[:, t] * running
        advantages[:, t] = running
    return advantages * m, (advantages + values) * m


def whiten(x: Float[Tensor, "batch pos"], mask: Bool[Tensor, "batch pos"]) -> Float[Tensor, "batch pos"]:
    """(x - mean) / std over ``mask`` (unbiased variance, as TRL's ``masked_whiten``); 0 outside ``mask``."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask) * mask.sum() / (mask.sum() - 1).clamp(min=1)
    return (x - mean) * torch.rsqrt(var + 1e-8) * mask


def policy_loss(
    logprobs: Float[Tensor, "batch pos"], old_logprobs: Float[Tensor, "batch pos"],
    advantages: Float[Tensor, "batch pos"], mask: Bool[Tensor, "batch pos"], cliprange: float,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped surrogate -E[min(r A, clip(r, 1 - eps, 1 + eps) A)], r = pi / pi_old (Schulman et al. 2017, eq. 7)."""
    logratio = logprobs - old_logprobs
    ratio = logratio.exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - cliprange, 1 + cliprange)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        metrics = {
            "policy/approxkl_avg": 0.5 * masked_mean(logratio**2, mask),  # TRL's estimator of KL(pi_old || pi)
            "policy/clipfrac_avg": masked_mean((clipped > unclipped).float(), mask),
            "loss/policy_avg": loss.detach(),
        }
    return loss, metrics


def value_loss(
    values: Float[Tensor, "batch pos"], old_values: Float[Tensor, "batch pos"], returns: Float[Tensor, "batch pos"],
    mask: Bool[Tensor, "batch pos"], cliprange_value: float,
) -> tuple[Tensor, dict[str, Tensor]]:
    """0.5 E[max((V - R)^2, (V_old + clip(V - V_old, -eps, eps) - R)^2)]: PPO's clipped value loss (as TRL)."""
    clipped_values = old_values + (values - old_values).clamp(-cliprange_value, cliprange_value)
    unclipped, clipped = (values - returns) ** 2, (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        metrics = {"loss/value_avg": loss.detach(), "val/clipfrac_avg": masked_mean((clipped > unclipped).float(), mask)}
    return loss, metrics


def entropy(logits: Float[Tensor, "batch pos d_vocab"], mask: Bool[Tensor, "batch pos"]) -> Float[Tensor, "batch pos"]:
    """Entropy of each position's next-token distribution, 0 outside ``mask``."""
    logp = logits.log_softmax(-1)
    return -(logp.exp() * logp).sum(-1) * mask


# ---- model: the policy plus a value head ----------------------------------------------------------------------


class PolicyWithValue(nn.Module):
    """The policy (a HookedTransformer, saved alone at the end) and a linear value head reading the final
    normalised residual (``ln_final.hook_normalized``). The head starts at zero, so early value-loss gradients
    do not disturb the policy's features (Huang et al. 2024 start the value model from the reward model)."""

    def __init__(self, policy: HookedTransformer):
        super().__init__()
        self.policy = policy
        self.value_head = nn.Linear(policy.cfg.d_model, 1, device=policy.cfg.device, dtype=policy.cfg.dtype)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(self, tokens: Int[Tensor, "batch pos"]) -> tuple[Float[Tensor, "batch pos d_vocab"], Float[Tensor, "batch pos"]]:
        store = {}

        def keep(act, *, hook):
            store["resid"] = act

        with self.policy.hooks(fwd_hooks=[("ln_final.hook_normalized", keep)]):
            logits = self.policy(tokens, return_type="logits")
        return logits, self.value_head(store["resid"])[..., 0]


def shifted_logprobs(
    logits: Float[Tensor, "batch pos d_vocab"], tokens: Int[Tensor, "batch pos"], temperature: float
) -> tuple[Float[Tensor, "batch pos"], Float[Tensor, "batch pos d_vocab"]]:
    """From logits of ``tokens[:, :-1]``: position t holds log p(token_t | <t) (0 at t = 0), and the
    temperature-scaled logits aligned the same way."""
    logp = (logits / temperature).log_softmax(-1).gather(-1, tokens[:, 1:, None])[..., 0]
    return F.pad(logp, (1, 0)), F.pad(logits / temperature, (0, 0, 1, 0))
