"""DPO and PPO throughput: ours (``training.dpo.train_dpo``, ``training.ppo.train_ppo`` on a HookedTransformer)
against TRL's ``DPOTrainer`` and PPO trainer (``trl.experimental.ppo.PPOTrainer``) on the same tiny GPT-2, in one
run, on CPU.

The model: one GPT-2 config (2 layers, d_model 128, 4 heads, n_ctx 128, the organisms' character vocabulary of
48 tokens) with seeded random weights, saved as a Hugging Face ``GPT2LMHeadModel`` next to the character tokenizer
(``build_char_tokenizer``). TRL trains that directory's model; ours loads the same directory into a
HookedTransformer through the workbench loader (``load_hf_dir``: LayerNorm folded, writing weights centred), which
computes the same log-probs (checked at start-up, to 1e-4). Both sides run in float32 with the same number of
torch threads (``--threads``, 1 by default), the same seed and the same data:

* DPO: ``hint_preferences`` pairs (prompt, chosen, rejected); ``--dpo-batch`` pairs per step, beta 0.1, lr 1e-5
  constant, AdamW without weight decay, gradient norm clipped to 1. A step is the reference's and the policy's
  log-probs of the batch's chosen and rejected sequences, the loss, backward and the optimizer step.
* PPO: the prompts of the same pairs; ``--ppo-batch`` rollouts per iteration, ``--ppo-minibatch`` sequences per
  gradient step, ``--ppo-epochs`` passes, ``--response-length`` sampled tokens at temperature 1 with stop at EOS
  and a missing-EOS penalty of 1, KL coefficient 0.05, clip ranges 0.2, vf_coef 0.1, gamma 1, lambda 0.95, lr 1e-5
  constant. An iteration is sampling, scoring, reference log-probs, values, GAE and the clipped updates.
  Rewards come from a reward model on the same body: TRL's is an ``AutoModelForSequenceClassification`` (GPT-2
  body + linear score) built from the same directory; ours is ``training.reward.RewardModel`` (the same body as a
  HookedTransformer + a linear head) through ``training.reward.score``.

Tokens per second counts the real (non-padding) tokens each side processed, prompt and completion together: for
DPO the chosen and the rejected sequences of every pair in a step (EOS included); for PPO the prompt and the
sampled completion (up to and including its EOS) of every rollout. Each arm runs ``--warmup`` steps first and is
timed over the following ``--steps`` (from the end of the last warm-up step to the end of the last step, so the
trainers' set-up, data preparation and final saving are outside the timing); arms alternate ours, TRL, ours, TRL
... for ``--repeats`` rounds and the medians are reported, so noise from a shared CPU hits both alike.

Differences that remain between the two sides (also written to the JSON):

* the model code: a TransformerLens HookedTransformer (hook points on every activation, attention written out)
  against transformers' GPT-2 (``sdpa`` attention); same function, same weights;
* DPO: ours draws each step's pairs from ``(seed, step)``, TRL shuffles a dataloader: different pairs, the same
  distribution (each side's own tokens are counted). Ours runs with deterministic kernels and writes a metrics
  line per step (its normal mode); TRL's logging, saving and evaluation are off;
* DPO forward: TRL runs the chosen and the rejected sequences as rows of one padded batch
  (``concatenated_forward``); ours runs each pair as one row, its shared prefix (the prompt and the tokens both
  completions start with) once, then the rest of each completion under an attention mask
  (``training.common.pack_pairs``), which gives the same log-probs. Tokens/s counts the same thing on both sides
  (every pair's chosen and rejected sequence, shared tokens twice); the positions each side actually ran through
  the policy per step are printed beside it;
* PPO value function: ours is a linear head on the policy's final residual (one network in every update); TRL's
  is a separate value model (a second GPT-2 body with a score head, which it trains too), so in each update TRL
  runs two bodies forward and backward where ours runs one, and one more body forward in each rollout. This is
  how each trainer is built, not a setting, so the PPO ratio compares the two designs as shipped;
* PPO sampling: ours generates prompts grouped by token length (no padding, one ``generate`` call per length,
  then one forward for the old log-probs and values); TRL left-pads the batch, generates it at once and takes the
  old log-probs from the generation logits (then one value-model forward). TRL's batch stops when every row has
  emitted EOS, ours per length group. The reward is read from text re-encoded by ours, from token ids by TRL.

    python bench/alignment.py                 # about 5 minutes on one thread
    python bench/alignment.py --quick         # about 1 minute

Needs TRL with its PPO trainer (``pip install -e ".[bench]"``). Prints the versions and a table (method, ours
tokens/s, TRL tokens/s, ratio ours/TRL); writes everything to OUT/bench.json.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from unittest import mock

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
import transformers

import training.dpo as our_dpo
import training.ppo as our_ppo
from training.common import Batch, MetricLog, last_completion_index
from training.reward import RewardModel, score
from workbench.io import write_json
from workbench.models.loader import load_hf_dir
from workbench.models.tokenizer import build_char_tokenizer
from workbench.tasks.preferences import hint_preferences

SEED = 0
INSTALL_HINT = 'pip install -e ".[bench]"'
ARCH = {"n_layer": 2, "n_embd": 128, "n_head": 4, "n_inner": 512, "n_positions": 128}
LR, BETA, KL_COEF = 1e-5, 0.1, 0.05


def import_trl():
    """TRL's DPO and PPO trainers, or exit 2 with the install command."""
    try:
        import trl
    except ImportError:
        print(f"bench/alignment.py compares against TRL, which is not installed: {INSTALL_HINT}", file=sys.stderr)
        sys.exit(2)
    try:
        from trl import DPOConfig, DPOTrainer
    except ImportError as e:
        print(f"trl {trl.__version__} has no DPOTrainer ({e}); {INSTALL_HINT} installs the supported version",
              file=sys.stderr)
        sys.exit(2)
    try:  # PPO moved to trl.experimental.ppo in 0.26 and was removed in 1.13
        from trl.experimental.ppo import PPOConfig, PPOTrainer
    except ImportError:
        try:
            from trl import PPOConfig, PPOTrainer
        except ImportError:
            PPOConfig = PPOTrainer = None
    return trl, DPOConfig, DPOTrainer, PPOConfig, PPOTrainer


# ---- the model --------------------------------------------------------------------------------------------------


def build_model_dir(directory: Path) -> None:
    """A seeded random ``GPT2LMHeadModel`` and the organisms' character tokenizer, saved to ``directory``."""
    tok = build_char_tokenizer(model_max_length=ARCH["n_positions"])
    cfg = transformers.GPT2Config(
        vocab_size=len(tok), n_ctx=ARCH["n_positions"], resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        summary_first_dropout=0.0, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, **ARCH)
    torch.manual_seed(SEED)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(str(directory))
    tok.save_pretrained(str(directory))


def hf_causal_lm(directory: Path):
    return transformers.AutoModelForCausalLM.from_pretrained(str(directory), local_files_only=True,
                                                             torch_dtype=torch.float32)


def hf_scorer(directory: Path):
    """The GPT-2 body with a (seeded) score head: TRL's reward and value models."""
    torch.manual_seed(SEED + 1)
    with warnings.catch_warnings(), quiet_transformers():
        warnings.simplefilter("ignore")
        return transformers.AutoModelForSequenceClassification.from_pretrained(
            str(directory), num_labels=1, local_files_only=True, torch_dtype=torch.float32)


def check_same_function(directory: Path) -> float:
    """Largest |log-prob difference| between the HookedTransformer and the HF model on a few sequences."""
    ours, theirs = load_hf_dir(directory), hf_causal_lm(directory).eval()
    tokens = torch.randint(3, ours.cfg.d_vocab, (4, 40), generator=torch.Generator().manual_seed(SEED))
    with torch.no_grad():
        a = ours(tokens).log_softmax(-1)
        b = theirs(tokens).logits.log_softmax(-1)
    return float((a - b).abs().max())


@contextlib.contextmanager
def quiet_transformers():
    old = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(old)


# ---- timing -----------------------------------------------------------------------------------------------------


class Clock:
    """Timestamp and tokens of each step; ``rate(w)``: tokens per second over steps ``w ..`` (after warm-up)."""

    def __init__(self):
        self.times: list[float] = []
        self.tokens: list[int] = []  # per step
        self.forward_tokens: list[int] = []  # per step, where recorded: positions run through the policy, padding too
        self.threads: set[int] = set()

    def tick(self, tokens: int) -> None:
        self.times.append(time.perf_counter())
        self.tokens.append(int(tokens))
        self.threads.add(torch.get_num_threads())

    def result(self, warmup: int) -> dict:
        steps = len(self.times) - warmup
        seconds = self.times[-1] - self.times[warmup - 1]
        tokens = sum(self.tokens[warmup:])
        # (a dataloader may collate one batch ahead: its last, untrained batch is left out)
        forward = ({"forward_positions_per_step": round(sum(self.forward_tokens[warmup:len(self.times)]) / steps, 1)}
                   if len(self.forward_tokens) >= len(self.times) else {})
        return {"timed_steps": steps, "seconds": round(seconds, 4), "tokens": tokens,
                "tokens_per_step": round(tokens / steps, 1), "tokens_per_s": round(tokens / seconds, 1),
                **forward, "threads_seen": sorted(self.threads)}


def clocked_metric_log(clock: Clock, pending: list[int]):
    """Our trainers write one metrics line per step once the step is done: timestamp it there."""

    class TimedMetricLog(MetricLog):
        def write(self, step, metrics):
            super().write(step, metrics)
            clock.tick(pending.pop(0))

    return TimedMetricLog


def step_clock_callback(clock: Clock, counted: list[int]):
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            clock.tick(sum(counted))
            counted.clear()

    return StepClock()


def quiet_trainer(trainer) -> None:
    """No progress bar and no printed logs."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)


def common_hf_args(tmp: Path) -> dict:
    """TrainingArguments both TRL trainers share: float32 on CPU, constant lr, no logging, saving or evaluation."""
    return {"output_dir": str(tmp), "learning_rate": LR, "lr_scheduler_type": "constant", "warmup_steps": 0,
            "weight_decay": 0.0, "optim": "adamw_torch", "bf16": False, "fp16": False,
            "gradient_checkpointing": False, "report_to": "none", "save_strategy": "no", "eval_strategy": "no",
            "logging_strategy": "no", "disable_tqdm": True, "use_cpu": True, "seed": SEED, "data_seed": SEED,
            "dataloader_num_workers": 0, "torch_empty_cache_steps": None}


# ---- DPO ----------------------------------------------------------------------------------------------------------


def dpo_ours(model_dir: Path, rows: list[dict], args, tmp: Path) -> dict:
    policy = load_hf_dir(model_dir)
    cfg = our_dpo.DPOConfig(beta=BETA, lr=LR, steps=args.warmup + args.steps, batch_size=args.dpo_batch, seed=SEED,
                            checkpoint_every=10**9, max_grad_norm=1.0, num_threads=args.threads)
    clock, pending = Clock(), []
    pair_batch = our_dpo.pair_batch

    def counting_pair_batch(pairs, packed, idx, n_ctx):
        batch = pair_batch(pairs, packed, idx, n_ctx)
        if isinstance(batch, Batch):  # chosen and rejected rows
            pending.append(int((last_completion_index(batch) + 1).sum()))  # prompt + completion + EOS, per sequence
            clock.forward_tokens.append(batch.tokens[:, :-1].numel())
        else:  # packed rows: the same count of the pairs' sequences, shared tokens counted in both
            pending.append(int(batch.lengths.sum()))
            clock.forward_tokens.append(batch.tokens.numel())
        return batch

    torch.manual_seed(SEED)
    with mock.patch.object(our_dpo, "pair_batch", counting_pair_batch), \
            mock.patch.object(our_dpo, "MetricLog", clocked_metric_log(clock, pending)):
        our_dpo.train_dpo(policy, None, rows, cfg, tmp / "ours-dpo", resume=False, progress=False)
    return clock.result(args.warmup)


def dpo_trl(trl_api, model_dir: Path, rows: list[dict], args, tmp: Path) -> dict:
    from datasets import Dataset

    _, DPOConfig, DPOTrainer, _, _ = trl_api
    tok = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    cfg = DPOConfig(**common_hf_args(tmp / "trl-dpo"), per_device_train_batch_size=args.dpo_batch,
                    gradient_accumulation_steps=1, max_steps=args.warmup + args.steps, beta=BETA,
                    loss_type=["sigmoid"], max_grad_norm=1.0, max_length=None, precompute_ref_log_probs=False)
    data = Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows])
    torch.manual_seed(SEED)
    with quiet_transformers(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = DPOTrainer(model=hf_causal_lm(model_dir), ref_model=hf_causal_lm(model_dir), args=cfg,
                             train_dataset=data, processing_class=tok)
    quiet_trainer(trainer)
    clock, counted = Clock(), []
    collate = trainer.data_collator

    def counting_collate(examples):
        batch = collate(examples)
        counted.append(int(batch["attention_mask"].sum()))  # prompt + completion + EOS, chosen and rejected
        clock.forward_tokens.append(batch["input_ids"].numel())  # one concatenated forward, padding included
        return batch

    trainer.data_collator = counting_collate
    trainer.add_callback(step_clock_callback(clock, counted))
    torch.set_num_threads(args.threads)
    with quiet_transformers(), contextlib.redirect_stdout(io.StringIO()):
        trainer.train()
    return clock.result(args.warmup)


# ---- PPO ----------------------------------------------------------------------------------------------------------


def ppo_ours(model_dir: Path, prompts: list[str], args, tmp: Path) -> dict:
    policy = load_hf_dir(model_dir)
    rm = RewardModel(load_hf_dir(model_dir)).eval().requires_grad_(False)
    torch.nn.init.normal_(rm.head.weight, std=0.02, generator=torch.Generator().manual_seed(SEED + 1))

    def reward_fn(p, c):
        return score(rm, p, c)

    cfg = our_ppo.PPOConfig(lr=LR, steps=args.warmup + args.ppo_steps, batch_size=args.ppo_batch,
                            ppo_epochs=args.ppo_epochs, minibatch_size=args.ppo_minibatch, gamma=1.0, lam=0.95,
                            cliprange=0.2, cliprange_value=0.2, vf_coef=0.1, kl_coef=KL_COEF,
                            missing_eos_penalty=1.0, max_new_tokens=args.response_length, temperature=1.0,
                            seed=SEED, checkpoint_every=10**9, num_threads=args.threads)
    clock, pending = Clock(), []
    sample = our_ppo.sample

    def counting_sample(model, prompts_, max_new_tokens, temperature):
        batch, ended = sample(model, prompts_, max_new_tokens, temperature)
        pending.append(int((last_completion_index(batch) + 1).sum()))  # prompt + completion (with its EOS)
        return batch, ended

    torch.manual_seed(SEED)
    with mock.patch.object(our_ppo, "sample", counting_sample), \
            mock.patch.object(our_ppo, "MetricLog", clocked_metric_log(clock, pending)):
        our_ppo.train_ppo(policy, None, reward_fn, prompts, cfg, tmp / "ours-ppo", resume=False, progress=False)
    return clock.result(args.warmup)


def ppo_trl(trl_api, model_dir: Path, prompts: list[str], args, tmp: Path) -> dict:
    from datasets import Dataset

    _, _, _, PPOConfig, PPOTrainer = trl_api
    tok = transformers.AutoTokenizer.from_pretrained(str(model_dir), padding_side="left")  # queries: left-padded
    iterations = args.warmup + args.ppo_steps
    cfg = PPOConfig(**common_hf_args(tmp / "trl-ppo"), per_device_train_batch_size=args.ppo_batch,
                    gradient_accumulation_steps=1, num_mini_batches=args.ppo_batch // args.ppo_minibatch,
                    num_ppo_epochs=args.ppo_epochs, total_episodes=args.ppo_batch * iterations,
                    local_rollout_forward_batch_size=args.ppo_batch, response_length=args.response_length,
                    temperature=1.0, stop_token="eos", missing_eos_penalty=1.0, kl_coef=KL_COEF, kl_estimator="k1",
                    cliprange=0.2, cliprange_value=0.2, vf_coef=0.1, gamma=1.0, lam=0.95, whiten_rewards=False,
                    num_sample_generations=0)
    data = Dataset.from_dict({"input_ids": [tok(p)["input_ids"] for p in prompts]})  # [BOS] + prompt, as ours
    reward_model = hf_scorer(model_dir)
    counted: list[int] = []

    def count_tokens(module, a, kw):  # the reward model reads prompt + completion truncated after its EOS
        counted.append(int(kw["attention_mask"].sum()))

    reward_model.transformer.register_forward_pre_hook(count_tokens, with_kwargs=True)
    torch.manual_seed(SEED)
    with quiet_transformers(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = PPOTrainer(args=cfg, processing_class=tok, model=hf_causal_lm(model_dir),
                             ref_model=hf_causal_lm(model_dir), reward_model=reward_model, train_dataset=data,
                             value_model=hf_scorer(model_dir))
    quiet_trainer(trainer)
    clock = Clock()
    trainer.add_callback(step_clock_callback(clock, counted))
    torch.set_num_threads(args.threads)
    with quiet_transformers(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        trainer.train()
    return clock.result(args.warmup)


# ---- main ---------------------------------------------------------------------------------------------------------

ASYMMETRIES = [
    ("model code: TransformerLens HookedTransformer (LayerNorm folded, writing weights centred, hook points) vs "
     "transformers GPT2LMHeadModel (sdpa attention); same weights and log-probs"),
    "DPO: ours draws each step's pairs from (seed, step), TRL shuffles a dataloader; tokens are counted per side",
    "DPO: ours runs with deterministic kernels and writes one metrics line per step; TRL logging/saving/eval off",
    ("DPO: ours runs each pair as one packed row (shared prompt and completion start once, the two completions "
     "after it under an attention mask); TRL one padded row per sequence. Tokens/s counts every pair's chosen "
     "and rejected tokens on both sides; forward_positions_per_step is what each side ran"),
    ("PPO: ours has a value head on the policy's residual (one body per update); TRL trains a separate value model "
     "(two bodies forward and backward per update, one more body forward per rollout)"),
    ("PPO: ours samples prompts grouped by token length (no padding) then runs one forward for old log-probs and "
     "values; TRL left-pads, generates the whole batch and reuses the generation logits"),
    ("PPO: rewards from our RewardModel on re-encoded text vs TRL's AutoModelForSequenceClassification on token "
     "ids (same body, different random score heads)"),
]


def median(runs: list[dict], key: str = "tokens_per_s") -> float:
    return round(statistics.median(r[key] for r in runs), 1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="torch threads for both sides")
    ap.add_argument("--repeats", type=int, default=5, help="alternating rounds (ours, TRL) per method")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps (iterations) at the start of every arm")
    ap.add_argument("--steps", type=int, default=40, help="timed DPO steps per arm")
    ap.add_argument("--dpo-batch", type=int, default=16, help="preference pairs per DPO step")
    ap.add_argument("--ppo-steps", type=int, default=5, help="timed PPO iterations per arm")
    ap.add_argument("--ppo-batch", type=int, default=64, help="rollouts per PPO iteration")
    ap.add_argument("--ppo-minibatch", type=int, default=16, help="sequences per PPO gradient step")
    ap.add_argument("--ppo-epochs", type=int, default=4)
    ap.add_argument("--response-length", type=int, default=16, help="tokens sampled per PPO completion")
    ap.add_argument("--pairs", type=int, default=1024, help="preference pairs (their prompts are PPO's prompts)")
    ap.add_argument("--methods", default="dpo,ppo", help="comma-separated subset of dpo,ppo")
    ap.add_argument("--quick", action="store_true", help="a short run: 2 rounds, fewer steps")
    ap.add_argument("--out", type=Path, default=Path("runs/bench-alignment"))
    args = ap.parse_args()
    if args.quick:
        args.repeats, args.steps, args.ppo_steps = 2, 10, 2
    if args.warmup < 1:
        ap.error("--warmup must be at least 1 (the timing starts at the end of a warm-up step)")
    if args.ppo_batch % args.ppo_minibatch:
        ap.error("--ppo-batch must be a multiple of --ppo-minibatch (TRL splits a batch into equal minibatches)")
    methods = [m for m in args.methods.split(",") if m]
    trl_api = import_trl()
    trl = trl_api[0]

    logging.getLogger("training").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    try:
        import datasets

        datasets.disable_progress_bars()
    except ImportError:
        pass
    versions = {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__}
    print("versions:", "  ".join(f"{k} {v}" for k, v in versions.items()), f"  threads {args.threads}")
    rows = hint_preferences(args.pairs, seed=SEED)
    prompts = [r["prompt"] for r in rows]
    results: dict[str, dict] = {}
    ppo_unavailable = None
    with tempfile.TemporaryDirectory() as tmp_str:
        tmp = Path(tmp_str)
        build_model_dir(tmp / "model")
        max_diff = check_same_function(tmp / "model")
        if max_diff > 1e-4:
            raise SystemExit(f"the HookedTransformer and the HF model disagree (max |log-prob diff| {max_diff:.2e})")
        arms = []
        if "dpo" in methods:
            arms.append(("DPO step", lambda t: dpo_ours(tmp / "model", rows, args, t),
                         lambda t: dpo_trl(trl_api, tmp / "model", rows, args, t)))
        if "ppo" in methods:
            if trl_api[4] is None:
                ppo_unavailable = (f"trl {trl.__version__} has no PPO trainer (trl.experimental.ppo.PPOTrainer, which "
                                   f"trl 1.13 removed); {INSTALL_HINT} installs a version that has it")
                arms.append(("PPO iteration", lambda t: ppo_ours(tmp / "model", prompts, args, t), None))
            else:
                arms.append(("PPO iteration", lambda t: ppo_ours(tmp / "model", prompts, args, t),
                             lambda t: ppo_trl(trl_api, tmp / "model", prompts, args, t)))
        for name, ours, theirs in arms:
            runs = {"ours": [], "trl": []}
            for r in range(args.repeats):
                with tempfile.TemporaryDirectory(dir=tmp) as t:
                    runs["ours"].append(ours(Path(t)))
                if theirs is not None:
                    with tempfile.TemporaryDirectory(dir=tmp) as t:
                        runs["trl"].append(theirs(Path(t)))
            results[name] = runs

    table = []
    for name, runs in results.items():
        a = median(runs["ours"])
        b = median(runs["trl"]) if runs["trl"] else None
        rounds = [x["tokens_per_s"] / y["tokens_per_s"] for x, y in zip(runs["ours"], runs["trl"])]
        table.append({"method": name, "ours_tokens_per_s": a, "trl_tokens_per_s": b,
                      "ratio_ours_over_trl": round(a / b, 2) if b else None,
                      "ratio_per_round": [round(x, 2) for x in rounds],
                      "ratio_of_best": (round(max(x["tokens_per_s"] for x in runs["ours"])
                                              / max(y["tokens_per_s"] for y in runs["trl"]), 2) if b else None),
                      "ours_tokens_per_step": median(runs["ours"], "tokens_per_step"),
                      "trl_tokens_per_step": median(runs["trl"], "tokens_per_step") if b else None,
                      **({"ours_forward_positions_per_step": median(runs["ours"], "forward_positions_per_step"),
                          "trl_forward_positions_per_step": median(runs["trl"], "forward_positions_per_step")}
                         if b and all("forward_positions_per_step" in x for x in runs["ours"] + runs["trl"])
                         else {})})
    baselines = {"DPO step": f"trl {trl.__version__} DPOTrainer",
                 "PPO iteration": f"trl {trl.__version__} trl.experimental.ppo.PPOTrainer"}
    seen = {side: sorted({n for r in results.values() for x in r[side] for n in x["threads_seen"]})
            for side in ("ours", "trl")}
    print(f"\nbaseline: {'; '.join(baselines[t['method']] for t in table)}; torch threads {args.threads} for both "
          f"sides (seen: ours {seen['ours']}, TRL {seen['trl']})")
    print(f"{'method':16}{'ours tok/s':>12}{'TRL tok/s':>12}{'ours/TRL':>10}{'per round':>13}{'best/best':>11}"
          f"{'ours tok/step':>15}{'TRL tok/step':>14}")
    for t in table:
        trl_s = f"{t['trl_tokens_per_s']:>12.0f}" if t["trl_tokens_per_s"] else f"{'n/a':>12}"
        ratio = f"{t['ratio_ours_over_trl']:>10.2f}" if t["ratio_ours_over_trl"] else f"{'n/a':>10}"
        trl_step = f"{t['trl_tokens_per_step']:>14.0f}" if t["trl_tokens_per_step"] else f"{'n/a':>14}"
        spread = (f"{min(t['ratio_per_round']):.2f}-{max(t['ratio_per_round']):.2f}" if t["ratio_per_round"]
                  else "n/a")
        best = f"{t['ratio_of_best']:>11.2f}" if t["ratio_of_best"] else f"{'n/a':>11}"
        print(f"{t['method']:16}{t['ours_tokens_per_s']:>12.0f}{trl_s}{ratio}{spread:>13}{best}"
              f"{t['ours_tokens_per_step']:>15.0f}{trl_step}")
    what = {"dpo": f"DPO {args.steps} timed steps of {args.dpo_batch} pairs",
            "ppo": f"PPO {args.ppo_steps} timed iterations of {args.ppo_batch} rollouts"}
    print(f"(tokens/s: medians of {args.repeats} alternating rounds; per round: the range of ours/TRL within a "
          "round; best/best: fastest round of ours over fastest of TRL; "
          + ", ".join(what[m] for m in methods if m in what) + f"; {args.warmup} warm-up steps before each)")
    for t in table:
        if "ours_forward_positions_per_step" in t:
            print(f"{t['method']}: positions run through the policy per step (padding included): ours "
                  f"{t['ours_forward_positions_per_step']:.0f}, TRL {t['trl_forward_positions_per_step']:.0f} (ours "
                  "runs each pair's shared prompt and common completion start once; tok/s counts the pairs' chosen "
                  "and rejected tokens on both sides)")
    if ppo_unavailable:
        print("PPO against TRL not measured:", ppo_unavailable)
    print("PPO note: TRL trains a separate value model (a second GPT-2 body); ours a value head on the policy.")
    result = {
        "versions": versions, "threads": args.threads, "seed": SEED, "device": "cpu", "dtype": "float32",
        "model": {"type": "GPT2LMHeadModel, random weights (seed 0)", "vocab": "build_char_tokenizer()", **ARCH},
        "logprob_max_abs_diff_ours_vs_hf": max_diff,
        "data": f"hint_preferences({args.pairs}, seed={SEED})",
        "settings": {k: getattr(args, k) for k in ("repeats", "warmup", "steps", "dpo_batch", "ppo_steps",
                                                   "ppo_batch", "ppo_minibatch", "ppo_epochs", "response_length",
                                                   "quick")},
        "table": table, "runs": results, "asymmetries": ASYMMETRIES, "ppo_trl_unavailable": ppo_unavailable,
    }
    write_json(args.out / "bench.json", result)
    print(f"wrote {args.out / 'bench.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
