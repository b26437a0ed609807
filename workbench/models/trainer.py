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
import numbers
import shutil
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Bool, Int
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformers import PreTrainedTokenizerBase

from workbench.errors import NonFiniteLoss, WorkbenchError
from workbench.io import atomic_dir, file_digest
from workbench.resume import check_same_run
from workbench.models.tokenizer import build_bpe_tokenizer, build_char_tokenizer, is_char_tokenizer
from workbench.models import iit
from workbench.models.zoo import ArchConfig, Recipe, TrainConfig, build_samples
from workbench.tasks.addition import sample_operands
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
    """Encode samples in one vectorised pass: a char tokenizer by a numpy lookup, any other tokenizer by one
    batched call over the prompts and one over the completions (no per-sample tokenizer call)."""
    if not is_char_tokenizer(tokenizer):
        return _encode_subword(tokenizer, samples)
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


def _encode_subword(tokenizer: PreTrainedTokenizerBase, samples: list[Sample]) -> EncodedSamples:
    """Prompt and completion are tokenized apart and joined, as generation sees them (the prompt's tokens, then
    the model's); the task formats put a word boundary there, so this equals tokenizing the whole text."""
    prompts = tokenizer([s.prompt for s in samples], add_special_tokens=False)["input_ids"]
    comps = tokenizer([s.completion for s in samples], add_special_tokens=False)["input_ids"]
    p_len = np.fromiter(map(len, prompts), dtype=np.int64, count=len(samples))
    c_len = np.fromiter(map(len, comps), dtype=np.int64, count=len(samples))
    text_len = p_len + c_len
    n, width = len(samples), int(text_len.max()) + 2
    tokens = np.full((n, width), tokenizer.pad_token_id, dtype=np.int64)
    tokens[:, 0] = tokenizer.bos_token_id
    flat = np.fromiter((t for p, c in zip(prompts, comps) for t in (*p, *c)), dtype=np.int64, count=int(text_len.sum()))
    rows = np.repeat(np.arange(n), text_len)
    starts = np.concatenate([[0], np.cumsum(text_len)[:-1]])
    tokens[rows, np.arange(len(flat)) - np.repeat(starts, text_len) + 1] = flat
    tokens[np.arange(n), text_len + 1] = tokenizer.eos_token_id
    pos = np.arange(width)[None, :]
    loss_mask = (pos >= p_len[:, None] + 1) & (pos <= text_len[:, None] + 1)
    return EncodedSamples(torch.from_numpy(tokens), torch.from_numpy(loss_mask), torch.from_numpy(text_len + 2))


TOKENIZER_CORPUS = 4000
"""Word problems the word-problem family's BPE tokenizer is trained on (each in every format and hint kind)."""


def task_tokenizer(task: str, n_ctx: int) -> PreTrainedTokenizerBase:
    """The tokenizer of a task family: characters for addition; for word problems a byte-level BPE trained on a
    fixed corpus of the family's texts (the same for every organism of the family, so they can be diffed)."""
    if task == "addition":
        return build_char_tokenizer(model_max_length=n_ctx)
    if task != "wordproblems":
        raise WorkbenchError(f"unknown task {task!r}; tasks: addition, wordproblems")
    from workbench.tasks import wordproblems as wp

    rng = np.random.default_rng(0)
    texts = []
    for p in wp.sample_problems(TOKENIZER_CORPUS, "train", rng):
        texts += [wp.cot(p).text, wp.corrupted(p, rng, True).text, wp.truncated(p, rng, True).text]
        texts += [wp.hint_line(k, wp.wrong_hint(p, rng)) for k in wp.HINT_KINDS]
    return build_bpe_tokenizer(texts, model_max_length=n_ctx)


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


STATE_FILES = ("model.safetensors", "optimizer.safetensors")
"""The tensor files of a resumable state; ``state.json`` records each one's size and SHA-256."""


def nonfinite_tensors(model: nn.Module, opt: torch.optim.Optimizer | None = None) -> list[str]:
    """Names of the parameters (and, with ``opt``, optimizer state tensors such as ``W_Q.exp_avg``) that hold a
    nan or an inf. One flag per tensor, gathered per device, so a GPU model syncs once per device."""
    named = [(n.removeprefix("module."), p) for n, p in model.named_parameters()]
    names, tensors = [n for n, _ in named], [p.detach() for _, p in named]
    if opt is not None:
        by_id = {id(p): n for n, p in named}
        for group in opt.param_groups:
            for p in group["params"]:
                for key, value in opt.state.get(p, {}).items():
                    if torch.is_tensor(value) and value.is_floating_point():
                        names.append(f"{by_id.get(id(p), '?')}.{key}")
                        tensors.append(value)
    flags: dict[torch.device, list[tuple[int, Tensor]]] = {}
    for i, t in enumerate(tensors):
        flags.setdefault(t.device, []).append((i, torch.isfinite(t).all()))
    bad = []
    for items in flags.values():
        ok = torch.stack([f for _, f in items]).tolist()
        bad += [i for (i, _), good in zip(items, ok) if not good]
    return [names[i] for i in sorted(bad)]


def last_good_checkpoint(state_dir: Path | None) -> str:
    """How an error names the checkpoint a resumed run would start from (``state_dir/state.json``)."""
    meta = state_dir / "state.json" if state_dir is not None else None
    if meta is None or not meta.exists():
        return "no checkpoint had been written yet"
    try:
        step = json.loads(meta.read_text())["step"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"the checkpoint in {state_dir} is unreadable"
    return f"the last good checkpoint (step {step}) is kept in {state_dir}"


def checked_step(opt: torch.optim.Optimizer, model: nn.Module, step: int, state_dir: Path | None, method: str) -> None:
    """``opt.step()``, then refuse weights that are no longer finite (a learning rate too large for the weights'
    dtype, an inf gradient), before anything saves them. The loss check cannot see these: the loss that produced
    the step was finite."""
    lr = opt.param_groups[0]["lr"]
    try:
        opt.step()
    except RuntimeError as e:  # torch refuses a step size the weights' dtype cannot hold (lr * 1/(1 - beta1))
        if "overflow" not in str(e):
            raise
        raise NonFiniteLoss(f"the {method} optimizer step overflowed at step {step} (learning rate {lr:g}: {e}); "
                            f"nothing of it was saved and {last_good_checkpoint(state_dir)}. Lower the learning "
                            "rate.") from None
    bad = nonfinite_tensors(model)
    if bad:
        n = sum(1 for _ in model.parameters())
        raise NonFiniteLoss(f"the {method} weights became nan/inf in the optimizer step at step {step} ({len(bad)} "
                            f"of {n} parameter tensors, e.g. {bad[0]}; learning rate {lr:g}); nothing of it was "
                            f"saved and {last_good_checkpoint(state_dir)}. Lower the learning rate or check the "
                            "data; resuming continues from the last good checkpoint.")


def check_config(cfg, method: str, positive: Iterable[str] = (), non_negative: Iterable[str] = (),
                 counts: Iterable[str] = (), non_negative_counts: Iterable[str] = ()) -> None:
    """Refuse a config before training: ``positive`` fields must be finite numbers > 0, ``non_negative`` finite
    numbers >= 0, ``counts`` integers >= 1 and ``non_negative_counts`` integers >= 0."""
    problems = []
    for name in positive:
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or v <= 0:
            problems.append(f"{name} must be a finite number > 0, got {v!r}")
    for name in non_negative:
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or v < 0:
            problems.append(f"{name} must be a finite number >= 0, got {v!r}")
    for name, low in [(n, 1) for n in counts] + [(n, 0) for n in non_negative_counts]:
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < low:
            problems.append(f"{name} must be an integer >= {low}, got {v!r}")
    if problems:
        raise WorkbenchError(f"bad {method} config: " + "; ".join(problems))


def save_train_state(
    path: Path, model: HookedTransformer, opt: torch.optim.Optimizer, step: int, history: list, seconds: float
) -> None:
    """Weights, optimizer state and ``state.json`` (step, history, the files' sizes and SHA-256) into ``path``.
    Refuses nan/inf weights or optimizer state: a checkpoint is always one a run can continue from."""
    bad = nonfinite_tensors(model, opt)
    if bad:
        raise NonFiniteLoss(f"refusing to checkpoint step {step}: nan/inf in {', '.join(bad[:3])}"
                            f"{' and more' if len(bad) > 3 else ''}; {last_good_checkpoint(path)}. Lower the "
                            "learning rate or check the data.")

    def write(tmp: Path) -> None:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
        flat, param_groups = flat_optimizer_state(opt)
        save_file(flat, str(tmp / "optimizer.safetensors"))
        meta = {"step": step, "seconds": seconds, "param_groups": param_groups, "history": history,
                "files": {name: file_digest(tmp / name) for name in STATE_FILES}}
        (tmp / "state.json").write_text(json.dumps(meta))

    atomic_dir(path, write, whole=True)  # the state is ours alone: never mix old and new files


def load_train_state(path: Path, model: nn.Module, opt: torch.optim.Optimizer, max_step: int | None = None
                     ) -> tuple[int, list, float]:
    """Restore what :func:`save_train_state` wrote; returns its step, history and seconds. A damaged state (bad
    JSON, a file whose size or SHA-256 differs from what ``state.json`` records, tensors that do not fit, nan/inf,
    a step past ``max_step``) is a :class:`WorkbenchError` naming the file (the caller's model and optimizer may
    then be partly overwritten: start them afresh)."""
    restart = f"delete {path} (or the whole work directory) or pass --no-resume to start from step 0"
    meta_path = path / "state.json"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise WorkbenchError(f"the resumable state {meta_path} is unreadable ({e}); {restart}") from None
    expected = {"step": numbers.Integral, "seconds": numbers.Real, "param_groups": list, "history": list}
    if not isinstance(meta, dict) or any(not isinstance(meta.get(k), t) or isinstance(meta.get(k), bool)
                                         for k, t in expected.items()) or meta["step"] < 0 \
            or (max_step is not None and meta["step"] > max_step) \
            or not all(isinstance(g, dict) and isinstance(g.get("lr"), numbers.Real) and math.isfinite(g["lr"])
                       and g["lr"] > 0 for g in meta["param_groups"]):
        steps = "an integer >= 0" if max_step is None else f"an integer from 0 to {max_step}"
        raise WorkbenchError(f"the resumable state {meta_path} is damaged: expected a JSON object with a step "
                             f"({steps}), seconds, param_groups (each with a finite lr > 0) and history; "
                             f"{restart}")
    files = meta.get("files", None)  # absent in states written before digests were recorded
    if files is not None and not (isinstance(files, dict) and all(
            isinstance(files.get(n), dict) and isinstance(files[n].get("bytes"), int)
            and isinstance(files[n].get("sha256"), str) for n in STATE_FILES)):
        raise WorkbenchError(f"the resumable state {meta_path} is damaged: its files entry must record the bytes "
                             f"and sha256 of {', '.join(STATE_FILES)}; {restart}")
    for name in STATE_FILES:
        file = path / name
        if not file.is_file():
            raise WorkbenchError(f"the resumable state {file} is missing; {restart}")
        if files is None:
            continue
        size = file.stat().st_size
        if size != files[name]["bytes"]:
            raise WorkbenchError(f"the resumable state {file} is damaged: {size} bytes, {meta_path.name} records "
                                 f"{files[name]['bytes']} (truncated or overwritten); {restart}")
        if file_digest(file)["sha256"] != files[name]["sha256"]:
            raise WorkbenchError(f"the resumable state {file} is damaged: its SHA-256 differs from the one "
                                 f"{meta_path.name} records; {restart}")
    tensors = {}
    for name in STATE_FILES:
        try:
            tensors[name] = load_file(str(path / name))
        except (OSError, SafetensorError, ValueError, RuntimeError) as e:
            raise WorkbenchError(f"the resumable state {path / name} is not a readable safetensors file ({e}); "
                                 f"{restart}") from None
    try:
        model.load_state_dict(tensors["model.safetensors"], strict=True)
    except (RuntimeError, ValueError, KeyError) as e:
        raise WorkbenchError(f"the resumable state {path / 'model.safetensors'} does not fit this model "
                             f"({str(e).splitlines()[0]}); {restart}") from None
    try:
        load_flat_optimizer_state(opt, tensors["optimizer.safetensors"], meta["param_groups"])
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as e:
        raise WorkbenchError(f"the resumable state {path / 'optimizer.safetensors'} does not fit this optimizer "
                             f"({str(e).splitlines()[0] if str(e) else type(e).__name__}); {restart}") from None
    shapes = [f"{n}.{k}" for n, p in model.named_parameters() for k, v in opt.state.get(p, {}).items()
              if torch.is_tensor(v) and v.dim() > 0 and v.shape != p.shape]
    if shapes:
        raise WorkbenchError(f"the resumable state {path / 'optimizer.safetensors'} does not fit this model "
                             f"(wrong shapes: {', '.join(shapes[:3])}); {restart}")
    bad = nonfinite_tensors(model, opt)
    if bad:
        raise WorkbenchError(f"the resumable state in {path} holds nan/inf ({', '.join(bad[:3])}); it cannot be "
                             f"continued: {restart}")
    return int(meta["step"]), meta["history"], float(meta["seconds"])


class IITBatches:
    """Base/source pairs of direct prompts for interchange-intervention training, drawn per step from a fixed
    pool of training-split operands (the pool seeded by the recipe seed)."""

    def __init__(self, recipe: Recipe, tokenizer: PreTrainedTokenizerBase, seed: int):
        self.cfg, self.tokenizer = recipe.iit, tokenizer
        rng = np.random.default_rng(seed)
        self.a, self.b = sample_operands(recipe.train.pool_size, recipe.digits, "train", rng)

    def step(self, step: int) -> tuple[iit.Alignment, dict, dict, dict]:
        # the indices into the (recipe-seeded) pool are a function of the step alone
        g = np.random.default_rng([self.cfg.pairs_per_step, step, 7])
        alignment = self.cfg.alignments[step % len(self.cfg.alignments)]
        i = g.integers(0, len(self.a), self.cfg.pairs_per_step)
        j = g.integers(0, len(self.a), self.cfg.pairs_per_step)
        a, b, a2, b2 = self.a[i], self.b[i], self.a[j], self.b[j]
        cf = iit.counterfactual(self.cfg, alignment.variable, a, b, a2, b2)
        enc = lambda x, y, z: iit.encode_direct(self.tokenizer, x, y, z)
        return alignment, enc(a, b, a + b), enc(a2, b2, a2 + b2), enc(a, b, cf)


def native_bf16() -> bool:
    """Whether this CPU computes bfloat16 matmuls natively (AVX512-BF16 or AMX). Without it oneDNN emulates them:
    measured 100x slower than float32 on an AVX2 host (a 512x128 by 128x512 matmul), so a bf16-autocast recipe
    runs for hours there."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch without the query: assume the recipe's author measured it
        return True


def _warn_emulated_bf16(recipe: Recipe) -> None:
    if recipe.train.bf16_autocast and not native_bf16():
        log.warning("%s trains under bf16 autocast, and this CPU (%s) has no native bfloat16: each step will run "
                    "tens of times slower than on the machine its card was measured on (AVX512-BF16), and emulated "
                    "kernels may not reproduce its weights bit for bit; a CPU with AVX512-BF16 or AMX trains it in "
                    "the card's time.",
                    recipe.name, torch.backends.cpu.get_cpu_capability())


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
    check_config(cfg, f"{recipe.name} training", positive=("lr",), non_negative=("weight_decay", "min_lr_frac"),
                 counts=("batch_tokens", "pool_size", "num_threads", "checkpoint_every"),
                 non_negative_counts=("steps", "warmup"))  # 0 steps: the initialised model (a baseline)
    if state_dir.exists() and not state_dir.is_dir():
        raise WorkbenchError(f"the work directory {state_dir} is a file; give a directory for the training state")
    recipe_json = json.loads(json.dumps(recipe.to_json()))  # as it reads back (tuples become lists)
    marker = state_dir / "recipe.json"
    if resume and marker.exists():
        check_same_run(marker, recipe_json, state_dir, "pass --no-resume (or another --work-dir) to start from step 0")
    _warn_emulated_bf16(recipe)
    t0 = time.perf_counter()
    with deterministic_cpu(cfg.num_threads):
        tokenizer = task_tokenizer(recipe.task, recipe.arch.n_ctx)
        data = encode_samples(tokenizer, build_samples(recipe, cfg.pool_size, "train", cfg.seed + DATA_SEED_OFFSET))
        if data.tokens.shape[1] > recipe.arch.n_ctx:
            raise ValueError(f"samples need {data.tokens.shape[1]} positions, n_ctx is {recipe.arch.n_ctx}")
        torch.manual_seed(cfg.seed)
        model = HookedTransformer(hooked_config(recipe.arch, len(tokenizer)), tokenizer=tokenizer)
        pairs = None
        if recipe.iit is not None:
            iit.check_config(recipe.iit, recipe.arch.d_model)
            pairs = IITBatches(recipe, tokenizer, cfg.seed + 2 * DATA_SEED_OFFSET)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
        step, history, seconds_before = 0, [], 0.0
        if resume and (state_dir / "state" / "state.json").exists():
            step, history, seconds_before = load_train_state(state_dir / "state", model, opt, max_step=cfg.steps)
            if not all(isinstance(h, dict) and isinstance(h.get("step"), int) for h in history):
                raise WorkbenchError(f"the resumable state {state_dir / 'state' / 'state.json'} is damaged: its "
                                     f"history must be a list of per-step metrics; delete {state_dir} or pass "
                                     "--no-resume to start from step 0")
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
                if pairs is not None:  # plant the mechanism: interchange and strictness losses (workbench.models.iit)
                    alignment, base, source, cf = pairs.step(step)
                    inter, strict = iit.iit_losses(model, recipe.iit, alignment, base, source, cf)
                    loss = loss + recipe.iit.weight * inter + recipe.iit.strict_weight * strict
                    metrics.update(iit=inter.item(), strict=strict.item())
            total = float(loss.detach())  # the task loss plus any planting losses
            if not math.isfinite(total):
                raise NonFiniteLoss(f"the {recipe.name} training loss became {total} at step {step}; "
                                    f"{last_good_checkpoint(state_dir / 'state')}. Lower the learning rate; "
                                    "resuming continues from that checkpoint.")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            checked_step(opt, model, step, state_dir / "state", f"{recipe.name} training")
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
