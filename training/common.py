"""What every alignment method shares: TRL-column data, padded batches, per-sequence log-probs, a JSONL metric log.

Data uses TRL's column names so users can bring their own: ``prompt`` + ``completion`` (SFT), ``prompt`` +
``chosen`` + ``rejected`` (reward model, DPO), ``prompt`` (PPO). Rows come from a JSONL file, a list of dicts, or
a ``datasets.Dataset`` (anything iterable of mappings).

Batches are right-padded; a mask marks the completion tokens (the loss never sees the prompt or the padding).
With right padding and absolute positional embeddings, a sequence's logits do not depend on the padding after it.
Preference pairs can also run packed, one row per pair with the tokens both sequences share once
(:class:`PackedPairs`, :func:`pair_logprobs`).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn
from transformer_lens import HookedTransformer

from workbench.errors import NonFiniteLoss, WorkbenchError
from workbench.resume import check_same_run
from workbench.io import write_json
from workbench.models.tokenizer import is_char_tokenizer, prompt_ids, vocabulary_chars
from workbench.models.trainer import check_config, deterministic_cpu, last_good_checkpoint

SFT_COLUMNS = ("prompt", "completion")
PREFERENCE_COLUMNS = ("prompt", "chosen", "rejected")


class Rows(list):
    """Rows (dicts) that remember where each came from (``where[i]``: ``"line 7"`` of a JSONL file, ``"row 7"``
    of a list or dataset), so every complaint about a row names it."""

    def __init__(self, rows: Iterable[dict], where: Sequence[str]):
        super().__init__(rows)
        self.where = list(where)


def _report(problems: list[str], source: str, allowed: str) -> None:
    """Raise one error listing the first ten problems, then what is allowed."""
    if problems:
        more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
        raise WorkbenchError(f"bad rows in {source}: " + "; ".join(problems[:10]) + f"{more}. {allowed}")


def _read_jsonl_rows(path: Path, problems: list[str]) -> tuple[list[dict], list[str]]:
    """The JSON objects of a JSONL file and their line numbers; problems (bytes that are not UTF-8, a line that is
    not a JSON object) go to ``problems``. Lines end at ``\n`` only, so line numbers are an editor's."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise WorkbenchError(f"cannot read the data file {path}: {e.strerror or e}") from None
    rows, where = [], []
    for n, raw in enumerate(data.split(b"\n"), start=1):
        try:
            line = raw.decode("utf-8-sig" if n == 1 else "utf-8")
        except UnicodeDecodeError as e:
            problems.append(f"line {n}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1}; is "
                            f"{path.name} a binary file?)")
            continue
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            problems.append(f"line {n}: not JSON ({getattr(e, 'msg', e)})")
            continue
        except RecursionError:
            problems.append(f"line {n}: JSON nested too deeply")
            continue
        if not isinstance(row, dict):
            problems.append(f"line {n}: a JSON {type(row).__name__}, not an object")
            continue
        rows.append(row)
        where.append(f"line {n}")
    return rows, where


def load_rows(source: str | Path | Iterable[Mapping], columns: Sequence[str]) -> Rows:
    """Rows with string ``columns`` from a JSONL path, a list of dicts or a ``datasets.Dataset``.

    Every malformed row is reported with its line (JSONL, 1-based) or row number (0-based) rather than skipped:
    a line that is not UTF-8 or not a JSON object, a missing or non-string column, an empty or whitespace-only
    text in any column but ``prompt``, and a preference pair whose ``chosen`` and ``rejected`` are the same text
    (it carries no preference). Blank JSONL lines are ignored.
    """
    problems: list[str] = []
    if isinstance(source, (str, Path)):
        path, name = Path(source), str(source)
        if not path.is_file():
            raise WorkbenchError(f"no data file {path}")
        rows, where = _read_jsonl_rows(path, problems)
    else:
        name = "the data"
        try:
            rows = [dict(r) for r in source]
        except (TypeError, ValueError) as e:
            raise WorkbenchError(f"the data must be an iterable of mappings (rows of named columns): {e}") from None
        where = [f"row {i}" for i in range(len(rows))]
    for row, at in zip(rows, where):
        for c in columns:
            if c not in row:
                problems.append(f"{at}: no {c!r} column")
            elif not isinstance(row[c], str):
                problems.append(f"{at}: {c!r} is a {type(row[c]).__name__}, not a string")
            elif c != "prompt" and not row[c].strip():
                problems.append(f"{at}: empty {c!r}")
        if "chosen" in columns and "rejected" in columns and isinstance(row.get("chosen"), str) \
                and row.get("chosen") == row.get("rejected"):
            problems.append(f"{at}: 'chosen' and 'rejected' are the same text (no preference to learn)")
    _report(problems, name, f"Each row needs the string columns {list(columns)} (TRL's names), non-empty texts"
            + (", chosen different from rejected." if "rejected" in columns else "."))
    if not rows:
        raise WorkbenchError(f"no rows in {name}")
    return Rows(rows, where)


def check_vocabulary(model: HookedTransformer, rows: Sequence[Mapping], columns: Sequence[str]) -> None:
    """Refuse rows with text the model's tokenizer cannot encode (a char tokenizer's missing characters), naming
    each row's line, column and characters. A no-op for subword tokenizers, which encode any text."""
    if not is_char_tokenizer(model.tokenizer):
        return
    allowed = vocabulary_chars(model.tokenizer)
    where = rows.where if isinstance(rows, Rows) else [f"row {i}" for i in range(len(rows))]
    problems = []
    for row, at in zip(rows, where):
        for c in columns:
            bad = sorted(set(row[c]) - allowed)
            if bad:
                problems.append(f"{at}: {c!r} has {''.join(bad)!r}")
    _report(problems, "the data", f"Characters outside the vocabulary; allowed: {''.join(sorted(allowed))!r}.")


def check_finite(loss: Tensor, step: int, state_dir: Path | None, method: str) -> None:
    """Stop on a nan/inf loss before it reaches the weights; the last checkpoint on disk (in ``state_dir``, None
    when the caller keeps none) is the last good one."""
    if torch.isfinite(loss).all():
        return
    raise NonFiniteLoss(f"the {method} loss became {loss.item()} at step {step}; {last_good_checkpoint(state_dir)}. "
                        "Lower the learning rate or check the data; resuming continues from that checkpoint.")


def check_training_config(cfg, method: str, positive: Sequence[str] = (), non_negative: Sequence[str] = (),
                          counts: Sequence[str] = ()) -> None:
    """What every trainer refuses up front: ``lr`` not a finite number > 0, ``steps``, ``batch_size`` or
    ``checkpoint_every`` not an integer >= 1; plus the method's own ``positive`` / ``non_negative`` numbers and
    ``counts``. A :class:`WorkbenchError` listing every bad field."""
    check_config(cfg, method, positive=("lr", *positive), non_negative=non_negative,
                 counts=("steps", "batch_size", "checkpoint_every", *counts))


@dataclass(frozen=True)
class Batch:
    tokens: Int[Tensor, "batch pos"]
    completion_mask: Bool[Tensor, "batch pos"]
    """True at completion tokens (the tokens the loss and the log-probs are over)."""


def encode_rows(model: HookedTransformer, prompts: Sequence[str], completions: Sequence[str], eos: bool = True
                ) -> list[tuple[list[int], int]]:
    """Per row, the token ids of ``prompt + completion (+ EOS)`` and the number of prompt tokens; a row longer
    than the context is refused by its prompt."""
    tok = model.tokenizer
    prompts, completions = list(prompts), list(completions)
    # two batched tokenizer calls, not two per row: the prompts as to_tokens gives them (BOS and all)
    p_all = prompt_ids(model, prompts)
    end = [tok.eos_token_id] if eos and tok.eos_token_id is not None else []
    completion_ids = tok(completions, add_special_tokens=False)["input_ids"] if completions else []
    out = []
    for p, p_ids, c_ids in zip(prompts, p_all, completion_ids):
        c_ids = c_ids + end
        if len(p_ids) + len(c_ids) > model.cfg.n_ctx:
            raise WorkbenchError(f"prompt + completion of {len(p_ids) + len(c_ids)} tokens exceed the context "
                                 f"({model.cfg.n_ctx}): {p[:30]!r}")
        out.append((p_ids + c_ids, len(p_ids)))
    return out


def pad_rows(model: HookedTransformer, rows: Sequence[tuple[list[int], int]]) -> Batch:
    """Right-padded rows of :func:`encode_rows`, with the completion positions marked."""
    width = max(len(ids) for ids, _ in rows)
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    tokens = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in rows], device=model.cfg.device)
    mask = torch.tensor([[False] * n + [True] * (len(ids) - n) + [False] * (width - len(ids)) for ids, n in rows],
                        device=model.cfg.device)
    return Batch(tokens, mask)


def encode(model: HookedTransformer, prompts: Sequence[str], completions: Sequence[str], eos: bool = True) -> Batch:
    """Right-padded ``prompt + completion (+ EOS)`` token ids, with the completion positions marked."""
    return pad_rows(model, encode_rows(model, prompts, completions, eos))


def _next_token_logprobs(model: nn.Module, batch: Batch) -> tuple[Float[Tensor, "batch pos"], Tensor]:
    """Log p(token_{t+1} | <= t) at each position t of ``tokens[:, :-1]``, and the logits."""
    logits = model(batch.tokens[:, :-1], return_type="logits")
    return logits.log_softmax(-1).gather(-1, batch.tokens[:, 1:, None])[..., 0], logits


def token_logprobs(
    model: HookedTransformer, batch: Batch
) -> tuple[Float[Tensor, "batch pos"], Float[Tensor, "batch pos d_vocab"]]:
    """Log-prob of each token given the ones before it (position t holds log p(token_t | <t); 0 at t = 0) and the
    logits that produced them (aligned the same way: row t predicts token t)."""
    logp, logits = _next_token_logprobs(model, batch)
    return F.pad(logp, (1, 0)), F.pad(logits, (0, 0, 1, 0))


def sequence_logprob(model: HookedTransformer, batch: Batch) -> Float[Tensor, " batch"]:
    """Sum of the completion tokens' log-probs per sequence: log pi(completion | prompt)."""
    logp, _ = _next_token_logprobs(model, batch)  # only the log-probs are padded: the logits are not needed
    return (F.pad(logp, (1, 0)) * batch.completion_mask).sum(-1)


def last_completion_index(batch: Batch) -> Int[Tensor, " batch"]:
    """Position of each row's last completion token (its EOS when encoded with one)."""
    pos = torch.arange(batch.tokens.shape[1], device=batch.tokens.device)
    return torch.where(batch.completion_mask, pos, -1).amax(-1)

def encode_pairs(model: HookedTransformer, rows: Sequence[Mapping]) -> Batch:
    """All pairs encoded once (which also rejects bad text before step 0): rows ``i`` and ``n + i`` are pair i's
    chosen and rejected completions."""
    prompts = [r["prompt"] for r in rows]
    return encode(model, prompts + prompts, [r["chosen"] for r in rows] + [r["rejected"] for r in rows])

def step_indices(n: int, seed: int, step: int, batch_size: int) -> Int[Tensor, " batch"]:
    """Step ``step``'s pairs: a function of ``(seed, step)`` only, so a resumed run draws the same ones."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + step))[:batch_size]

def take_pairs(pairs: Batch, idx: Int[Tensor, " batch"]) -> Batch:
    """Pairs ``idx``, chosen rows first, without the columns that are padding in every one of them."""
    n = pairs.tokens.shape[0] // 2
    idx = idx.to(pairs.tokens.device)
    idx = torch.cat([idx, idx + n])
    mask = pairs.completion_mask[idx]
    width = int(last_completion_index(Batch(pairs.tokens[idx], mask)).max()) + 1
    return Batch(pairs.tokens[idx, :width], mask[:, :width])


SHARED, CHOSEN, REJECTED, PADDING = 0, 1, 2, 3
"""What a position of a :class:`PackedPairs` row holds (its ``part``)."""


@dataclass(frozen=True)
class PackedPairs:
    """Preference pairs with what the chosen and the rejected sequence share run once (prefix sharing, as in
    Wang & Hegde 2024, "Accelerating Direct Preference Optimization with Prefix Sharing").

    Row i is pair i's shared prefix (its prompt and the tokens both completions start with), then the rest of the
    chosen sequence, then the rest of the rejected one, each rest without its last token (which is only ever
    predicted, never an input). ``positions`` is each token's position in its own sequence and ``part`` which of
    the three parts it is in (``SHARED``, ``CHOSEN``, ``REJECTED``, ``PADDING``). Causal attention plus one mask
    (the rejected part does not see the chosen part) gives every token exactly the context it has in its own
    sequence, so one forward of the row gives the log-probs of both sequences (:func:`pair_logprobs`), with the
    shared tokens run once instead of twice.

    At row position t, ``chosen_target[:, t]`` is the token of the chosen sequence that position t predicts, and
    ``chosen_mask`` says whether its log-prob counts (a completion token of the chosen sequence predicted from
    this position); likewise for the rejected sequence. The shared prefix predicts for both sequences (its last
    position predicts the first token where they differ).
    """

    tokens: Int[Tensor, "pairs pos"]
    positions: Int[Tensor, "pairs pos"]
    part: Int[Tensor, "pairs pos"]
    chosen_target: Int[Tensor, "pairs pos"]
    chosen_mask: Bool[Tensor, "pairs pos"]
    rejected_target: Int[Tensor, "pairs pos"]
    rejected_mask: Bool[Tensor, "pairs pos"]
    width: Int[Tensor, " pairs"]
    """Tokens in each row (the rest is padding)."""
    lengths: Int[Tensor, "pairs 2"]
    """Tokens of each pair's chosen and rejected sequence (prompt + completion + EOS), as :func:`encode_pairs`
    encodes them."""

    def take(self, idx: Int[Tensor, " batch"]) -> PackedPairs:
        """Rows ``idx``, cut to the widest of them."""
        idx = idx.to(self.tokens.device)
        width = self.width[idx]
        cut = int(width.max())
        return PackedPairs(*(t[idx, :cut] for t in (self.tokens, self.positions, self.part, self.chosen_target,
                                                   self.chosen_mask, self.rejected_target, self.rejected_mask)),
                           width, self.lengths[idx])


def pack_pairs(pairs: Batch, pad_token: int = 0) -> PackedPairs:
    """:class:`PackedPairs` of pairs encoded by :func:`encode_pairs` (chosen rows first, then rejected)."""
    n = pairs.tokens.shape[0] // 2
    tok_c, tok_r = pairs.tokens[:n], pairs.tokens[n:]
    mask_c, mask_r = pairs.completion_mask[:n], pairs.completion_mask[n:]
    len_c = last_completion_index(Batch(tok_c, mask_c)) + 1
    len_r = last_completion_index(Batch(tok_r, mask_r)) + 1
    shortest = torch.minimum(len_c, len_r)
    pos = torch.arange(pairs.tokens.shape[1], device=pairs.tokens.device)
    same = (tok_c == tok_r) & (pos < shortest[:, None])
    # Both sequences keep at least one token of their own: the one the shared prefix's last position predicts.
    shared = same.long().cumprod(1).sum(1).clamp(max=shortest - 1)
    width = len_c + len_r - shared - 2
    q = torch.arange(int(width.max()), device=pos.device)[None, :]
    n_shared, n_c, n_r = shared[:, None], len_c[:, None], len_r[:, None]
    in_shared = q < n_shared
    in_chosen = q < n_c - 1  # the shared prefix or the rest of the chosen sequence: position q there
    in_rejected = ~in_chosen & (q < width[:, None])
    t = torch.where(in_chosen, q, torch.where(in_rejected, q - (n_c - 1) + n_shared, 0))
    nxt = t + 1
    part = torch.where(in_shared, SHARED, torch.where(in_chosen, CHOSEN, torch.where(in_rejected, REJECTED, PADDING)))
    tokens = torch.where(in_rejected, tok_r.gather(1, t), tok_c.gather(1, t))
    tokens = torch.where(part == PADDING, pad_token, tokens)
    for_rejected = in_shared | in_rejected
    return PackedPairs(
        tokens=tokens, positions=t, part=part,
        chosen_target=torch.where(in_chosen, tok_c.gather(1, nxt), 0),
        chosen_mask=in_chosen & mask_c.gather(1, nxt),
        rejected_target=torch.where(for_rejected, tok_r.gather(1, nxt), 0),
        rejected_mask=for_rejected & mask_r.gather(1, nxt),
        width=width, lengths=torch.stack([len_c, len_r], 1))


def packs_pairs(model: HookedTransformer) -> bool:
    """Whether :func:`pair_logprobs` can run ``model`` on packed rows: learned absolute positions (which a row's
    own positions replace), causal global attention, right padding."""
    cfg = model.cfg
    hooks = [n for n in model.hook_dict if n.endswith("attn.hook_attn_scores")]
    return (cfg.positional_embedding_type == "standard" and cfg.attention_dir == "causal"
            and all(a == "global" for a in (cfg.attn_types or ["global"]))
            and len(hooks) == cfg.n_layers and "hook_pos_embed" in model.hook_dict
            and getattr(model.tokenizer, "padding_side", "right") != "left")


def pair_batch(pairs: Batch, packed: PackedPairs | None, idx: Int[Tensor, " batch"], n_ctx: int) -> Batch | PackedPairs:
    """Pairs ``idx`` as packed rows when ``packed`` is given and every row fits the context and holds a shared
    prefix; else as chosen and rejected rows (:func:`take_pairs`)."""
    if packed is not None:
        batch = packed.take(idx)
        if batch.tokens.shape[1] <= n_ctx and bool((batch.part[:, 0] == SHARED).all()):
            return batch
    return take_pairs(pairs, idx)


def pair_logprobs(
    model: nn.Module, batch: Batch | PackedPairs
) -> tuple[Float[Tensor, " pairs"], Float[Tensor, " pairs"]]:
    """log pi(chosen | prompt) and log pi(rejected | prompt) of each pair: one forward of the packed rows (or of
    the chosen and rejected rows of a :class:`Batch`). ``model`` is a HookedTransformer or DDP around one.

    For packed rows two forward hooks, removed afterwards, give each token its own sequence's context: one
    replaces the positional embeddings by those of each token's own position, the other hides the chosen part
    from the rejected part in every layer's attention scores. The log-probs are ``logit - logsumexp(logits)`` at
    the target tokens, so no second ``[pairs, pos, d_vocab]`` tensor is made."""
    if isinstance(batch, Batch):
        return sequence_logprob(model, batch).chunk(2)
    hooked = getattr(model, "module", model)
    w_pos = hooked.pos_embed.W_pos
    hidden = ((batch.part == REJECTED)[:, None, :, None] & (batch.part == CHOSEN)[:, None, None, :])

    def positions(module, args, out):
        return w_pos[batch.positions]

    def mask(module, args, scores):
        return scores.masked_fill(hidden, float("-inf"))

    handles = [hooked.hook_dict["hook_pos_embed"].register_forward_hook(positions)]
    handles += [m.register_forward_hook(mask) for n, m in hooked.hook_dict.items()
                if n.endswith("attn.hook_attn_scores")]
    try:
        logits = model(batch.tokens, return_type="logits")
    finally:
        for h in handles:
            h.remove()
    norm = logits.logsumexp(-1)

    def total(target: Tensor, keep: Tensor) -> Tensor:
        logp = logits.gather(-1, target[..., None])[..., 0] - norm
        return torch.where(keep, logp, 0.0).sum(-1)

    return total(batch.chosen_target, batch.chosen_mask), total(batch.rejected_target, batch.rejected_mask)


def start_run(out_dir: Path, run: dict, resume: bool, writer: bool = True) -> bool:
    """Whether to resume from ``out_dir/state``; refuses state left by a different run, clears stale state.

    Under ``torchrun`` every rank calls this (so all agree, or all refuse) and only the ``writer`` (rank 0)
    touches the directory.
    """
    marker, state = out_dir / "run.json", out_dir / "state"
    if out_dir.exists() and not out_dir.is_dir():
        raise WorkbenchError(f"{out_dir} is a file; a training run's output is a directory")
    if resume and (state / "state.json").exists():
        if marker.exists():
            check_same_run(marker, run, out_dir, "pass --no-resume to start from step 0")
        elif run:
            raise WorkbenchError(f"{out_dir} holds a training state without its run.json; delete it or pass "
                                 "--no-resume to start from step 0")
        return True
    if writer:
        shutil.rmtree(state, ignore_errors=True)  # starting afresh: a later resume must never pick up stale state
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json(marker, run)
    return False

def device_context(model: nn.Module, num_threads: int):
    # Deterministic kernels on CUDA would need CUBLAS_WORKSPACE_CONFIG; bit-exact resume is promised on CPU.
    return deterministic_cpu(num_threads) if next(model.parameters()).device.type == "cpu" else nullcontext()


class MetricLog:
    """Append-only JSONL of one dict per step (flushed each line, so a kill loses at most the current step);
    reopening after a resume drops lines past the resumed step."""

    def __init__(self, path: str | Path, resume_step: int = 0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if self.path.exists() and resume_step > 0:
            try:
                text = self.path.read_text()
            except (OSError, UnicodeDecodeError) as e:
                raise WorkbenchError(f"the metric log {self.path} is unreadable ({e}); delete it (or the run's "
                                     "directory) or pass --no-resume") from None
            lines = text.split("\n")
            for n, line in enumerate(lines, start=1):
                if not line:
                    continue
                try:
                    step = json.loads(line)["step"]
                    if isinstance(step, bool) or not isinstance(step, int):
                        raise TypeError(step)
                except (ValueError, KeyError, TypeError):
                    if n == len(lines):  # the line being written when a run was killed: a later step's
                        continue
                    raise WorkbenchError(f"the metric log {self.path} is damaged at line {n} (expected a JSON "
                                         "object with an integer step); delete it (or the run's directory) or pass "
                                         "--no-resume") from None
                if step < resume_step:
                    kept.append(line)
        self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **{k: float(v) for k, v in metrics.items()}}) + "\n")


@dataclass(frozen=True)
class Distributed:
    """This process's place in a ``torchrun`` job (rank 0 of 1 when run plainly).

    The trainers run unchanged under ``torchrun --nproc_per_node N``: every rank draws the same global batch from
    ``(seed, step)``, keeps its own contiguous 1/N of it, and DistributedDataParallel averages the gradients, so a
    step sees the same mean-loss gradient as one process with the whole batch (up to float summation order). Only
    rank 0 writes the log, the checkpoints and the final model; all ranks read a checkpoint when resuming.
    """

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, items: Sequence | Tensor, what: str = "batch_size"):
        """This rank's contiguous share of a global batch; the batch must split evenly."""
        if len(items) % self.world_size:
            raise WorkbenchError(f"{what} {len(items)} does not split over {self.world_size} processes; pass a "
                                 f"multiple of {self.world_size}")
        n = len(items) // self.world_size
        return items[self.rank * n:(self.rank + 1) * n]

    def wrap(self, module: nn.Module, find_unused_parameters: bool = False) -> nn.Module:
        """The module DDP-wrapped (gradients averaged over ranks in backward) when there is more than one rank.
        ``find_unused_parameters`` for modules whose forward skips some parameters (a reward model never
        unembeds)."""
        if self.world_size == 1:
            return module
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(module, find_unused_parameters=find_unused_parameters)

    def mean(self, metrics: Mapping[str, Tensor | float]) -> dict[str, Tensor]:
        """Metrics averaged over ranks, so the logged numbers describe the global batch."""
        if self.world_size == 1:
            return dict(metrics)
        keys = sorted(metrics)
        values = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64)
        dist.all_reduce(values)
        return {k: v / self.world_size for k, v in zip(keys, values)}

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()


def distributed() -> Distributed:
    """Join the ``torchrun`` process group named by the environment (gloo on CPU, NCCL on GPU), or rank 0 of 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Distributed()
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available()
        if use_cuda:  # one GPU per rank: load models after this so they land on the rank's own device
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Distributed(dist.get_rank(), dist.get_world_size())


def plot_metrics(log: str | Path, out: str | Path | None = None, keys: Sequence[str] | None = None) -> Path:
    """Training curves from a ``metrics.jsonl``: one panel per metric against the step, as a PNG (default: beside
    the log, ``metrics.png``). ``keys`` picks and orders the metrics (default: all of them)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from workbench.io import atomic_write

    log = Path(log)
    rows = [json.loads(line) for line in log.read_text().splitlines() if line]
    if not rows:
        raise WorkbenchError(f"{log} holds no metrics yet")
    keys = list(keys) if keys else [k for k in rows[0] if k != "step"]
    cols = min(4, len(keys))
    fig, axes = plt.subplots((len(keys) + cols - 1) // cols, cols, figsize=(3.2 * cols, 2.4 * ((len(keys) + cols - 1) // cols)),
                             squeeze=False, dpi=100)
    steps = [r["step"] for r in rows]
    for ax, key in zip(axes.flat, keys):
        ax.plot(steps, [r.get(key, float("nan")) for r in rows], lw=1)
        ax.set_title(key, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.tight_layout()

    def write(path: Path) -> None:
        fig.savefig(path, format="png")

    try:
        return atomic_write(Path(out) if out else log.with_name("metrics.png"), write)
    finally:
        plt.close(fig)
