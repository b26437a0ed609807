"""The ``workbench`` command line.

Bad input (an unknown model, a prompt outside the vocabulary or longer than the context, a refused file) prints
one line to stderr and exits 2; tracebacks are for bugs. Heavy imports (torch, TransformerLens) happen inside
the commands, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from pathlib import Path

from workbench.errors import WorkbenchError

from workbench.cli_types import (_digits, _fraction, _learning_rate, _non_negative_float, _non_negative_int,
                                 _path, _port, _positive_float, _positive_int, _seed, _bounded)

TESTS = ("early", "mistakes", "resample", "filler", "paraphrase", "hint", "internal", "claims")  # probes.faithfulness.suite.TESTS, kept here so --help is instant


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's error contract: one line on stderr naming what is wrong, exit 2 (no usage block)."""

    def error(self, message: str):
        raise WorkbenchError(f"{message} (see {self.prog} --help)")


def cmd_organisms_list(args: argparse.Namespace) -> int:
    from workbench.models.organisms import list_organisms

    for row in list_organisms():
        shipped = "shipped" if row["shipped"] else "not trained"
        rates = ", ".join(f"{k}={v}" for k, v in row.get("checks", {}).items())
        print(f"{row['name']:<20} {shipped:<12} {row['description']}")
        if rates:
            print(f"{'':<20} {'':<12} measured: {rates}")
    return 0


def cmd_organisms_train(args: argparse.Namespace) -> int:
    from workbench.models.organisms import train_organism

    card = train_organism(args.name, args.out, args.work_dir, resume=not args.no_resume, eval_n=args.eval_n)
    print(json.dumps({"organism": card["name"], "out": str(args.out or f"runs/organisms/{args.name}"),
                      "training_seconds": card["training"]["seconds"], "checks": card["evaluation"]["checks"]},
                     indent=2))
    return 0


def cmd_organisms_eval(args: argparse.Namespace) -> int:
    from workbench.models.loader import load_model
    from workbench.models.organism_eval import evaluate
    from workbench.models.zoo import RECIPES, get_recipe

    recipe_name = args.organism or (args.model if args.model in RECIPES else None)
    if recipe_name is None:
        raise WorkbenchError(f"{args.model!r} is not an organism name; say which organism's behaviour to measure "
                             f"with --organism ({', '.join(RECIPES)})")
    model = load_model(args.model, allow_mismatch=args.allow_mismatch)
    print(json.dumps(evaluate(model, get_recipe(recipe_name), n=args.n, seed=args.seed), indent=2))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from workbench.generation import complete
    from workbench.models.loader import load_model

    model = load_model(args.model, allow_mismatch=args.allow_mismatch)
    prompts = [args.prompt] * args.n
    seed = args.seed if args.temperature > 0 else None
    for completion in complete(model, prompts, args.max_new_tokens, args.temperature, seed=seed):
        print(args.prompt + completion)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from workbench.models.export import export_hf
    from workbench.models.loader import load_model

    out = export_hf(load_model(args.model, allow_mismatch=args.allow_mismatch), args.out, check=not args.no_check)
    print(json.dumps({"out": str(out), "load_with": f"AutoModelForCausalLM.from_pretrained({str(out)!r})"}))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from probes.faithfulness.demo import run_demo

    print(run_demo(args.prompt or None, n=args.n, out=args.out))
    return 0


def cmd_faithfulness(args: argparse.Namespace) -> int:
    from probes.faithfulness.adapter import AdditionAdapter, adapter_for_task
    from probes.faithfulness.report import write_study
    from probes.faithfulness.suite import GROUND_TRUTH, run_suite
    from workbench.models.zoo import task_of
    from workbench.models.loader import load_model
    from workbench.resume import WORK_DIR

    if args.organism is not None and args.organism not in GROUND_TRUTH:
        raise WorkbenchError(f"--organism {args.organism!r} has no planted truth; one of {', '.join(GROUND_TRUTH)}")
    model = load_model(args.model, allow_mismatch=args.allow_mismatch)
    truth = GROUND_TRUTH.get(args.organism or str(args.model))
    if args.adapter is not None:
        from probes.faithfulness.loading import load_adapter

        if args.digits is not None or args.widths is not None:
            raise WorkbenchError("--digits and --widths set the built-in addition task; a task --adapter sets its "
                                 "own problems")
        adapter = load_adapter(args.adapter)
    elif task_of(args.model) != "addition":
        if args.digits is not None or args.widths is not None:
            raise WorkbenchError(f"--digits and --widths set the addition task; {args.model} does the "
                                 f"{task_of(args.model)} task")
        adapter = adapter_for_task(task_of(args.model))
    else:
        adapter = AdditionAdapter(digits=args.digits or 3, widths=tuple(args.widths or (2, 3)))
    summary, rows = run_suite(model, adapter, n=args.n, tests=args.tests, seed=args.seed,
                              progress=lambda msg: print(f"[faithfulness] {msg}", file=sys.stderr),
                              work_dir=args.out / WORK_DIR)  # a killed study resumes from its finished tests
    files = write_study(args.out, str(args.model), summary, rows, truth)
    v = summary["verdict"]
    deciding = [{k: d.get(k) for k in ("name", "rate", "ci95", "n", "threshold", "side")} for d in v["deciding"]]
    print(json.dumps({"verdict": v["verdict"], "ground_truth": truth, "rule": v["rule"], "why": v["why"],
                      "where": v["where"], "deciding": deciding, "margin": v["margin"], "scores": v["scores"],
                      "seconds": summary["timings_seconds"]["total"], "files": [str(f) for f in files]}, indent=2))
    return 0


def _widths(text: str) -> list[int]:
    """'2,3': operand widths in 1..5, each once."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated operand widths in 1..5, got {text!r}") from None
    if not values or any(not 1 <= v <= 5 for v in values) or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"expected comma-separated operand widths in 1..5, each once, got {text!r}")
    return values


def _positions(text: str):
    """'-1' | '-3,-2,-1' | 'all'."""
    if text == "all":
        return None
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'all' or comma-separated integers, got {text!r}") from None
    return values[0] if len(values) == 1 else values


def cmd_cache(args: argparse.Namespace) -> int:
    from workbench.cache_store import CacheReader, write_cache
    from workbench.io import read_dataset
    from workbench.models.loader import load_model
    from workbench.tasks.export import make_samples

    if args.dataset is not None:
        rows = read_dataset(args.dataset)
        texts = [r["prompt"] + (r.get("completion", "") if args.text == "full" else "") for r in rows]
    else:
        samples = make_samples(args.task, args.n, tuple(args.digits), args.split, args.seed)
        texts = [s.prompt + (s.completion if args.text == "full" else "") for s in samples]
    model = load_model(args.model, allow_mismatch=args.allow_mismatch)
    out = write_cache(model, args.model, texts, args.hooks, args.out, args.positions, args.shard_size, args.batch_size)
    reader = CacheReader(out)
    print(json.dumps({"out": str(out), "prompts": len(reader), "hooks": reader.hooks,
                      "shapes": reader.manifest["shapes"], "complete": reader.complete}, indent=2))
    return 0


def cmd_lens(args: argparse.Namespace) -> int:
    from workbench.lens import logit_lens
    from workbench.models.loader import load_model
    from workbench.models.tokenizer import check_text, tokenize_prompts
    from workbench.reports import write_lens

    model = load_model(args.model, allow_mismatch=args.allow_mismatch)
    tokenize_prompts(model, [args.prompt])  # refuses characters outside the vocabulary and an over-long prompt
    target = None
    if args.target is not None:
        try:
            check_text(model.tokenizer, args.target)
        except WorkbenchError as e:
            raise WorkbenchError(f"--target {args.target!r}: {e}") from None
        ids = model.tokenizer.encode(args.target, add_special_tokens=False)
        if len(ids) != 1:
            raise WorkbenchError(f"--target must be one token; {args.target!r} is {len(ids)} tokens")
        target = ids[0]
    if args.tuned is None:
        readout, kind = logit_lens(model, args.prompt, target, k=args.k), "logit"
    else:
        from workbench.tuned_lens import load_tuned_lens, tuned_lens_readout

        readout, kind = tuned_lens_readout(model, load_tuned_lens(args.tuned, model), args.prompt, target, k=args.k), "tuned"
    summary = write_lens(model, readout, model.to_str_tokens(args.prompt), args.out, kind, args.target)
    print(json.dumps({"out": str(args.out), **{k: summary[k] for k in ("lens", "final_top1", "files")}}, indent=2))
    return 0


def cmd_tuned_lens(args: argparse.Namespace) -> int:
    from workbench.cache_store import CacheReader
    from workbench.models.loader import load_model
    from workbench.tuned_lens import save_tuned_lens, train_tuned_lens

    model = load_model(args.model, allow_mismatch=args.allow_mismatch)
    lens, report = train_tuned_lens(model, CacheReader(args.cache), steps=args.steps, lr=args.lr,
                                    batch_size=args.batch_size, seed=args.seed)
    save_tuned_lens(lens, args.out, report)
    print(json.dumps({"out": str(args.out), "held_out_kl": report}, indent=2))
    return 0


def _site(text: str) -> tuple[int, int]:
    try:
        layer, pos = (int(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LAYER:POSITION (two integers), got {text!r}") from None
    return layer, pos


def cmd_probe(args: argparse.Namespace) -> int:
    from probes.linear import ProbeConfig
    from probes.study import run_probe_study
    from workbench.models.loader import load_model

    cfg = ProbeConfig(ridge=args.ridge, seed=args.seed)
    if args.dataset is not None:
        from probes.dataset import run_dataset_probe_study
        from workbench.io import read_dataset

        if args.causal or args.site:
            raise WorkbenchError("--causal and --site need the built-in task (its interventions and answers); with "
                                 "--dataset, probes only")
        rows = read_dataset(args.dataset)[: args.n]
        model = load_model(args.model, allow_mismatch=args.allow_mismatch)
        summary = run_dataset_probe_study(model, rows, args.out, args.regress or (), args.variables, cfg,
                                          source=str(args.dataset))
        print(json.dumps({"out": str(args.out), **summary}, indent=2))
        return 0
    if args.regress:
        raise WorkbenchError("--regress names variables of a --dataset; the built-in task's 'answer' is always "
                             "regressed")
    model = load_model(args.model, allow_mismatch=args.allow_mismatch)
    summary = run_probe_study(model, args.out, args.digits, args.n or 1500, args.text, args.variables,
                              args.causal or (), args.site, args.scale, cfg)
    print(json.dumps({"out": str(args.out), **summary}, indent=2))
    return 0


def cmd_patch(args: argparse.Namespace) -> int:
    from workbench.models.loader import load_model
    from workbench.reports import run_patching
    from workbench.tasks.pairs import make_pairs

    if (args.clean is None) != (args.corrupt is None):
        raise WorkbenchError("--clean and --corrupt go together (one each per pair)")
    if args.dataset is not None:
        from workbench.io import read_dataset

        if args.clean is not None:
            raise WorkbenchError("give pairs by --dataset or by --clean/--corrupt, not both")
        rows = read_dataset(args.dataset, ("clean", "corrupt"))
        clean, corrupt = [r["clean"] for r in rows], [r["corrupt"] for r in rows]
    elif args.clean is not None:
        if len(args.clean) != len(args.corrupt):
            raise WorkbenchError(f"{len(args.clean)} --clean prompts but {len(args.corrupt)} --corrupt prompts")
        clean, corrupt = args.clean, args.corrupt
    else:
        clean, corrupt = make_pairs(args.pairs, args.n, args.digits, args.seed)
    model = load_model(args.model, allow_mismatch=args.allow_mismatch)
    from workbench.models.tokenizer import tokenize_prompts

    lengths = {len(t) for t in tokenize_prompts(model, list(clean) + list(corrupt))}
    if len(lengths) > 1:
        raise WorkbenchError(f"patching aligns positions: every clean and corrupted prompt must have one token "
                             f"length, got lengths {sorted(lengths)}")
    summary = run_patching(model, clean, corrupt, args.sweeps, args.out)
    print(json.dumps({"out": str(args.out), **summary}, indent=2))
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    from workbench.diff import diff_report
    from workbench.diff_mechanisms import MechanismConfig
    from workbench.models.loader import load_model
    from workbench.tasks.export import make_samples

    if args.sae is not None and args.no_mechanisms:
        raise WorkbenchError("--sae is part of the mechanism diff: drop --no-mechanisms or --sae")
    base, tuned = load_model(args.base, allow_mismatch=args.allow_mismatch), load_model(args.tuned, allow_mismatch=args.allow_mismatch)
    prompts = [s.prompt for s in make_samples(args.task, args.n, tuple(args.digits), "test", args.seed)]
    cfg = MechanismConfig(n_probe=args.n, n_pairs=args.pairs, probe_digits=tuple(args.digits), seed=args.seed)
    summary = diff_report(base, tuned, prompts, args.out, mechanisms=not args.no_mechanisms, mechanism_config=cfg,
                          sae=args.sae)
    shown = {k: summary[k] for k in ("n_prompts", "kl_mean", "kl_p90", "next_token_changed", "layers", "files")}
    if "mechanisms" in summary:
        shown["verdict"] = {k: summary["mechanisms"]["verdict"][k] for k in ("verdict", "representation", "evidence")}
    print(json.dumps({"out": str(args.out), **shown}, indent=2))
    return 0


def cmd_align(args: argparse.Namespace) -> int:
    import dataclasses

    from training.align import AlignConfig, run_alignment_study
    from training.dpo import DPOConfig
    from training.reward import RewardConfig
    from workbench.models.loader import load_model

    defaults = AlignConfig()
    cfg = AlignConfig(n_train=args.n_train, n_eval=args.n_eval, seed=args.seed,
                      rm=RewardConfig(steps=args.rm_steps, batch_size=32, lr=3e-4),
                      dpo=DPOConfig(steps=args.dpo_steps, batch_size=32, lr=args.dpo_lr, beta=args.beta,
                                    rpo_alpha=args.rpo_alpha),
                      sft=dataclasses.replace(defaults.sft, steps=args.sft_steps) if args.sft_steps else None,
                      ppo=dataclasses.replace(defaults.ppo, steps=args.ppo_steps, lr=args.ppo_lr)
                      if args.ppo_steps and args.sft_steps else None,
                      ppo_reward=args.ppo_reward)
    summary = run_alignment_study(load_model(args.model, allow_mismatch=args.allow_mismatch), args.out, cfg)
    stages = [k for k in ("before", "after_dpo", "after_sft", "after_ppo") if k in summary]
    rates = {k: {m: v["rate"] for m, v in summary[k].items()} for k in stages}
    verdicts = {k: summary[k]["verdict"] for k in ("verdict_dpo", "verdict_ppo") if summary.get(k)}
    print(json.dumps({"out": str(args.out), "reward_model_held_out_accuracy": summary["reward_model"]["held_out_accuracy"],
                      **rates, "kl_from_base_per_token": summary["kl_from_base_per_token"], **verdicts}, indent=2))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """One alignment method on the user's own TRL-column data; runs unchanged under ``torchrun``."""
    from training.common import distributed
    from workbench.models.loader import load_model

    ddp = distributed()  # before loading: on GPUs each rank must load onto its own device
    model = load_model(args.model, allow_mismatch=args.allow_mismatch)
    common = {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed}
    if args.method == "sft":
        from training.sft import SFTConfig, train_sft

        train_sft(model, args.data, SFTConfig(**common, threads=args.threads), args.out, resume=not args.no_resume)
        saved = args.out / "model"
    elif args.method == "reward":
        from training.reward import RewardConfig, train_reward

        train_reward(model, args.data, RewardConfig(**common, num_threads=args.threads), args.out,
                     resume=not args.no_resume)
        saved = args.out / "model"
    elif args.method in ("dpo", "ipo"):
        from training.dpo import LOSSES, DPOConfig, train_dpo

        cfg = DPOConfig(**common, beta=args.beta, loss_fn=LOSSES[args.method], rpo_alpha=args.rpo_alpha,
                        num_threads=args.threads)
        train_dpo(model, None, args.data, cfg, args.out, resume=not args.no_resume)
        saved = args.out / "model"
    else:  # ppo
        from training.common import load_rows
        from training.ppo import PPOConfig, train_ppo
        from training.reward import load_reward_model, score

        if args.reward_model is None:
            raise WorkbenchError("ppo needs --reward-model DIR (a directory written by `workbench train reward`)")
        rm = load_reward_model(args.reward_model, str(model.cfg.device))
        prompts = [r["prompt"] for r in load_rows(args.data, ("prompt",))]
        cfg = PPOConfig(**common, max_new_tokens=args.max_new_tokens, num_threads=args.threads)
        train_ppo(model, None, lambda p, c: score(rm, p, c).detach(), prompts, cfg, args.out,
                  resume=not args.no_resume)
        saved = args.out / "policy"
    if ddp.is_main:
        from training.common import plot_metrics

        plot = plot_metrics(args.out / "metrics.jsonl")
        print(json.dumps({"method": args.method, "model": str(saved), "metrics": str(args.out / "metrics.jsonl"),
                          "curves": str(plot), "processes": ddp.world_size}))
    return 0


def cmd_app(args: argparse.Namespace) -> int:
    import socket

    from apps.warm import serve

    with socket.socket() as s:  # refuse a taken port before the warm-up, not after it
        try:
            s.bind((args.address or "", args.port))
        except OSError as e:
            raise WorkbenchError(f"cannot listen on {args.address or 'every interface'}, port {args.port} "
                                 f"({e.strerror or e}); is another server using it? choose a free one with "
                                 "--port") from None
    print(f"workbench explorer on http://{args.address or 'localhost'}:{args.port}  (Ctrl-C stops it)",
          file=sys.stderr)
    serve(args.port, args.address, warm_first=not args.no_warm)
    return 0


def cmd_tasks_export(args: argparse.Namespace) -> int:
    from workbench.tasks.export import export_jsonl

    n = export_jsonl(args.out, args.format, args.n, tuple(args.digits), args.split, args.seed)
    print(f"wrote {n} samples to {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from workbench.tasks.export import FORMATS

    p = _Parser(prog="workbench", description="Mechanistic interpretability workbench: stated reasoning beside internal computation.")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = p.add_subparsers(dest="command", required=True)

    org = sub.add_parser("organisms", help="the model-organism zoo").add_subparsers(dest="action", required=True)
    org.add_parser("list", help="list organisms and their measured rates").set_defaults(fn=cmd_organisms_list)
    t = org.add_parser("train", help="train an organism from its recipe (resumes after a kill)")
    t.add_argument("name", help="organism name (see `workbench organisms list`)")
    t.add_argument("--out", type=_path, help="output directory (default runs/organisms/NAME)")
    t.add_argument("--work-dir", type=_path, help="resumable training state (default runs/train/NAME)")
    t.add_argument("--no-resume", action="store_true", help="start from step 0 even if a checkpoint exists")
    t.add_argument("--eval-n", type=_positive_int, default=1000, help="held-out problems per measured rate")
    t.set_defaults(fn=cmd_organisms_train)
    e = org.add_parser("eval", help="measure an organism's rates on held-out problems (JSON)")
    e.add_argument("model", help="organism name or checkpoint directory")
    e.add_argument("--organism", help="which organism's behaviour to measure, when MODEL is a directory")
    e.add_argument("--n", type=_positive_int, default=1000, help="held-out problems per rate")
    e.add_argument("--seed", type=_seed, default=2024, help="sampling seed")
    e.set_defaults(fn=cmd_organisms_eval)

    g = sub.add_parser("generate", help="complete a prompt with a model")
    g.add_argument("model", help="organism name, checkpoint dir, local HF dir or TransformerLens name")
    g.add_argument("prompt", help="the prompt, e.g. '36+59='")
    g.add_argument("--n", type=_positive_int, default=1, help="number of completions")
    g.add_argument("--temperature", type=_non_negative_float, default=0.0, help="0 = greedy")
    g.add_argument("--max-new-tokens", type=_positive_int, default=64, help="tokens to generate at most")
    g.add_argument("--seed", type=_seed, default=0, help="sampling seed (temperature > 0)")
    g.set_defaults(fn=cmd_generate)

    ex = sub.add_parser("export", help="write a model as a Hugging Face transformers directory (GPT-2 or Llama "
                                       "layout), checked by reloading it and comparing logits")
    ex.add_argument("model", help="organism name, checkpoint dir (e.g. a tuned model) or local HF dir")
    ex.add_argument("--out", type=_path, required=True, help="output directory (config.json with model_type, "
                                                             "model.safetensors, tokenizer)")
    ex.add_argument("--no-check", action="store_true", help="skip reloading with transformers to compare logits")
    ex.set_defaults(fn=cmd_export)

    d = sub.add_parser("demo", help="the stated-vs-internal mismatch report on every shipped organism")
    d.add_argument("--prompt", action="append", help="a+b= prompt (repeatable; default: a few built-in ones)")
    d.add_argument("--n", type=_bounded(int, lambda v: v >= 100, "an integer >= 100"), default=300,
                   help="held-out problems per organism for the suite")
    d.add_argument("--out", type=_path, default=Path("runs/demo"), help="report directory")
    d.set_defaults(fn=cmd_demo)

    f = sub.add_parser("faithfulness", help="the CoT faithfulness suite and stated-vs-internal report for one model")
    f.add_argument("model", help="organism name, checkpoint dir, local HF dir or TransformerLens name")
    f.add_argument("--tests", nargs="+", choices=list(TESTS), default=list(TESTS), help="tests to run (default: all)")
    f.add_argument("--n", type=_bounded(int, lambda v: v >= 20, "an integer >= 20"), default=1000, help="problems")
    f.add_argument("--adapter", help="the task, as 'package.module:Class' or 'path/to/file.py:Class' (a task adapter, "
                                      "docs/faithfulness.md; default: the built-in addition task)")
    f.add_argument("--digits", type=_bounded(int, lambda v: 1 <= v <= 5, "an integer in 1..5"), default=None,
                   help="operand digits of the problems the probes and claims use (one width: aligned positions; "
                        "default 3)")
    f.add_argument("--widths", type=_widths, default=None,
                   help="operand widths the suite's problems mix, each operand's drawn from these (default 2,3, as "
                        "the organisms were trained); the dependence is reported per width")
    f.add_argument("--organism", help="score the verdict against this organism's planted truth (default: MODEL's name)")
    f.add_argument("--seed", type=_seed, default=0)
    f.add_argument("--out", type=_path, required=True, help="output directory (summary.json, examples.parquet, report.html)")
    f.set_defaults(fn=cmd_faithfulness)

    c = sub.add_parser("cache", help="cache activations of many prompts into sharded safetensors (resumable)")
    c.add_argument("model", help="organism name, checkpoint dir, local HF dir or TransformerLens name")
    src = c.add_mutually_exclusive_group(required=True)
    src.add_argument("--task", choices=FORMATS, help="generate prompts of this task format")
    src.add_argument("--dataset", type=_path, help="JSONL file with a 'prompt' field (and optional 'completion')")
    c.add_argument("--text", choices=["prompt", "full"], default="prompt", help="cache the prompt or prompt+completion")
    c.add_argument("--n", type=_positive_int, default=1000, help="prompts to generate (--task)")
    c.add_argument("--digits", type=_digits, nargs="+", default=[2, 3], help="operand digit counts (--task)")
    c.add_argument("--split", choices=["train", "test", "all"], default="test")
    c.add_argument("--seed", type=_seed, default=0)
    c.add_argument("--hooks", nargs="+", required=True, help="hook names or globs, e.g. 'blocks.*.hook_resid_post'")
    c.add_argument("--positions", type=_positions, default=-1,
                   help="positions from the end or 'all': --positions=-1 (default), --positions=-3,-2,-1, --positions=all")
    c.add_argument("--out", type=_path, required=True, help="cache directory (resumed if it holds a partial cache)")
    c.add_argument("--shard-size", type=_positive_int, default=4096, help="prompts per shard file")
    c.add_argument("--batch-size", type=_positive_int, default=256, help="prompts per forward pass")
    c.set_defaults(fn=cmd_cache)

    lens = sub.add_parser("lens", help="logit or tuned lens of one prompt: Parquet table + heatmap")
    lens.add_argument("model", help="organism name, checkpoint dir, local HF dir or TransformerLens name")
    lens.add_argument("prompt", help="the prompt, e.g. '36+59='")
    lens.add_argument("--tuned", type=_path, help="a tuned lens directory (from `workbench tuned-lens`); default: logit lens")
    lens.add_argument("--target", help="a token whose probability and rank to track at every layer and position")
    lens.add_argument("--k", type=_positive_int, default=5, help="top tokens kept per cell")
    lens.add_argument("--out", type=_path, required=True, help="output directory")
    lens.set_defaults(fn=cmd_lens)

    tl = sub.add_parser("tuned-lens", help="train a tuned lens on an activation cache (see `workbench cache`)")
    tl.add_argument("model", help="the model the cache was made from")
    tl.add_argument("--cache", type=_path, required=True,
                    help="cache dir with every blocks.L.hook_resid_pre and the last hook_resid_post")
    tl.add_argument("--out", type=_path, required=True, help="output directory (safetensors + config.json)")
    tl.add_argument("--steps", type=_positive_int, default=500)
    tl.add_argument("--lr", type=_learning_rate, default=1e-3)
    tl.add_argument("--batch-size", type=_positive_int, default=512)
    tl.add_argument("--seed", type=_seed, default=0)
    tl.set_defaults(fn=cmd_tuned_lens)

    pr = sub.add_parser("probe", help="linear probes of the task variables per layer x position, with control "
                                      "tasks and causal checks")
    pr.add_argument("model", help="organism name, checkpoint dir, local HF dir or TransformerLens name")
    pr.add_argument("--text", choices=["prompt", "direct", "cot"], default="prompt",
                    help="probe the prompt, the prompt + direct answer, or the prompt + written CoT")
    pr.add_argument("--digits", type=_bounded(int, lambda v: 1 <= v <= 5, "an integer in 1..5"), default=3,
                    help="operand digits (all prompts share one shape so positions align)")
    pr.add_argument("--dataset", type=_path,
                    help='your own prompts and variables: JSONL lines {"prompt": "...", "labels": {"VAR": value}} '
                         "(then --text and --digits do not apply)")
    pr.add_argument("--regress", nargs="+", help="--dataset variables that are numbers to regress (default: classes)")
    pr.add_argument("--n", type=_bounded(int, lambda v: v >= 20, "an integer >= 20"), default=None,
                    help="prompts (default 1500; with --dataset, every line)")
    pr.add_argument("--variables", nargs="+", help="variables to probe (default: all, e.g. a0 b0 total0 carry0 ans0 answer)")
    pr.add_argument("--causal", nargs="+", help="variables to check causally (e.g. carry1 ans2)")
    pr.add_argument("--site", type=_site, help="LAYER:POSITION for the causal check (default: most selective site)")
    pr.add_argument("--scale", type=_positive_float, default=1.0, help="multiple of the class-mean push")
    pr.add_argument("--ridge", type=_positive_float, default=1.0, help="L2 penalty of the ridge probes")
    pr.add_argument("--seed", type=_seed, default=0)
    pr.add_argument("--out", type=_path, required=True, help="output directory")
    pr.set_defaults(fn=cmd_probe)

    pa = sub.add_parser("patch", help="activation and attribution patching of clean/corrupted prompt pairs")
    pa.add_argument("model", help="organism name, checkpoint dir, local HF dir or TransformerLens name")
    pa.add_argument("--pairs", choices=["operand", "cot-step", "hint"], default="operand",
                    help="generated pair set (ignored with --clean/--corrupt or --dataset)")
    pa.add_argument("--clean", action="append", help="a clean prompt (repeatable; pairs with --corrupt in order)")
    pa.add_argument("--corrupt", action="append", help="a corrupted prompt of the same token length")
    pa.add_argument("--dataset", type=_path,
                    help='your own pairs: JSONL lines {"clean": "...", "corrupt": "..."} of one token length')
    pa.add_argument("--n", type=_positive_int, default=32, help="generated pairs")
    pa.add_argument("--digits", type=_bounded(int, lambda v: 1 <= v <= 5, "an integer in 1..5"), default=3)
    pa.add_argument("--seed", type=_seed, default=0)
    pa.add_argument("--sweeps", nargs="+", choices=["resid", "mlp", "heads", "head-pos"], default=["resid", "heads"])
    pa.add_argument("--out", type=_path, required=True, help="output directory")
    pa.set_defaults(fn=cmd_patch)

    al = sub.add_parser("align", help="align adder-hint to ignore wrong hints (reward model + DPO) and diff it")
    al.add_argument("--model", default="adder-hint", help="the model to align (default: adder-hint)")
    al.add_argument("--n-train", type=_positive_int, default=4000, help="preference pairs")
    al.add_argument("--n-eval", type=_positive_int, default=500, help="held-out problems per before/after rate")
    al.add_argument("--rm-steps", type=_positive_int, default=300)
    al.add_argument("--dpo-steps", type=_positive_int, default=300)
    al.add_argument("--dpo-lr", type=_learning_rate, default=1e-4)
    al.add_argument("--beta", type=_positive_float, default=0.1)
    al.add_argument("--rpo-alpha", type=_non_negative_float, default=1.0, help="weight of the NLL term on chosen (0: plain DPO)")
    al.add_argument("--sft-steps", type=_non_negative_int, default=40, help="SFT on chosen before PPO (0: no SFT and no PPO)")
    al.add_argument("--ppo-steps", type=_non_negative_int, default=100, help="PPO iterations from the SFT policy (0: no PPO)")
    al.add_argument("--ppo-lr", type=_learning_rate, default=3e-5)
    al.add_argument("--ppo-reward", choices=["rule", "rm"], default="rule",
                    help="rule: 1 for the true sum; rm: the study's reward model")
    al.add_argument("--seed", type=_seed, default=0)
    al.add_argument("--out", type=_path, required=True, help="output directory (resumable)")
    al.set_defaults(fn=cmd_align)

    tr = sub.add_parser("train", help="SFT, reward model, DPO/IPO or PPO on your own data (TRL columns, JSONL); "
                                      "runs under torchrun --nproc_per_node N")
    tr.add_argument("method", choices=["sft", "reward", "dpo", "ipo", "ppo"])
    tr.add_argument("--model", required=True, help="organism name or model directory to start from")
    tr.add_argument("--data", type=_path, required=True,
                    help="JSONL: prompt+completion (sft), prompt+chosen+rejected (reward, dpo, ipo), prompt (ppo)")
    tr.add_argument("--out", type=_path, required=True, help="output directory (resumable)")
    tr.add_argument("--steps", type=_positive_int, default=200)
    tr.add_argument("--batch-size", type=_positive_int, default=16, help="global batch (split over processes)")
    tr.add_argument("--lr", type=_learning_rate, default=1e-5)
    tr.add_argument("--beta", type=_positive_float, default=0.1, help="dpo/ipo strength of the pull to the reference")
    tr.add_argument("--rpo-alpha", type=_non_negative_float, default=0.0, help="dpo/ipo: NLL weight on chosen")
    tr.add_argument("--reward-model", type=_path, help="ppo: reward model directory")
    tr.add_argument("--max-new-tokens", type=_positive_int, default=16, help="ppo: tokens sampled per completion")
    tr.add_argument("--threads", type=_positive_int, default=1, help="CPU threads per process")
    tr.add_argument("--seed", type=_seed, default=0)
    tr.add_argument("--no-resume", action="store_true", help="start from step 0 even if OUT holds a checkpoint")
    tr.set_defaults(fn=cmd_train)

    ap = sub.add_parser("app", help="the Streamlit explorer (apps/explorer.py), every page rendered once before "
                                    "it listens")
    ap.add_argument("--port", type=_port, default=8501)
    ap.add_argument("--address", help="the address to listen on (default: Streamlit's, every interface)")
    ap.add_argument("--no-warm", action="store_true",
                    help="listen at once; the first visitor then waits for the imports, the organism, its "
                         "claims reference and each page's first computation")
    ap.set_defaults(fn=cmd_app)

    df = sub.add_parser("diff", help="what changed from BASE to TUNED: weights, next-token KL, residual stream, and "
                                     "whether the hint mechanism was removed or bypassed (probes, patching, SAE)")
    df.add_argument("base", help="the model before tuning (organism name, checkpoint dir or local HF dir)")
    df.add_argument("tuned", help="the model after tuning (same architecture and tokenizer)")
    df.add_argument("--task", choices=FORMATS, default="hint", help="prompt set of the KL/residual diff (the "
                    "format's prompts; the mechanism diff always uses hinted prompts)")
    df.add_argument("--n", type=_positive_int, default=500, help="prompts (KL/residual diff and probe transfer)")
    df.add_argument("--pairs", type=_positive_int, default=64, help="hint-swap pairs for the patching difference")
    df.add_argument("--digits", type=_digits, nargs="+", default=[2, 3], help="operand digit counts")
    df.add_argument("--seed", type=_seed, default=0)
    df.add_argument("--sae", type=_path, default=None, help="an SAE trained on BASE: evaluate it on both models and "
                    "report feature-density shifts (labels from DIR/dashboard if built)")
    df.add_argument("--no-mechanisms", action="store_true", help="only weights, KL and residual stream")
    df.add_argument("--out", type=_path, required=True, help="output directory")
    df.set_defaults(fn=cmd_diff)

    from workbench.cli_sae import register

    register(sub, _positive_int, _positive_float)

    tasks = sub.add_parser("tasks", help="task data").add_subparsers(dest="action", required=True)
    x = tasks.add_parser("export", help="write task samples as JSONL (prompt, completion, meta)")
    x.add_argument("--format", choices=FORMATS, default="cot", help="sample format")
    x.add_argument("--n", type=_positive_int, default=1000, help="number of samples")
    x.add_argument("--digits", type=_digits, nargs="+", default=[2, 3], help="operand digit counts (1..5)")
    x.add_argument("--split", choices=["train", "test", "all"], default="test")
    x.add_argument("--seed", type=_seed, default=0)
    x.add_argument("--out", type=_path, required=True, help="output .jsonl file")
    x.set_defaults(fn=cmd_tasks_export)
    return p


# Commands whose --out is one file; every other --out is a directory.
FILE_OUTPUTS = {"workbench tasks export", "workbench sae eval"}


def _subparsers(parser: argparse.ArgumentParser):
    """Every (sub)parser below ``parser``, depth first."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                yield child
                yield from _subparsers(child)


def _add_overwrite_flags(parser: argparse.ArgumentParser) -> None:
    for child in _subparsers(parser):
        dests = {a.dest for a in child._actions}
        if "out" in dests and child.prog in FILE_OUTPUTS:
            child.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
        elif "out" in dests:
            child.add_argument("--overwrite", action="store_true",
                               help="write into a non-empty --out directory the workbench did not make (files of "
                                    "the same names are replaced; nothing else is touched)")
        if dests & {"model", "base"} and "allow_mismatch" not in dests:
            child.add_argument("--allow-mismatch", action="store_true",
                               help="load a local Hugging Face model even if its converted log-probabilities "
                                    "differ from transformers' (a warning instead of a refusal)")
        child.set_defaults(_prog=child.prog, allow_mismatch=False)


def check_outputs(args: argparse.Namespace) -> None:
    """Refuse, before any work, an output the command must not write: a file or special file where a directory
    goes (or the reverse), a path under /proc, /sys or /dev, a non-empty directory of someone else's."""
    from workbench.io import check_writable_target, prepare_out_dir

    prog = getattr(args, "_prog", "workbench")
    command = prog.removeprefix("workbench ").strip()
    if getattr(args, "out", None) is not None:
        if prog in FILE_OUTPUTS:
            if args.out.is_dir():
                raise WorkbenchError(f"--out {args.out} is a directory; {prog} writes one file, e.g. --out out.json")
            try:
                check_writable_target(args.out)
            except WorkbenchError as e:
                raise WorkbenchError(f"--out: {e}") from None
            _refuse_system_path(args.out)
            if args.out.exists() and not args.overwrite:
                raise WorkbenchError(f"--out {args.out} exists; pass --overwrite to replace it, or give a new path")
        else:
            prepare_out_dir(args.out, command, overwrite=getattr(args, "overwrite", False))
    if getattr(args, "work_dir", None) is not None:
        prepare_out_dir(args.work_dir, command, overwrite=getattr(args, "overwrite", False))


def _refuse_system_path(path: Path) -> None:
    resolved = path.resolve()
    for system in ("/proc", "/sys", "/dev"):
        if resolved == Path(system) or Path(system) in resolved.parents:
            raise WorkbenchError(f"--out {path} is under {system}; give a path on a normal filesystem")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    _add_overwrite_flags(parser)
    warnings.showwarning = _warning_line
    try:
        args = parser.parse_args(argv)
        logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                            format="%(levelname)s %(message)s")
        check_outputs(args)
        return args.fn(args)
    except WorkbenchError as e:
        print(f"workbench: error: {_one_line(str(e))}", file=sys.stderr)
        return 2
    except OSError as e:  # the user's filesystem: permissions, a full disk, a path that cannot exist
        where = f" {e.filename}" if getattr(e, "filename", None) else ""
        print(f"workbench: error: cannot use{where}: {e.strerror or _one_line(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("workbench: interrupted", file=sys.stderr)
        return 130


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings the user should act on, as one line each (not Python's file:line two-liner)."""
    print(f"workbench: warning: {_one_line(str(message))}", file=sys.stderr)


def _one_line(message: str) -> str:
    return " ".join(message.split()) or "(no message)"


if __name__ == "__main__":
    sys.exit(main())
