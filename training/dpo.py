"""Direct preference optimisation: DPO (Rafailov et al. 2023) and IPO (Azar et al. 2023) on preference pairs.

Both losses are functions of four per-sequence log-probs, ``log pi(y|x)`` of the policy and of a frozen
reference for the chosen and the rejected completion; they differ only in what they do with the difference of
log-ratios ``h = (pi_c - ref_c) - (pi_r - ref_r)``. The trainer takes the loss as a function
(``DPOConfig.loss_fn``); a CLI maps a name to it through :data:`LOSSES`. Metric names are TRL's ``DPOTrainer``'s.
TRL trains Hugging Face models; ours are HookedTransformers, so the loop lives here.

A step runs each pair as one row (``training.common.pack_pairs``): the tokens the chosen and the rejected sequence
share (the prompt, and any common start of the completions) once, then the rest of each completion, with an
attention mask that gives every token its own sequence's context. One forward of the policy and one of the
frozen reference (under ``torch.inference_mode``) give all four log-probs; pairs that do not fit packed (a model
without learned absolute positions, a row longer than the context) run as chosen and rejected rows instead.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from training.common import (
    PREFERENCE_COLUMNS, Batch, MetricLog, check_finite, check_training_config, check_vocabulary, device_context,
    distributed, encode_pairs, load_rows, pack_pairs, packs_pairs, pair_batch, pair_logprobs, start_run,
    step_indices,
)
from workbench.errors import WorkbenchError
from workbench.models.export import export_beside
from workbench.models.checkpoint import save_checkpoint, weights_sha256
from workbench.models.trainer import checked_step, load_train_state, save_train_state

log = logging.getLogger(__name__)

PreferenceLoss = Callable[..., tuple[Tensor, dict[str, Tensor]]]
"""``loss_fn(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta) -> (loss, metrics)``."""


def _metrics(
    policy_chosen: Float[Tensor, " batch"], policy_rejected: Float[Tensor, " batch"],
    ref_chosen: Float[Tensor, " batch"], ref_rejected: Float[Tensor, " batch"], beta: float,
) -> dict[str, Tensor]:
    """TRL's DPO metrics: the implicit rewards ``beta * (log pi - log ref)`` and the policy's log-probs."""
    chosen = beta * (policy_chosen - ref_chosen).detach()
    rejected = beta * (policy_rejected - ref_rejected).detach()
    return {
        "rewards/chosen": chosen.mean(),
        "rewards/rejected": rejected.mean(),
        "rewards/margins": (chosen - rejected).mean(),
        "rewards/accuracies": (chosen > rejected).float().mean(),
        "logps/chosen": policy_chosen.detach().mean(),
        "logps/rejected": policy_rejected.detach().mean(),
    }


def dpo_loss(
    policy_chosen: Float[Tensor, " batch"], policy_rejected: Float[Tensor, " batch"],
    ref_chosen: Float[Tensor, " batch"], ref_rejected: Float[Tensor, " batch"], beta: float,
) -> tuple[Float[Tensor, ""], dict[str, Tensor]]:
    """Rafailov et al. 2023 eq. 7: ``-mean log sigmoid(beta * h)``; ln 2 when the policy equals the reference."""
    h = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    loss = -F.logsigmoid(beta * h).mean()
    return loss, _metrics(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)


def ipo_loss(
    policy_chosen: Float[Tensor, " batch"], policy_rejected: Float[Tensor, " batch"],
    ref_chosen: Float[Tensor, " batch"], ref_rejected: Float[Tensor, " batch"], beta: float,
) -> tuple[Float[Tensor, ""], dict[str, Tensor]]:
    """Azar et al. 2023 eq. 17 with ``tau = beta``: ``mean (h - 1 / (2 beta))^2``.

    It regresses ``h`` to a finite target where DPO pushes it without bound, which is IPO's fix for
    deterministic preferences. (TRL's ``loss_type="ipo"`` feeds it per-token mean log-probs; we pass sums, as eq.
    17 is written, so ``beta`` is on the sequence scale.)
    """
    h = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    loss = ((h - 1 / (2 * beta)) ** 2).mean()
    return loss, _metrics(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)


LOSSES: dict[str, PreferenceLoss] = {"dpo": dpo_loss, "ipo": ipo_loss}
"""Loss names a command line accepts, and the functions they stand for."""


@dataclass(frozen=True)
class DPOConfig:
    beta: float = 0.1
    """Strength of the pull to the reference (DPO's KL coefficient; IPO's tau)."""
    loss_fn: PreferenceLoss = dpo_loss
    """The preference loss: :func:`dpo_loss`, :func:`ipo_loss` or any function of the same signature."""
    lr: float = 1e-5
    """AdamW learning rate (constant)."""
    steps: int = 200
    """Optimizer steps."""
    batch_size: int = 16
    """Preference pairs per step."""
    seed: int = 0
    """Seeds each step's draw of pairs (step ``s`` draws from a generator seeded with ``(seed, s)``)."""
    checkpoint_every: int = 50
    """Save the resumable state (weights, AdamW moments, step) every this many steps."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this."""
    num_threads: int = 1
    """CPU threads; fixed, with deterministic kernels, so a resumed run matches an uninterrupted one bit for bit."""
    rpo_alpha: float = 0.0
    """Weight of an added NLL loss on the chosen completions, per token (Pang et al. 2024, TRL's ``rpo_alpha``):
    keeps DPO from lowering the chosen completions' likelihood along with the rejected ones'."""

    def __post_init__(self):
        check_training_config(self, "DPO", positive=("beta", "max_grad_norm"), non_negative=("rpo_alpha",),
                              counts=("num_threads",))
        if not callable(self.loss_fn):
            raise WorkbenchError(f"bad DPO config: loss_fn must be a function, got {self.loss_fn!r}")

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "loss_fn": f"{self.loss_fn.__module__}.{self.loss_fn.__qualname__}"}


def train_dpo(
    policy: HookedTransformer,
    reference: HookedTransformer | None,
    rows: str | Path | Iterable[Mapping],
    cfg: DPOConfig,
    out_dir: str | Path,
    resume: bool = True,
    progress: bool = True,
    stop_after: int | None = None,
) -> HookedTransformer:
    """Train ``policy`` (in place) on ``prompt``/``chosen``/``rejected`` rows against a frozen ``reference`` (a
    copy of the policy as passed in when None). Writes ``metrics.jsonl``, the resumable ``state/`` and the final
    policy ``model/`` (our checkpoint format: ``load_model`` reads it) under ``out_dir``.

    Resuming needs the same starting policy, reference and config. ``stop_after`` ends the run after that many
    steps, as a kill would (for tests).
    """
    rows = load_rows(rows, PREFERENCE_COLUMNS)
    policy.requires_grad_(True)  # a model that served as a frozen reference elsewhere trains too
    check_vocabulary(policy, rows, PREFERENCE_COLUMNS)
    if reference is None:
        reference = copy.deepcopy(policy)
    reference.eval().requires_grad_(False)
    out_dir, t0, ddp = Path(out_dir), time.perf_counter(), distributed()
    run = {"method": "dpo", "config": cfg.to_json(), "initial_weights": weights_sha256(policy),
           "reference_weights": weights_sha256(reference)}
    with device_context(policy, cfg.num_threads):
        pairs = encode_pairs(policy, rows)
        # Each pair's prompt (and the start its completions share) runs once, in one row with both completions.
        packs = packs_pairs(policy) and packs_pairs(reference)
        packed = pack_pairs(pairs, policy.tokenizer.pad_token_id or 0) if packs else None
        n_ctx = min(policy.cfg.n_ctx, reference.cfg.n_ctx)
        opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=0.0)
        step, seconds_before = 0, 0.0
        if start_run(out_dir, run, resume, writer=ddp.is_main):
            step, _, seconds_before = load_train_state(out_dir / "state", policy, opt, max_step=cfg.steps)
            log.info("resuming DPO in %s from step %d", out_dir, step)
        ddp.barrier()
        model = ddp.wrap(policy)  # the policy itself on one process; DDP around it under torchrun
        metrics_log = MetricLog(out_dir / "metrics.jsonl", resume_step=step) if ddp.is_main else None
        policy.train()
        bar = tqdm(total=cfg.steps, initial=step, desc=f"{cfg.loss_fn.__name__}", unit="step",
                   disable=not progress or not ddp.is_main)
        while step < min(cfg.steps, stop_after if stop_after is not None else cfg.steps):
            idx = ddp.shard(step_indices(len(rows), cfg.seed, step, cfg.batch_size))
            batch = pair_batch(pairs, packed, idx, n_ctx)
            with torch.inference_mode():  # the frozen reference: one forward of the batch, no autograd record
                ref_chosen, ref_rejected = pair_logprobs(reference, batch)
            ref_chosen, ref_rejected = ref_chosen.clone(), ref_rejected.clone()  # usable by any loss's autograd
            policy_chosen, policy_rejected = pair_logprobs(model, batch)
            loss, metrics = cfg.loss_fn(policy_chosen, policy_rejected, ref_chosen, ref_rejected, cfg.beta)
            if cfg.rpo_alpha:
                n_tokens = (batch.completion_mask.chunk(2)[0] if isinstance(batch, Batch) else batch.chosen_mask).sum()
                nll = -policy_chosen.sum() / n_tokens
                loss = loss + cfg.rpo_alpha * nll
                metrics = {**metrics, "nll_loss": nll.detach()}
            metrics = ddp.mean({"loss": loss.detach(), **metrics})  # the global batch's numbers
            check_finite(metrics["loss"], step, out_dir / "state", "DPO")  # every rank sees the same mean
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
            checked_step(opt, policy, step, out_dir / "state", "DPO")  # nan/inf weights stop before any save
            if metrics_log:
                metrics_log.write(step, metrics)  # logged as the step that was taken
            step += 1
            bar.set_postfix(loss=f"{float(metrics['loss']):.4f}", margin=f"{float(metrics['rewards/margins']):.3f}")
            bar.update(1)
            if ddp.is_main and (step % cfg.checkpoint_every == 0 or step == cfg.steps):
                save_train_state(out_dir / "state", policy, opt, step, [], seconds_before + time.perf_counter() - t0)
        bar.close()
    policy.eval()
    if step == cfg.steps and ddp.is_main:
        save_checkpoint(policy, out_dir / "model")
        export_beside(policy, out_dir / "model")  # model/hf: the same weights for transformers, vLLM, TRL
    ddp.barrier()  # no rank returns before the final model is on disk
    return policy
