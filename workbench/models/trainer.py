"""Deterministic, resumable training of an organism from its recipe.

Speed comes from building the data once as tensors: the recipe's pool of samples is encoded with one numpy
lookup into a ``[pool, pos]`` token matrix and a completion-loss mask, and each step is an index gather. The
naive reference (a Python-built batch of strings tokenized every step) is timed against this in
``bench/organisms.py``.

Determinism: the pool, the initial weights and each step's batch are functions of the recipe seed (a step's
batch is drawn from a generator seeded with ``(seed, step)``), and training runs with a fixed thread count and
deterministic algorithms, so the same recipe gives the same weights bit for bit on CPU, also across a kill and
resume (the resumable state is the weights, AdamW's moments and the step number).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Bool, Int
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformers import PreTrainedTokenizerBase

from workbench.errors import WorkbenchError
from workbench.io import atomic_dir
from workbench.models.tokenizer import build_char_tokenizer
from workbench.models.zoo import ArchConfig, Recipe, TrainConfig, build_samples
from workbench.tasks.formats import Sample

log = logging.getLogger(__name__)
DATA_SEED_OFFSET = 10_000  # the pool's seed differs from the init seed, so changing one leaves the other alone


@dataclass
class EncodedSamples:
    tokens: Int[Tensor, "batch pos"]
    """BOS, prompt, completion, EOS, then padding."""
    loss_mask: Bool[Tensor, "batch pos"]
    """True where the token is a training target: the completion and its EOS."""
    lengths: Int[Tensor, " batch"]
    """Tokens before the padding."""


def encode_samples(tokenizer: PreTrainedTokenizerBase, samples: list[Sample]) -> EncodedSamples:
    """Encode samples of a char tokenizer in one vectorised pass (no per-sample tokenizer call)."""
    vocab = tokenizer.get_vocab()
    lut = np.full(128, -1, dtype=np.int64)
    for tok, i in vocab.items():
        if len(tok) == 1 and ord(tok) < 128:
            lut[ord(tok)] = i
    texts = [s.prompt + s.completion for s in samples]
    prompt_len = np.fromiter((len(s.prompt) for s in samples), dtype=np.int64, count=len(samples))
    text_len = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(samples))
    chars = np.frombuffer("".join(texts).encode("ascii"), dtype=np.uint8)
    ids = lut[chars]
    if (ids < 0).any():
        bad = sorted({chr(c) for c in chars[ids < 0]})
        raise ValueError(f"samples hold characters outside the vocabulary: {bad}")
    n, width = len(samples), int(text_len.max()) + 2
    tokens = np.full((n, width), tokenizer.pad_token_id, dtype=np.int64)
    tokens[:, 0] = tokenizer.bos_token_id
    rows = np.repeat(np.arange(n), text_len)
    starts = np.concatenate([[0], np.cumsum(text_len)[:-1]])
    cols = np.arange(len(chars)) - np.repeat(starts, text_len) + 1
    tokens[rows, cols] = ids
    tokens[np.arange(n), text_len + 1] = tokenizer.eos_token_id
    pos = np.arange(width)[None, :]
    loss_mask = (pos >= prompt_len[:, None] + 1) & (pos <= text_len[:, None] + 1)
    return EncodedSamples(torch.from_numpy(tokens), torch.from_numpy(loss_mask), torch.from_numpy(text_len + 2))


def hooked_config(arch: ArchConfig, d_vocab: int) -> HookedTransformerConfig:
    return HookedTransformerConfig(
        n_layers=arch.n_layers, d_model=arch.d_model, n_heads=arch.n_heads, d_head=arch.d_head,
        d_mlp=arch.d_mlp, n_ctx=arch.n_ctx, d_vocab=d_vocab, act_fn="gelu", normalization_type="LN",
        positional_embedding_type="standard", default_prepend_bos=True, device="cpu",
    )


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_frac`` of the peak."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * progress)))


def completion_loss(
    model: HookedTransformer, tokens: Int[Tensor, "batch pos"], loss_mask: Bool[Tensor, "batch pos"]
) -> tuple[Tensor, dict[str, float]]:
    """Mean next-token cross-entropy over completion tokens, and the teacher-forced token accuracy there."""
    logits = model(tokens[:, :-1], return_type="logits")
    targets, mask = tokens[:, 1:], loss_mask[:, 1:]
    nll = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
    loss = (nll * mask).sum() / mask.sum()
    with torch.no_grad():
        correct = (logits.argmax(-1) == targets) & mask
        seq_exact = (correct | ~mask).all(-1).float().mean().item()
    return loss, {"loss": loss.item(), "token_acc": (correct.sum() / mask.sum()).item(), "seq_exact": seq_exact}


@contextmanager
def deterministic_cpu(num_threads: int):
    """Fixed thread count and deterministic kernels, restored afterwards."""
    old_threads, old_det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(num_threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det)


def flat_optimizer_state(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """An optimizer's state as safetensors can hold it: tensors keyed ``"<param index>.<name>"`` (e.g. ``0.exp_avg``),
    and the JSON-able param groups. Never a pickle."""
    state = opt.state_dict()
    return {f"{i}.{k}": v for i, st in state["state"].items() for k, v in st.items()}, state["param_groups"]


def load_flat_optimizer_state(opt: torch.optim.Optimizer, flat: dict[str, torch.Tensor], param_groups: list[dict]) -> None:
    """Inverse of :func:`flat_optimizer_state`."""
    state: dict[int, dict] = {}
    for key, value in flat.items():
        i, name = key.split(".", 1)
        state.setdefault(int(i), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": param_groups})


def save_train_state(
    path: Path, model: HookedTransformer, opt: torch.optim.Optimizer, step: int, history: list, seconds: float
) -> None:
    def write(tmp: Path) -> None:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
        flat, param_groups = flat_optimizer_state(opt)
        save_file(flat, str(tmp / "optimizer.safetensors"))
        meta = {"step": step, "seconds": seconds, "param_groups": param_groups, "history": history}
        (tmp / "state.json").write_text(json.dumps(meta))

    atomic_dir(path, write)


def load_train_state(path: Path, model: HookedTransformer, opt: torch.optim.Optimizer) -> tuple[int, list, float]:
    meta = json.loads((path / "state.json").read_text())
    model.load_state_dict(load_file(str(path / "model.safetensors")), strict=True)
    load_flat_optimizer_state(opt, load_file(str(path / "optimizer.safetensors")), meta["param_groups"])
    return meta["step"], meta["history"], meta["seconds"]


def train(
    recipe: Recipe,
    state_dir: str | Path,
    resume: bool = True,
    progress: bool = True,
    stop_after: int | None = None,
    callback: Callable[[int, HookedTransformer], bool] | None = None,
    callback_every: int = 50,
) -> tuple[HookedTransformer, dict]:
    """Train ``recipe`` to completion; returns the model and a training summary for the card.

    Resumable state is checkpointed to ``state_dir`` every ``checkpoint_every`` steps; with ``resume`` a run
    picks up from the last one. ``stop_after`` ends the run after that many steps (as a kill would), for tests.
    ``callback(step, model)`` runs every ``callback_every`` steps (model in eval mode, no grad); returning True
    stops training there (early stopping, time-to-target benchmarks).
    """
    cfg, state_dir = recipe.train, Path(state_dir)
    recipe_json = json.loads(json.dumps(recipe.to_json()))  # as it reads back (tuples become lists)
    marker = state_dir / "recipe.json"
    if resume and marker.exists() and json.loads(marker.read_text()) != recipe_json:
        raise WorkbenchError(f"{state_dir} holds the training state of a different recipe; delete it or pass "
                             "another --work-dir")
    t0 = time.perf_counter()
    with deterministic_cpu(cfg.num_threads):
        tokenizer = build_char_tokenizer(model_max_length=recipe.arch.n_ctx)
        data = encode_samples(tokenizer, build_samples(recipe, cfg.pool_size, "train", cfg.seed + DATA_SEED_OFFSET))
        if data.tokens.shape[1] > recipe.arch.n_ctx:
            raise ValueError(f"samples need {data.tokens.shape[1]} positions, n_ctx is {recipe.arch.n_ctx}")
        torch.manual_seed(cfg.seed)
        model = HookedTransformer(hooked_config(recipe.arch, len(tokenizer)), tokenizer=tokenizer)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
        step, history, seconds_before = 0, [], 0.0
        if resume and (state_dir / "state" / "state.json").exists():
            step, history, seconds_before = load_train_state(state_dir / "state", model, opt)
            log.info("resuming %s from step %d", recipe.name, step)
        elif (state_dir / "state").exists():
            shutil.rmtree(state_dir / "state")  # starting afresh: never let a later resume pick up stale state
        start_step = step
        state_dir.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps(recipe_json))
        model.train()
        # One bucket per sequence length; a step draws a length in proportion to the pool, then
        # batch_tokens // length sequences of that length: batches without padding, of constant token count.
        lengths, counts = torch.unique(data.lengths, return_counts=True)
        buckets = [torch.nonzero(data.lengths == n).flatten() for n in lengths.tolist()]
        bucket_probs = counts.double() / counts.sum()
        bar = tqdm(total=cfg.steps, initial=step, desc=f"train {recipe.name}", disable=not progress, unit="step")
        last = stop_after if stop_after is not None else cfg.steps
        while step < min(cfg.steps, last):
            g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
            b = int(torch.multinomial(bucket_probs, 1, generator=g))
            width = int(lengths[b])
            idx = buckets[b][torch.randint(0, len(buckets[b]), (max(1, cfg.batch_tokens // width),), generator=g)]
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16_autocast):
                loss, metrics = completion_loss(model, data.tokens[idx, :width], data.loss_mask[idx, :width])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            if step % 10 == 0 or step == cfg.steps:
                history.append({"step": step, **{k: round(v, 5) for k, v in metrics.items()}})
                bar.set_postfix(loss=f"{metrics['loss']:.4f}", exact=f"{metrics['seq_exact']:.3f}")
            bar.update(1)
            stop = False
            if callback is not None and step % callback_every == 0:
                model.eval()
                with torch.no_grad():
                    stop = bool(callback(step, model))
                model.train()
            if stop or step % cfg.checkpoint_every == 0 or step == cfg.steps:
                save_train_state(state_dir / "state", model, opt, step, history, seconds_before + time.perf_counter() - t0)
            if stop:
                break
        bar.close()
    model.eval()
    summary = {
        "steps": step,
        "seconds": round(seconds_before + time.perf_counter() - t0, 1),
        "resumed_from_step": start_step,
        "final_batch_metrics": history[-1] if history else None,
        "torch_version": torch.__version__,
        "num_threads": cfg.num_threads,
    }
    return model, summary
