"""Organism training speed: our trainer against the naive reference loop, measured in the same run.

The reference is a plain TransformerLens training loop whose batches are built in Python every step (sample
problems, format strings, call the tokenizer with padding). Both train the same 2-layer d_model=128 model on
3-digit addition with a digit-wise CoT, and both are timed until a held-out batch is 100% exact under teacher
forcing (every completion token right), the criterion of the reference figure (about 4 minutes here).

    python bench/organisms.py            # time to target for both, and the ratio
    python bench/organisms.py --quick    # only seconds per step for both (about a minute)

Evaluation time is excluded from both timings. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F
from transformer_lens import HookedTransformer

from workbench.models.tokenizer import build_char_tokenizer
from workbench.models.trainer import completion_loss, deterministic_cpu, encode_samples, hooked_config, train
from workbench.models.zoo import ArchConfig, Recipe, TrainConfig, build_samples
from workbench.tasks import formats
from workbench.tasks.addition import Problem

ARCH = ArchConfig(n_layers=2, d_model=128, n_heads=4, d_mlp=512)
RECIPE = Recipe("bench-cot3", "3-digit CoT addition", "none", (("cot", 1.0),), digits=(3,), arch=ARCH,
                train=TrainConfig(steps=2000, seed=0, checkpoint_every=10_000))
HELD_OUT = 512


class Timer:
    """Wall time of training only: evaluation pauses the clock."""

    def __init__(self) -> None:
        self.start, self.paused = time.perf_counter(), 0.0

    def pause(self):
        t = time.perf_counter()
        return lambda: setattr(self, "paused", self.paused + time.perf_counter() - t)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start - self.paused


def held_out_exact(model: HookedTransformer, enc) -> float:
    with torch.no_grad():
        return completion_loss(model, enc.tokens, enc.loss_mask)[1]["seq_exact"]


def naive(max_steps: int, eval_every: int, enc, quick_steps: int | None) -> dict:
    """The reference: Python-built batches of 256, tokenized by the HF tokenizer every step."""
    tok = build_char_tokenizer()
    torch.manual_seed(0)
    model = HookedTransformer(hooked_config(ARCH, len(tok)), tokenizer=tok)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01, betas=(0.9, 0.98))
    rng, timer, step = np.random.default_rng(0), Timer(), 0
    while step < (quick_steps or max_steps):
        samples = [formats.cot(Problem(int(rng.integers(100, 1000)), int(rng.integers(100, 1000)))) for _ in range(256)]
        batch = tok([s.text + tok.eos_token for s in samples], return_tensors="pt", padding=True)
        tokens = batch.input_ids
        prompt_len = torch.tensor([len(tok(s.prompt).input_ids) for s in samples])
        pos = torch.arange(tokens.shape[1])[None]
        mask = (pos >= prompt_len[:, None]) & batch.attention_mask.bool()
        logits = model(tokens[:, :-1])
        nll = F.cross_entropy(logits.transpose(1, 2), tokens[:, 1:], reduction="none")
        loss = (nll * mask[:, 1:]).sum() / mask[:, 1:].sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if quick_steps is None and step % eval_every == 0:
            resume = timer.pause()
            model.eval()
            done = held_out_exact(model, enc) >= 1.0
            model.train()
            resume()
            if done:
                break
    return {"steps": step, "seconds": round(timer.elapsed(), 1), "seconds_per_step": round(timer.elapsed() / step, 4)}


def ours(eval_every: int, enc, quick_steps: int | None) -> dict:
    timer, reached = Timer(), {}

    def callback(step: int, model: HookedTransformer) -> bool:
        resume = timer.pause()
        done = held_out_exact(model, enc) >= 1.0
        resume()
        if done:
            reached["step"] = step
        return done

    recipe = RECIPE
    if quick_steps:
        recipe = Recipe(**{**RECIPE.__dict__, "train": TrainConfig(**{**RECIPE.train.__dict__, "steps": quick_steps})})
    with tempfile.TemporaryDirectory() as tmp:
        timer.start = time.perf_counter()  # includes building and encoding the data pool
        _, summary = train(recipe, tmp, resume=False, progress=False,
                           callback=None if quick_steps else callback, callback_every=eval_every)
    steps = summary["steps"]
    return {"steps": steps, "seconds": round(timer.elapsed(), 1), "seconds_per_step": round(timer.elapsed() / steps, 4)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="time 60 steps of each instead of training to target")
    ap.add_argument("--max-steps", type=int, default=2000)
    ap.add_argument("--eval-every", type=int, default=50)
    args = ap.parse_args()
    tok = build_char_tokenizer()
    enc = encode_samples(tok, build_samples(RECIPE, HELD_OUT, "test", 123))
    quick = 60 if args.quick else None
    with deterministic_cpu(2):
        ref = naive(args.max_steps, args.eval_every, enc, quick)
        new = ours(args.eval_every, enc, quick)
    key = "seconds"
    result = {
        "task": "2-layer d_model=128, 3-digit CoT addition, until a held-out batch of 512 is 100% teacher-forced exact"
        if not quick else f"{quick} steps each",
        "naive_reference": ref,
        "workbench_trainer": new,
        "speedup_time_to_target" if not quick else "speedup_per_step":
            round(ref[key] / new[key], 2) if not quick else round(ref["seconds_per_step"] / new["seconds_per_step"], 2),
        "torch": torch.__version__,
        "threads": 2,
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
