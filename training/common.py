"""What every alignment method shares: TRL-column data, padded batches, per-sequence log-probs, a JSONL metric log.

Data uses TRL's column names so users can bring their own: ``prompt`` + ``completion`` (SFT), ``prompt`` +
``chosen`` + ``rejected`` (reward model, DPO), ``prompt`` (PPO). Rows come from a JSONL file, a list of dicts, or
a ``datasets.Dataset`` (anything iterable of mappings).

Batches are right-padded; a mask marks the completion tokens (the loss never sees the prompt or the padding).
With right padding and absolute positional embeddings, a sequence's logits do not depend on the padding after it.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn
from transformer_lens import HookedTransformer

from workbench.errors import WorkbenchError
from workbench.io import read_jsonl, write_json
from workbench.models.trainer import deterministic_cpu

SFT_COLUMNS = ("prompt", "completion")
PREFERENCE_COLUMNS = ("prompt", "chosen", "rejected")


def load_rows(source: str | Path | Iterable[Mapping], columns: Sequence[str]) -> list[dict]:
    """Rows with string ``columns`` from a JSONL path, a list of dicts or a ``datasets.Dataset``."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise WorkbenchError(f"no data file {path}")
        try:
            rows = read_jsonl(path)
        except ValueError as e:
            raise WorkbenchError(f"{path} is not JSONL: {e}") from None
    else:
        rows = [dict(r) for r in source]
    if not rows:
        raise WorkbenchError("no rows in the data")
    bad = [i for i, r in enumerate(rows) if not all(isinstance(r.get(c), str) for c in columns)]
    if bad:
        raise WorkbenchError(f"rows {bad[:5]} lack string columns {list(columns)} (TRL's column names)")
    return rows


@dataclass(frozen=True)
class Batch:
    tokens: Int[Tensor, "batch pos"]
    completion_mask: Bool[Tensor, "batch pos"]
    """True at completion tokens (the tokens the loss and the log-probs are over)."""


def encode(model: HookedTransformer, prompts: Sequence[str], completions: Sequence[str], eos: bool = True) -> Batch:
    """Right-padded ``prompt + completion (+ EOS)`` token ids, with the completion positions marked."""
    tok = model.tokenizer
    rows, masks = [], []
    for p, c in zip(prompts, completions):
        p_ids = model.to_tokens(p, truncate=False)[0].tolist()
        c_ids = tok(c, add_special_tokens=False)["input_ids"] + ([tok.eos_token_id] if eos and tok.eos_token_id is not None else [])
        if len(p_ids) + len(c_ids) > model.cfg.n_ctx:
            raise WorkbenchError(f"prompt + completion of {len(p_ids) + len(c_ids)} tokens exceed the context "
                                 f"({model.cfg.n_ctx}): {p[:30]!r}")
        rows.append(p_ids + c_ids)
        masks.append([False] * len(p_ids) + [True] * len(c_ids))
    width = max(map(len, rows))
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    tokens = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=model.cfg.device)
    mask = torch.tensor([m + [False] * (width - len(m)) for m in masks], device=model.cfg.device)
    return Batch(tokens, mask)


def token_logprobs(
    model: HookedTransformer, batch: Batch
) -> tuple[Float[Tensor, "batch pos"], Float[Tensor, "batch pos d_vocab"]]:
    """Log-prob of each token given the ones before it (position t holds log p(token_t | <t); 0 at t = 0) and the
    logits that produced them (aligned the same way: row t predicts token t)."""
    logits = model(batch.tokens[:, :-1], return_type="logits")
    logp = logits.log_softmax(-1).gather(-1, batch.tokens[:, 1:, None])[..., 0]
    return F.pad(logp, (1, 0)), F.pad(logits, (0, 0, 1, 0))


def sequence_logprob(model: HookedTransformer, batch: Batch) -> Float[Tensor, " batch"]:
    """Sum of the completion tokens' log-probs per sequence: log pi(completion | prompt)."""
    logp, _ = token_logprobs(model, batch)
    return (logp * batch.completion_mask).sum(-1)


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

def start_run(out_dir: Path, run: dict, resume: bool) -> bool:
    """Whether to resume from ``out_dir/state``; refuses state left by a different run, clears stale state."""
    marker, state = out_dir / "run.json", out_dir / "state"
    if resume and (state / "state.json").exists():
        old = json.loads(marker.read_text()) if marker.exists() else {}
        if old != run:
            diff = sorted(k for k in run.keys() | old.keys() if old.get(k) != run.get(k))
            raise WorkbenchError(f"{out_dir} holds the state of a different run (differs in {diff}); delete it, "
                                 "pass another output directory or resume=False")
        return True
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
            kept = [line for line in self.path.read_text().splitlines() if line and json.loads(line)["step"] < resume_step]
        self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **{k: float(v) for k, v in metrics.items()}}) + "\n")
