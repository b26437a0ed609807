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
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from training.common import Batch, Distributed, MetricLog, check_finite, check_training_config, distributed
from workbench.resume import check_same_run
from workbench.errors import NonFiniteLoss, WorkbenchError
from workbench.generation import generate_batch
from workbench.models.export import export_beside
from workbench.models.checkpoint import save_checkpoint
from workbench.models.tokenizer import tokenize_prompts
from workbench.models.trainer import checked_step, deterministic_cpu, load_train_state, save_train_state

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

    def __post_init__(self):
        check_training_config(self, "PPO", positive=("temperature", "target_kl", "horizon"),
                              non_negative=("gamma", "lam", "cliprange", "cliprange_value", "vf_coef", "kl_coef",
                                            "missing_eos_penalty"),
                              counts=("ppo_epochs", "minibatch_size", "max_new_tokens", "num_threads"))


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
        clipfrac = masked_mean((clipped > unclipped).float(), mask)
    return loss, {"loss/value_avg": loss.detach(), "val/clipfrac_avg": clipfrac}


def entropy(
    logits: Float[Tensor, "batch pos d_vocab"], mask: Bool[Tensor, "batch pos"]
) -> Float[Tensor, "batch pos"]:
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

    def forward(
        self, tokens: Int[Tensor, "batch pos"]
    ) -> tuple[Float[Tensor, "batch pos d_vocab"], Float[Tensor, "batch pos"]]:
        """The policy's logits and the value at each position (of the state ending there)."""
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


def adaptive_kl_coef(kl_coef: float, kl: float, target: float, n_sequences: int, horizon: int) -> float:
    """Ziegler et al. 2019, section 2.2: beta *= 1 + clip(KL / target - 1, -0.2, 0.2) * n / horizon."""
    error = min(max(kl / target - 1.0, -0.2), 0.2)
    return kl_coef * (1.0 + error * n_sequences / horizon)


# ---- rollouts and updates -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rollout:
    batch: Batch
    """Prompt + sampled completion (up to and including its EOS), right-padded; the mask marks the completion."""
    logprobs: Float[Tensor, "batch pos"]
    """log pi_old of each sampled token: the ratio's denominator."""
    values: Float[Tensor, "batch pos"]
    """V_old before each completion token: the value clip's centre."""
    advantages: Float[Tensor, "batch pos"]
    returns: Float[Tensor, "batch pos"]
    scores: Float[Tensor, " batch"]
    """The reward function's scores, less the missing-EOS penalty."""


def sample(
    model: HookedTransformer, prompts: list[str], max_new_tokens: int, temperature: float
) -> tuple[Batch, Bool[Tensor, " batch"]]:
    """One sampled completion per prompt, kept as token ids (decoding and re-encoding need not round-trip), and
    whether each ended with EOS within ``max_new_tokens``. As in ``workbench.generation.complete``, prompts are
    generated in groups of equal token length, so no prompt is padded."""
    ids = tokenize_prompts(model, prompts, reserve=max_new_tokens)
    eos = model.tokenizer.eos_token_id
    groups: dict[int, list[int]] = defaultdict(list)
    for i, t in enumerate(ids):
        groups[len(t)].append(i)
    rows: list[tuple[list[int], list[int]]] = [([], [])] * len(ids)
    ended = torch.zeros(len(ids), dtype=torch.bool)
    for length, idx in sorted(groups.items()):
        gen = generate_batch(model, torch.stack([ids[i] for i in idx]).to(model.cfg.device), max_new_tokens,
                             temperature, eos, padded=False)
        for i, completion in zip(idx, gen.tolist()):
            if eos in completion:  # finished rows are padded with EOS: keep the first, drop the rest
                completion, ended[i] = completion[: completion.index(eos) + 1], True
            rows[i] = (ids[i].tolist(), completion)
    width, pad = max(len(p) + len(c) for p, c in rows), model.tokenizer.pad_token_id or 0
    tokens = [p + c + [pad] * (width - len(p) - len(c)) for p, c in rows]
    mask = [[False] * len(p) + [True] * len(c) + [False] * (width - len(p) - len(c)) for p, c in rows]
    device = model.cfg.device
    return Batch(torch.tensor(tokens, device=device), torch.tensor(mask, device=device)), ended.to(device)


@torch.no_grad()  # not inference_mode: the rollout's tensors enter the losses' autograd graphs later
def rollout(
    model: PolicyWithValue, reference: HookedTransformer, reward_fn: RewardFn, prompts: list[str], cfg: PPOConfig,
    kl_coef: float,
) -> tuple[Rollout, dict[str, float]]:
    """Sample, score, and compute the old log-probs, values, KL-shaped rewards, advantages and returns."""
    batch, ended = sample(model.policy, prompts, cfg.max_new_tokens, cfg.temperature)
    mask, tok = batch.completion_mask, model.policy.tokenizer
    completions = [tok.decode(row[m].tolist(), skip_special_tokens=True) for row, m in zip(batch.tokens, mask)]
    scores = torch.as_tensor(reward_fn(prompts, completions), dtype=torch.float32, device=mask.device).reshape(-1)
    if scores.shape != (len(prompts),):
        raise WorkbenchError(f"reward_fn gave {tuple(scores.shape)} scores for {len(prompts)} completions")
    # Huang et al. 2024: a completion that never ends is penalised, else the policy learns to ramble past EOS.
    scores = scores - cfg.missing_eos_penalty * (~ended).float()
    logits, values = model(batch.tokens[:, :-1])
    logprobs, logits = shifted_logprobs(logits, batch.tokens, cfg.temperature)
    ref_logprobs, _ = shifted_logprobs(reference(batch.tokens[:, :-1], return_type="logits"), batch.tokens,
                                       cfg.temperature)
    values = F.pad(values, (1, 0)) * mask  # V before token t is read at position t - 1, like its log-prob
    rewards, kl = per_token_rewards(scores, logprobs, ref_logprobs, mask, kl_coef)
    advantages, returns = gae(rewards, values, mask, cfg.gamma, cfg.lam)
    if cfg.whiten_advantages:
        advantages = whiten(advantages, mask)
    metrics = {  # TRL's names; sums over a completion's tokens, means over completions
        "objective/kl": kl.sum(1).mean(),
        "objective/entropy": entropy(logits, mask).sum(1).mean(),
        "objective/non_score_reward": (-kl_coef * kl).sum(1).mean(),
        "objective/rlhf_reward": rewards.sum(1).mean(),
        "objective/scores": scores.mean(),
        "val/num_eos_tokens": ended.sum(),
    }
    return Rollout(batch, logprobs, values, advantages, returns, scores), {k: float(v) for k, v in metrics.items()}


def ppo_update(
    model: nn.Module, opt: torch.optim.Optimizer, ro: Rollout, cfg: PPOConfig, generator: torch.Generator,
    ddp: Distributed = Distributed(), state_dir: Path | None = None, iteration: int = 0,
) -> list[dict[str, float]]:
    """``ppo_epochs`` passes of clipped updates over shuffled minibatches; returns each minibatch's metrics.

    ``model`` is a :class:`PolicyWithValue` (or DDP around one, whose rollout is this rank's share: each rank
    then takes ``minibatch_size / world_size`` sequences per gradient step). A nan/inf loss on any rank stops
    every rank before the weights change.
    """
    out, size = [], cfg.minibatch_size // ddp.world_size
    for _ in range(cfg.ppo_epochs):
        for idx in torch.randperm(len(ro.batch.tokens), generator=generator).split(size):
            idx = idx.to(ro.batch.tokens.device)
            tokens, mask = ro.batch.tokens[idx], ro.batch.completion_mask[idx]
            logits, values = model(tokens[:, :-1])
            logprobs, _ = shifted_logprobs(logits, tokens, cfg.temperature)
            p_loss, p_metrics = policy_loss(logprobs, ro.logprobs[idx], ro.advantages[idx], mask, cfg.cliprange)
            v_loss, v_metrics = value_loss(F.pad(values, (1, 0)), ro.values[idx], ro.returns[idx], mask,
                                           cfg.cliprange_value)
            loss = p_loss + cfg.vf_coef * v_loss
            check_finite(ddp.mean({"loss": loss.detach()})["loss"], iteration, state_dir, "PPO")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            checked_step(opt, model, iteration, state_dir, "PPO")  # nan/inf weights stop before any save
            out.append({k: float(v) for k, v in {**p_metrics, **v_metrics}.items()})
    return out


# ---- training -------------------------------------------------------------------------------------------------


def train_ppo(
    policy: HookedTransformer, reference: HookedTransformer | None, reward_fn: RewardFn, prompts: list[str],
    cfg: PPOConfig, out_dir: str | Path, resume: bool = True, progress: bool = True,
) -> HookedTransformer:
    """Train ``policy`` in place with PPO against ``reward_fn(prompts, completions) -> scores``; returns it.

    ``reference`` is frozen (a copy of the initial policy when None). Each iteration logs one line to
    ``out_dir/metrics.jsonl``; resumable state (policy, value head, Adam moments, iteration, KL coefficient) is
    written atomically to ``out_dir/state`` every ``checkpoint_every`` iterations, and with ``resume`` a run picks
    up from it, bit for bit on CPU. The final policy is saved to ``out_dir/policy`` as a workbench checkpoint.
    """
    if not prompts:
        raise WorkbenchError("no prompts to train on")
    if cfg.temperature <= 0:
        raise WorkbenchError(f"PPO samples: temperature must be > 0, got {cfg.temperature}")
    out_dir, cfg_json = Path(out_dir), dataclasses.asdict(cfg)
    marker, state_dir = out_dir / "ppo_config.json", out_dir / "state"
    if out_dir.exists() and not out_dir.is_dir():
        raise WorkbenchError(f"{out_dir} is a file; a PPO run's output is a directory")
    if resume and marker.exists():
        check_same_run(marker, cfg_json, out_dir, "pass --no-resume to start from iteration 0")
    on_cpu, ddp = torch.device(policy.cfg.device).type == "cpu", distributed()
    if cfg.batch_size % ddp.world_size or cfg.minibatch_size % ddp.world_size:
        raise WorkbenchError(f"batch_size {cfg.batch_size} and minibatch_size {cfg.minibatch_size} must split over "
                             f"{ddp.world_size} processes; pass multiples of {ddp.world_size}")
    with deterministic_cpu(cfg.num_threads) if on_cpu else nullcontext():
        reference = copy.deepcopy(policy) if reference is None else reference
        reference.eval().requires_grad_(False)
        model = PolicyWithValue(policy.requires_grad_(True))  # even if it was a frozen reference elsewhere
        # eps 1e-5 rather than 1e-8, as in the reference PPO implementations (Huang et al. 2022, detail 3).
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, eps=1e-5)
        step, history, seconds_before = 0, [], 0.0  # history: the KL coefficient in force from each step on
        if resume and (state_dir / "state.json").exists():
            step, history, seconds_before = load_train_state(state_dir, model, opt, max_step=cfg.steps)
            if not all(isinstance(h, dict) and isinstance(h.get("kl_coef"), (int, float)) for h in history):
                raise WorkbenchError(f"the resumable state {state_dir / 'state.json'} is damaged: its history must "
                                     "list the KL coefficient of each iteration; delete it or pass --no-resume")
            log.info("resuming PPO from iteration %d", step)
        elif state_dir.exists() and ddp.is_main:
            shutil.rmtree(state_dir)  # starting afresh: a later resume must never pick up stale state
        if ddp.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
            marker.write_text(json.dumps(cfg_json))
        ddp.barrier()
        wrapped = ddp.wrap(model)  # the policy and value head on one process; DDP around them under torchrun
        metric_log = MetricLog(out_dir / "metrics.jsonl", resume_step=step) if ddp.is_main else None
        kl_coef, t0 = history[-1]["kl_coef"] if history else cfg.kl_coef, time.perf_counter()
        bar = tqdm(total=cfg.steps, initial=step, desc="ppo", disable=not progress or not ddp.is_main, unit="it")
        while step < cfg.steps:
            # Everything random in an iteration comes from (seed, iteration): a resumed run repeats it exactly.
            # Every rank draws the same global prompts and rolls out its own share, with its own sampling seed.
            iteration_seed = cfg.seed * 1_000_003 + step
            g = torch.Generator().manual_seed(iteration_seed)
            batch_prompts = [prompts[i] for i in torch.randint(len(prompts), (cfg.batch_size,), generator=g).tolist()]
            model.eval()
            with torch.random.fork_rng(devices=[] if on_cpu else None):  # leave the caller's RNG alone
                torch.manual_seed(iteration_seed + 7_919 * 1_000_003 * ddp.rank)
                ro, metrics = rollout(model, reference, reward_fn, ddp.shard(batch_prompts), cfg, kl_coef)
            metrics = ddp.mean(metrics)
            if not torch.isfinite(torch.as_tensor(metrics["objective/scores"])):
                raise NonFiniteLoss(f"the reward function returned nan/inf scores at iteration {step}; nothing of "
                                    "this iteration was applied")
            model.train()
            updates = ppo_update(wrapped, opt, ro, cfg, g, ddp, state_dir, step)
            metrics.update(ddp.mean({k: sum(u[k] for u in updates) / len(updates) for k in updates[0]}))
            metrics = {k: float(v) for k, v in metrics.items()}
            metrics["objective/kl_coef"] = kl_coef
            if metric_log:
                metric_log.write(step, metrics)
            if cfg.adaptive_kl:
                kl_coef = adaptive_kl_coef(kl_coef, metrics["objective/kl"], cfg.target_kl, cfg.batch_size,
                                           cfg.horizon)
            step += 1
            history.append({"step": step, "kl_coef": kl_coef})
            bar.update(1)
            bar.set_postfix(score=f"{metrics['objective/scores']:.3f}", kl=f"{metrics['objective/kl']:.3f}")
            if ddp.is_main and (step % cfg.checkpoint_every == 0 or step == cfg.steps):
                save_train_state(state_dir, model, opt, step, history, seconds_before + time.perf_counter() - t0)
        bar.close()
    policy.eval()
    if ddp.is_main:
        save_checkpoint(policy, out_dir / "policy", extra_files={"ppo_config.json": cfg_json})
        export_beside(policy, out_dir / "policy")  # policy/hf: the same weights for transformers, vLLM, TRL
    ddp.barrier()  # no rank returns before the final policy is on disk
    return policy
