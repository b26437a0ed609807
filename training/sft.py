"""Supervised fine-tuning on completions only (TRL's SFTTrainer with ``completion_only_loss``).

Data: TRL's ``prompt`` / ``completion`` columns. The loss is the mean negative log-likelihood of the completion
tokens (and the EOS after them) given everything before; prompt tokens and padding carry no loss. Each step's
batch is drawn from (seed, step), so a resumed run sees the same batches as an uninterrupted one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from jaxtyping import Bool, Float
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from training.common import (
    SFT_COLUMNS, Batch, MetricLog, check_finite, check_training_config, check_vocabulary, distributed,
    encode_rows, load_rows, pad_rows, start_run, token_logprobs,
)
from workbench.errors import WorkbenchError
from workbench.models.export import export_beside
from workbench.models.checkpoint import save_checkpoint, weights_sha256
from workbench.models.trainer import checked_step, deterministic_cpu, load_train_state, save_train_state

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SFTConfig:
    lr: float = 1e-4
    """AdamW learning rate."""
    steps: int = 200
    """Optimizer steps."""
    batch_size: int = 64
    """Rows per step."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    seed: int = 0
    """Seeds each step's batch draw."""
    checkpoint_every: int = 50
    """Steps between resumable checkpoints."""
    threads: int = 2
    """Torch CPU threads (fixed, so runs are bit-for-bit reproducible)."""

    def __post_init__(self):
        check_training_config(self, "SFT", non_negative=("weight_decay",), counts=("threads",))


def sft_loss(
    logprobs: Float[Tensor, "batch pos"], completion_mask: Bool[Tensor, "batch pos"], predicted_correct: Bool[Tensor, "batch pos"] | None = None
) -> tuple[Float[Tensor, ""], dict[str, float]]:
    """Mean NLL over completion tokens: -sum(mask * log p) / sum(mask). Metrics named as TRL's SFTTrainer logs
    them: ``loss``, ``mean_token_accuracy`` (if ``predicted_correct`` is given), ``num_tokens``."""
    n = completion_mask.sum()
    if n == 0:
        raise WorkbenchError("no completion tokens in the batch")
    loss = -(logprobs * completion_mask).sum() / n
    metrics = {"loss": loss.item(), "num_tokens": float(n)}
    if predicted_correct is not None:
        metrics["mean_token_accuracy"] = ((predicted_correct & completion_mask).sum() / n).item()
    return loss, metrics


def _step_loss(model: HookedTransformer, batch: Batch, forward: nn.Module | None = None
               ) -> tuple[Tensor, dict[str, float]]:
    """The loss on ``batch``; ``forward`` is what runs the tokens (the model, or DDP around it under torchrun)."""
    logp, logits = token_logprobs(forward or model, batch)
    correct = logits.argmax(-1) == batch.tokens
    return sft_loss(logp, batch.completion_mask, correct)


def train_sft(
    model: HookedTransformer,
    data: str | Path | Iterable[Mapping],
    cfg: SFTConfig = SFTConfig(),
    out_dir: str | Path = "runs/sft",
    resume: bool = True,
    progress: bool = True,
) -> HookedTransformer:
    """Fine-tune ``model`` in place on ``data``; writes ``metrics.jsonl``, ``state/`` (resumable) and ``model/``."""
    rows = load_rows(data, SFT_COLUMNS)
    model.requires_grad_(True)  # a model that served as a frozen reference elsewhere trains too
    check_vocabulary(model, rows, SFT_COLUMNS)
    # Every row is tokenized once, before step 0 (a row too long for the context stops the run here, not at the
    # step that first draws it); a step pads the rows it draws.
    encoded = encode_rows(model, [r["prompt"] for r in rows], [r["completion"] for r in rows])
    out, ddp = Path(out_dir), distributed()
    state = out / "state"
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start = 0
    # Resume only the same run (config and starting weights); a fresh start clears any stale state.
    run = {"method": "sft", "config": asdict(cfg), "initial_weights": weights_sha256(model)}
    if start_run(out, run, resume, writer=ddp.is_main):
        start, _, _ = load_train_state(state, model, opt, max_step=cfg.steps)
    ddp.barrier()
    wrapped = ddp.wrap(model)  # the model itself on one process; DDP around it under torchrun
    metrics_log = MetricLog(out / "metrics.jsonl", resume_step=start) if ddp.is_main else None
    model.train()
    with deterministic_cpu(cfg.threads):
        for step in tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="sft",
                         disable=not progress or not ddp.is_main):
            g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
            idx = ddp.shard(torch.randint(len(rows), (min(cfg.batch_size, len(rows)),), generator=g).tolist())
            loss, metrics = _step_loss(model, pad_rows(model, [encoded[i] for i in idx]), wrapped)
            metrics = ddp.mean(metrics)  # the global batch's numbers
            check_finite(torch.as_tensor(metrics["loss"]), step, state, "SFT")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            checked_step(opt, model, step, state, "SFT")  # nan/inf weights stop the run before any save
            if metrics_log:
                metrics_log.write(step, metrics)
            if ddp.is_main and ((step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps):
                save_train_state(state, model, opt, step + 1, [], 0.0)
    model.eval()
    if ddp.is_main:
        save_checkpoint(model, out / "model")
        export_beside(model, out / "model")  # model/hf: the same weights for transformers, vLLM, TRL
    ddp.barrier()  # no rank returns before the final model is on disk
    return model
