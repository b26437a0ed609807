"""Bradley-Terry reward model: a scalar score for ``prompt + completion``, trained on preference pairs.

The loss is Ouyang et al. 2022 (InstructGPT) eq. 1, ``-log sigmoid(r(x, y_chosen) - r(x, y_rejected))``, as in
TRL's ``RewardTrainer`` (same column names ``prompt``/``chosen``/``rejected``, same metric names ``accuracy`` and
``margin``). TRL trains Hugging Face models; ours are HookedTransformers, so the head and the loop live here.

The score is a linear value head on the final residual stream after ``ln_final`` (the activation that
``ln_final.hook_normalized`` names), read at the last completion token: the EOS that :func:`encode` appends. The
model is causal and padded on the right, so the score never sees the padding after it. The head starts at zero,
so every pair starts tied and the initial loss is exactly ln 2.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from jaxtyping import Float
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from training.common import (
    PREFERENCE_COLUMNS, Batch, MetricLog, check_finite, check_training_config, check_vocabulary, device_context,
    distributed, encode, encode_pairs, last_completion_index, load_rows, start_run, step_indices, take_pairs,
)
from workbench.errors import WorkbenchError
from workbench.io import atomic_dir
from workbench.models.checkpoint import load_checkpoint, save_checkpoint, weights_sha256
from workbench.models.trainer import checked_step, load_train_state, save_train_state

log = logging.getLogger(__name__)
FORMAT = "workbench-reward-model"


@dataclass(frozen=True)
class RewardConfig:
    lr: float = 1e-4
    """AdamW learning rate (constant)."""
    steps: int = 200
    """Optimizer steps."""
    batch_size: int = 16
    """Preference pairs per step."""
    seed: int = 0
    """Seeds each step's draw of pairs (step ``s`` draws from a generator seeded with ``(seed, s)``)."""
    margin_column: str | None = None
    """Optional numeric column subtracted inside the sigmoid (Touvron et al. 2023, Llama 2 eq. 2; TRL's ``margin``)."""
    checkpoint_every: int = 50
    """Save the resumable state (weights, AdamW moments, step) every this many steps."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this."""
    num_threads: int = 1
    """CPU threads; fixed, with deterministic kernels, so a resumed run matches an uninterrupted one bit for bit."""

    def __post_init__(self):
        check_training_config(self, "reward-model", positive=("max_grad_norm",), counts=("num_threads",))


class RewardModel(nn.Module):
    """A HookedTransformer body and a zero-initialised linear head on its ``ln_final`` output."""

    def __init__(self, body: HookedTransformer):
        super().__init__()
        self.body = body
        self.head = nn.Linear(body.cfg.d_model, 1, device=body.cfg.device, dtype=body.cfg.dtype)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, batch: Batch) -> Float[Tensor, " batch"]:
        # Stopping after the last block returns resid_post without unembedding; ln_final is applied as forward does.
        resid = self.body(batch.tokens, stop_at_layer=self.body.cfg.n_layers)
        if self.body.cfg.normalization_type is not None:
            resid = self.body.ln_final(resid)
        values = self.head(resid)[..., 0]
        return values.gather(-1, last_completion_index(batch)[:, None])[:, 0]




def _finite_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def reward_loss(
    chosen: Float[Tensor, " batch"], rejected: Float[Tensor, " batch"], margin: Float[Tensor, " batch"] | None = None
) -> tuple[Float[Tensor, ""], dict[str, Tensor]]:
    """Ouyang et al. 2022 eq. 1, ``-mean log sigmoid(r_c - r_r - margin)``, with TRL's ``accuracy`` (share of pairs
    with ``r_c > r_r``) and ``margin`` (mean ``r_c - r_r``)."""
    diff = chosen - rejected
    loss = -F.logsigmoid(diff if margin is None else diff - margin).mean()
    diff = diff.detach()
    return loss, {"accuracy": (diff > 0).float().mean(), "margin": diff.mean()}


def train_reward(
    model: HookedTransformer | RewardModel,
    rows: str | Path | Iterable[Mapping],
    cfg: RewardConfig,
    out_dir: str | Path,
    resume: bool = True,
    progress: bool = True,
    stop_after: int | None = None,
) -> RewardModel:
    """Train a reward model on ``prompt``/``chosen``/``rejected`` rows (in place); writes ``metrics.jsonl``, the
    resumable ``state/`` and the final ``model/`` (see :func:`save_reward_model`) under ``out_dir``.

    Resuming needs the same starting model and config. ``stop_after`` ends the run after that many steps, as a
    kill would (for tests).
    """
    columns = PREFERENCE_COLUMNS + ((cfg.margin_column,) if cfg.margin_column else ())
    rows = load_rows(rows, PREFERENCE_COLUMNS)
    if cfg.margin_column:
        bad = [at for r, at in zip(rows, rows.where) if not _finite_number(r.get(cfg.margin_column))]
        if bad:
            raise WorkbenchError(f"{', '.join(bad[:5])}{' and more' if len(bad) > 5 else ''} lack a finite number in "
                                 f"the margin column {cfg.margin_column!r}; columns needed: {list(columns)}")
    rm = model if isinstance(model, RewardModel) else RewardModel(model)
    rm.requires_grad_(True)  # a body that served as a frozen reference elsewhere trains too
    check_vocabulary(rm.body, rows, PREFERENCE_COLUMNS)
    out_dir, t0, ddp = Path(out_dir), time.perf_counter(), distributed()
    run = {"method": "reward", "config": dataclasses.asdict(cfg), "initial_weights": weights_sha256(rm)}
    with device_context(rm, cfg.num_threads):
        pairs = encode_pairs(rm.body, rows)
        margins = (torch.tensor([float(r[cfg.margin_column]) for r in rows], dtype=rm.head.weight.dtype)
                   if cfg.margin_column else None)
        opt = torch.optim.AdamW(rm.parameters(), lr=cfg.lr, weight_decay=0.0)
        step, seconds_before = 0, 0.0
        if start_run(out_dir, run, resume, writer=ddp.is_main):
            step, _, seconds_before = load_train_state(out_dir / "state", rm, opt, max_step=cfg.steps)
            log.info("resuming the reward model in %s from step %d", out_dir, step)
        ddp.barrier()
        model = ddp.wrap(rm, find_unused_parameters=True)  # DDP under torchrun; the unembedding is never used
        metrics_log = MetricLog(out_dir / "metrics.jsonl", resume_step=step) if ddp.is_main else None
        rm.train()
        bar = tqdm(total=cfg.steps, initial=step, desc="reward model", unit="step",
                   disable=not progress or not ddp.is_main)
        while step < min(cfg.steps, stop_after if stop_after is not None else cfg.steps):
            idx = ddp.shard(step_indices(len(rows), cfg.seed, step, cfg.batch_size))
            chosen, rejected = model(take_pairs(pairs, idx)).chunk(2)
            loss, metrics = reward_loss(chosen, rejected, None if margins is None else margins[idx].to(chosen.device))
            metrics = ddp.mean({"loss": loss.detach(), **metrics})  # the global batch's numbers
            check_finite(metrics["loss"], step, out_dir / "state", "reward-model")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(rm.parameters(), cfg.max_grad_norm)
            checked_step(opt, rm, step, out_dir / "state", "reward-model")  # nan/inf weights stop before any save
            if metrics_log:
                metrics_log.write(step, metrics)  # logged as the step that was taken
            step += 1
            bar.set_postfix(loss=f"{float(metrics['loss']):.4f}", accuracy=f"{float(metrics['accuracy']):.2f}")
            bar.update(1)
            if ddp.is_main and (step % cfg.checkpoint_every == 0 or step == cfg.steps):
                save_train_state(out_dir / "state", rm, opt, step, [], seconds_before + time.perf_counter() - t0)
        bar.close()
    rm.eval()
    if step == cfg.steps and ddp.is_main:
        save_reward_model(rm, out_dir / "model")
    ddp.barrier()  # no rank returns before the final model is on disk
    return rm


def save_reward_model(rm: RewardModel, directory: str | Path) -> Path:
    """``directory/body`` (our checkpoint format; it loads with the workbench loader), ``value_head.safetensors``
    and ``config.json``, written atomically."""

    def write(tmp: Path) -> None:
        save_checkpoint(rm.body, tmp / "body")
        save_file({k: v.detach().cpu().contiguous() for k, v in rm.head.state_dict().items()},
                  str(tmp / "value_head.safetensors"))
        config = {"format": FORMAT, "format_version": 1, "d_model": rm.body.cfg.d_model,
                  "score": "linear head on ln_final.hook_normalized at the last completion token"}
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")

    return atomic_dir(directory, write)


def load_reward_model(directory: str | Path, device: str | None = None) -> RewardModel:
    """Load a directory written by :func:`save_reward_model`."""
    directory = Path(directory)
    config_path = directory / "config.json"
    try:
        config = json.loads(config_path.read_text()) if config_path.is_file() else None
    except (OSError, UnicodeDecodeError, ValueError):
        config = None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise WorkbenchError(f"{directory} is not a reward model (config.json with format={FORMAT!r})")
    rm = RewardModel(load_checkpoint(directory / "body", device))
    head = directory / "value_head.safetensors"
    try:
        rm.head.load_state_dict(load_file(str(head), device=str(rm.body.cfg.device)))
    except (OSError, SafetensorError, RuntimeError, ValueError, KeyError) as e:
        raise WorkbenchError(f"{head} is missing or damaged ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                             "expected the value head (weight and bias) written by `workbench train reward`") from None
    if not all(torch.isfinite(p).all() for p in rm.head.parameters()):
        raise WorkbenchError(f"{head} holds nan/inf; retrain the reward model")
    return rm.eval()


@torch.no_grad()
def score(rm: RewardModel, prompts: Sequence[str], completions: Sequence[str], batch_size: int = 64
          ) -> Float[Tensor, " batch"]:
    """Reward of each ``prompt + completion`` (best-of-N: score N samples per prompt and keep the argmax)."""
    if len(prompts) != len(completions):
        raise WorkbenchError(f"{len(prompts)} prompts but {len(completions)} completions; pass one prompt per "
                             "completion")
    out = [rm(encode(rm.body, prompts[i:i + batch_size], completions[i:i + batch_size]))
           for i in range(0, len(prompts), batch_size)]
    return torch.cat(out) if out else torch.empty(0)
