"""SAE training throughput: ours (activation cache + SAELens's ``SAETrainer``) against SAELens's own
``LanguageModelSAETrainingRunner``, same model, hook, texts and SAE config, on CPU.

Both arms train a TopK SAE (``TopKTrainingSAEConfig(d_in, d_sae, k)``, inputs scaled to mean norm sqrt(d_in) and
the factor folded in at the end) with the same batch size, constant learning rate, dead-feature windows and
number of steps, on every position but the BOS of the training texts (``texts_for(model, n, "train", 0)``):

* ours: ``write_cache(positions=None)`` runs the model once per text (timed once), then ``train_sae`` streams
  shuffled rows from that cache. Reported for training alone (the loop's seconds in ``workbench.json``) and for
  cache + training (wall time of ``write_cache`` plus wall time of ``train_sae``);
* SAELens: the runner, end to end (dataset build, its on-the-fly activation generation, norm estimate, training,
  saving), with ``override_model=`` our HookedTransformer and ``override_dataset=`` a pre-tokenized dataset.
  ``--runner-data padded`` (default): one text per row, ``[BOS] + text``, right-padded with PAD to the longest
  text, ``exclude_special_tokens=True`` dropping BOS and PAD. The model is causal, so these are the very
  activations our cache holds (each text alone); the runner pays the forward passes of the padding and reruns
  the model every epoch. ``--runner-data concat``: every text's ``[BOS] + text`` concatenated and cut into
  ``n_ctx`` chunks (SAELens's usual packing): same hook and token distribution, but a text attends to the texts
  before it in its chunk, which a model trained on single texts never saw.

Both SAEs are then evaluated by ``evaluate_sae`` on ``texts_for(model, 1000, "test", 1)`` (L0, explained
variance, CE recovered). Threads and seeds are the same for both; the model runs once on 64 texts first
(warm-up), then ours runs, then SAELens's runner.

    python bench/sae_training.py                                              # 20000 texts, 2M tokens
    python bench/sae_training.py --n-texts 500 --tokens 50000 --d-sae 128     # a quick check

Prints a table and the ratios; writes everything to OUT/bench.json.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from datasets import Dataset
from sae_lens import (
    SAE,
    LanguageModelSAERunnerConfig,
    LanguageModelSAETrainingRunner,
    LoggingConfig,
    TopKTrainingSAEConfig,
)

from workbench.cache_store import write_cache
from workbench.cli_sae import texts_for
from workbench.io import write_json
from workbench.models.loader import load_model
from workbench.models.tokenizer import tokenize_prompts
from workbench.models.trainer import deterministic_cpu
from workbench.sae_eval import evaluate_sae
from workbench.saes import LoadedSAE, SAERecipe, load_sae, train_sae

SEED = 0
STORE_BATCH_PROMPTS = 256  # rows per LLM forward in the runner (write_cache's default batch of prompts)
BUFFER_BATCHES = 32  # the runner's mixing buffer holds this many training batches of activations
NORM_BATCHES = 50  # batches for the activation-norm estimate (what train_sae uses; SAELens's default is 1000)


def ours(model, texts: list[str], args, tmp: Path) -> dict:
    t0 = time.perf_counter()
    write_cache(model, args.model, texts, [args.hook], tmp / "cache", positions=None, progress=False)
    cache_s = time.perf_counter() - t0
    recipe = SAERecipe(arch="topk", d_sae=args.d_sae, k=args.k, batch_size=args.batch_size,
                       total_tokens=args.tokens, lr=args.lr, seed=SEED, num_threads=args.threads)
    t0 = time.perf_counter()
    sae_dir = train_sae(model, args.model, tmp / "cache", args.hook, tmp / "ours", recipe, resume=False, progress=False)
    train_wall = time.perf_counter() - t0
    info = json.loads((sae_dir / "workbench.json").read_text())
    n = info["tokens"]
    return {"dir": sae_dir, "tokens": n, "cache_seconds": round(cache_s, 2), "train_seconds": info["seconds"],
            "train_wall_seconds": round(train_wall, 2), "train_tokens_per_s": round(n / info["seconds"]),
            "cache_plus_train_tokens_per_s": round(n / (cache_s + train_wall))}


def runner_dataset(model, texts: list[str], mode: str) -> tuple[Dataset, int, dict]:
    """The texts as a pre-tokenized dataset of fixed-length ``input_ids`` rows (see the module docstring)."""
    toks = [t.tolist() for t in tokenize_prompts(model, texts)]  # [BOS] + text, as write_cache tokenizes
    if mode == "padded":
        ctx, pad = max(map(len, toks)), model.tokenizer.pad_token_id
        rows = [t + [pad] * (ctx - len(t)) for t in toks]
    else:
        ctx, flat = model.cfg.n_ctx, [i for t in toks for i in t]
        rows = [flat[s : s + ctx] for s in range(0, len(flat) - ctx + 1, ctx)]
    special = set(model.tokenizer.all_special_ids)
    trained = sum(i not in special for r in rows for i in r)
    stats = {"rows": len(rows), "context_size": ctx, "positions_forwarded_per_epoch": len(rows) * ctx,
             "positions_trained_on_per_epoch": trained, "trained_fraction": round(trained / (len(rows) * ctx), 3)}
    return Dataset.from_dict({"input_ids": rows}), ctx, stats


def runner_config(ctx: int, d_in: int, args, out: Path) -> LanguageModelSAERunnerConfig:
    steps, window = args.tokens // args.batch_size, max(1, 200_000 // args.batch_size)  # as train_sae
    return LanguageModelSAERunnerConfig(
        sae=TopKTrainingSAEConfig(d_in=d_in, d_sae=args.d_sae, k=args.k, dtype="float32", device="cpu",
                                  normalize_activations="expected_average_only_in"),
        model_name=args.model, hook_name=args.hook, dataset_path="", is_dataset_tokenized=True, streaming=False,
        context_size=ctx, prepend_bos=True, exclude_special_tokens=True,
        training_tokens=steps * args.batch_size, train_batch_size_tokens=args.batch_size,
        store_batch_size_prompts=STORE_BATCH_PROMPTS,
        n_batches_in_buffer=math.ceil(BUFFER_BATCHES * args.batch_size / ctx),  # the buffer counts ctx tokens each
        lr=args.lr, lr_end=args.lr, lr_scheduler_name="constant", lr_warm_up_steps=0,
        dead_feature_window=window, feature_sampling_window=window, n_batches_for_norm_estimate=NORM_BATCHES,
        device="cpu", dtype="float32", seed=SEED, logger=LoggingConfig(log_to_wandb=False),
        n_checkpoints=0, checkpoint_path=None, output_path=str(out), verbose=False,
        model_from_pretrained_kwargs={})  # unused (override_model); its default makes SAE loading warn


def saelens(model, texts: list[str], args, tmp: Path) -> dict:
    _, c = model.run_with_cache(torch.tensor([[model.tokenizer.bos_token_id] * 2]), names_filter=[args.hook])
    d_in = int(c[args.hook][0, 0].numel())
    with warnings.catch_warnings(), deterministic_cpu(args.threads):
        warnings.filterwarnings("ignore", message=".*(fewer samples|have been exhausted|To copy construct).*")  # benign
        torch.manual_seed(SEED)
        t0 = time.perf_counter()
        ds, ctx, stats = runner_dataset(model, texts, args.runner_data)
        cfg = runner_config(ctx, d_in, args, tmp / "saelens")
        cfg_dict = cfg.to_dict()
        runner = LanguageModelSAETrainingRunner(cfg, override_dataset=ds, override_model=model)
        runner.run()
        seconds = time.perf_counter() - t0
    n = cfg.training_tokens  # a multiple of the batch size: the trainer stops exactly there
    return {"dir": tmp / "saelens", "tokens": n, "seconds": round(seconds, 2), "tokens_per_s": round(n / seconds),
            "dataset": {"mode": args.runner_data, **stats}, "config": cfg_dict}


def quality(model, loaded: LoadedSAE, texts: list[str]) -> dict:
    m = evaluate_sae(model, loaded, texts)
    return {k: m[k] for k in ("l0", "explained_variance", "ce_recovered", "mse", "dead_fraction", "ce_sae")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="adder-direct")
    ap.add_argument("--hook", default="blocks.1.hook_resid_post")
    ap.add_argument("--n-texts", type=int, default=20000, help="training texts")
    ap.add_argument("--n-eval", type=int, default=1000, help="held-out texts for the evaluation")
    ap.add_argument("--tokens", type=int, default=2_000_000, help="training tokens (activations)")
    ap.add_argument("--d-sae", type=int, default=1024)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--lr", type=float, default=4e-4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runner-data", choices=("padded", "concat"), default="padded")
    ap.add_argument("--out", type=Path, default=Path("runs/bench-sae"))
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    texts = texts_for(args.model, args.n_texts, "train", SEED)
    eval_texts = texts_for(args.model, args.n_eval, "test", 1)
    with tempfile.TemporaryDirectory() as tmp:  # warm-up: the first forward passes in a process are slow
        write_cache(model, args.model, texts[:64], [args.hook], Path(tmp) / "warm-up", positions=None, progress=False)
        a = ours(model, texts, args, Path(tmp))
        b = saelens(model, texts, args, Path(tmp))
        torch.set_num_threads(args.threads)
        qa = quality(model, load_sae(a.pop("dir"), model, hook=args.hook), eval_texts)
        sae = SAE.load_from_disk(str(b.pop("dir")), device="cpu").eval()
        qb = quality(model, LoadedSAE(sae=sae, hook=args.hook, hook_out=None), eval_texts)
    ratios = {"ours_train_only_over_saelens": round(a["train_tokens_per_s"] / b["tokens_per_s"], 2),
              "ours_cache_plus_train_over_saelens": round(a["cache_plus_train_tokens_per_s"] / b["tokens_per_s"], 2)}
    rows = [("ours: write_cache", "", a["cache_seconds"], "", None),
            ("ours: training only", a["tokens"], a["train_seconds"], a["train_tokens_per_s"], qa),
            ("ours: cache + training (wall)", a["tokens"], round(a["cache_seconds"] + a["train_wall_seconds"], 2),
             a["cache_plus_train_tokens_per_s"], qa),
            ("SAELens runner, end to end", b["tokens"], b["seconds"], b["tokens_per_s"], qb)]
    print(f"{'arm':32}{'tokens':>10}{'seconds':>10}{'tokens/s':>10}{'L0':>8}{'EV':>8}{'CE rec':>8}")
    for name, n, s, r, q in rows:
        qs = f"{q['l0']:8.2f}{q['explained_variance']:8.3f}{q['ce_recovered']:8.3f}" if q else ""
        print(f"{name:32}{n:>10}{s:>10}{r:>10}{qs}")
    print("ratios (ours / SAELens tokens per second):", json.dumps(ratios))
    result = {
        "model": args.model, "hook": args.hook, "threads": args.threads, "seed": SEED, "torch": torch.__version__,
        "training_texts": f"texts_for({args.model!r}, {args.n_texts}, 'train', {SEED})",
        "eval_texts": f"texts_for({args.model!r}, {args.n_eval}, 'test', 1)",
        "sae": {"arch": "topk", "d_sae": args.d_sae, "k": args.k, "batch_size": args.batch_size, "lr": args.lr,
                "tokens": args.tokens, "normalize_activations": "expected_average_only_in"},
        "same_activations": (
            "Same model, hook and texts; every position but the BOS. Ours caches each text's activations once "
            "and trains on shuffled rows of the cache; SAELens's runner generates activations on the fly. "
            + ("Its rows are single texts right-padded with PAD, BOS and PAD excluded: by causality the same "
               "activations as our cache (different order and shuffling)." if args.runner_data == "padded" else
               "Its rows are n_ctx chunks of concatenated [BOS]+text: same token distribution, but texts attend "
               "to earlier texts in their chunk, so the activations are not the ones our cache holds.")),
        "ours": a, "saelens_runner": b, "ratios": ratios, "quality": {"ours": qa, "saelens_runner": qb},
    }
    write_json(args.out / "bench.json", result)
    print(f"wrote {args.out / 'bench.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
