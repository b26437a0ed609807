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
from pathlib import Path

from workbench.errors import WorkbenchError


def _bounded(cast, ok, what: str):
    """An argparse type: ``cast`` the text, then require ``ok(value)``; the message says what is allowed."""

    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value

    return parse


_positive_int = _bounded(int, lambda v: v >= 1, "a positive integer")
_non_negative_float = _bounded(float, lambda v: v >= 0, "a number >= 0")


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
    model = load_model(args.model)
    print(json.dumps(evaluate(model, get_recipe(recipe_name), n=args.n, seed=args.seed), indent=2))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from workbench.generation import complete
    from workbench.models.loader import load_model

    model = load_model(args.model)
    prompts = [args.prompt] * args.n
    seed = args.seed if args.temperature > 0 else None
    for completion in complete(model, prompts, args.max_new_tokens, args.temperature, seed=seed):
        print(args.prompt + completion)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from workbench.demo import run_demo

    print(run_demo(args.prompt or None))
    return 0


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
    from workbench.io import read_jsonl
    from workbench.models.loader import load_model
    from workbench.tasks.export import make_samples

    if args.dataset is not None:
        if not args.dataset.is_file():
            raise WorkbenchError(f"no dataset file {args.dataset}")
        try:
            rows = read_jsonl(args.dataset)
        except ValueError as e:
            raise WorkbenchError(f"{args.dataset} is not JSONL: {e}") from None
        missing = [i for i, r in enumerate(rows) if not isinstance(r, dict) or not isinstance(r.get("prompt"), str)]
        if missing:
            raise WorkbenchError(f"{args.dataset}: rows {missing[:5]} are not objects with a string 'prompt' field")
        texts = [r["prompt"] + (r.get("completion", "") if args.text == "full" else "") for r in rows]
    else:
        samples = make_samples(args.task, args.n, tuple(args.digits), args.split, args.seed)
        texts = [s.prompt + (s.completion if args.text == "full" else "") for s in samples]
    model = load_model(args.model)
    out = write_cache(model, args.model, texts, args.hooks, args.out, args.positions, args.shard_size, args.batch_size)
    reader = CacheReader(out)
    print(json.dumps({"out": str(out), "prompts": len(reader), "hooks": reader.hooks,
                      "shapes": reader.manifest["shapes"], "complete": reader.complete}, indent=2))
    return 0


def cmd_tasks_export(args: argparse.Namespace) -> int:
    from workbench.tasks.export import export_jsonl

    n = export_jsonl(args.out, args.format, args.n, tuple(args.digits), args.split, args.seed)
    print(f"wrote {n} samples to {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from workbench.tasks.export import FORMATS

    p = argparse.ArgumentParser(prog="workbench", description="Mechanistic interpretability workbench: stated reasoning beside internal computation.")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = p.add_subparsers(dest="command", required=True)

    org = sub.add_parser("organisms", help="the model-organism zoo").add_subparsers(dest="action", required=True)
    org.add_parser("list", help="list organisms and their measured rates").set_defaults(fn=cmd_organisms_list)
    t = org.add_parser("train", help="train an organism from its recipe (resumes after a kill)")
    t.add_argument("name", help="organism name (see `workbench organisms list`)")
    t.add_argument("--out", type=Path, help="output directory (default runs/organisms/NAME)")
    t.add_argument("--work-dir", type=Path, help="resumable training state (default runs/train/NAME)")
    t.add_argument("--no-resume", action="store_true", help="start from step 0 even if a checkpoint exists")
    t.add_argument("--eval-n", type=_positive_int, default=1000, help="held-out problems per measured rate")
    t.set_defaults(fn=cmd_organisms_train)
    e = org.add_parser("eval", help="measure an organism's rates on held-out problems (JSON)")
    e.add_argument("model", help="organism name or checkpoint directory")
    e.add_argument("--organism", help="which organism's behaviour to measure, when MODEL is a directory")
    e.add_argument("--n", type=_positive_int, default=1000, help="held-out problems per rate")
    e.add_argument("--seed", type=int, default=2024, help="sampling seed")
    e.set_defaults(fn=cmd_organisms_eval)

    g = sub.add_parser("generate", help="complete a prompt with a model")
    g.add_argument("model", help="organism name, checkpoint dir, local HF dir or TransformerLens name")
    g.add_argument("prompt", help="the prompt, e.g. '36+59='")
    g.add_argument("--n", type=_positive_int, default=1, help="number of completions")
    g.add_argument("--temperature", type=_non_negative_float, default=0.0, help="0 = greedy")
    g.add_argument("--max-new-tokens", type=_positive_int, default=64, help="tokens to generate at most")
    g.add_argument("--seed", type=int, default=0, help="sampling seed (temperature > 0)")
    g.set_defaults(fn=cmd_generate)

    d = sub.add_parser("demo", help="each organism's stated reasoning and answer on a few prompts")
    d.add_argument("--prompt", action="append", help="a+b= prompt (repeatable; default: a few built-in ones)")
    d.set_defaults(fn=cmd_demo)

    c = sub.add_parser("cache", help="cache activations of many prompts into sharded safetensors (resumable)")
    c.add_argument("model", help="organism name, checkpoint dir, local HF dir or TransformerLens name")
    src = c.add_mutually_exclusive_group(required=True)
    src.add_argument("--task", choices=FORMATS, help="generate prompts of this task format")
    src.add_argument("--dataset", type=Path, help="JSONL file with a 'prompt' field (and optional 'completion')")
    c.add_argument("--text", choices=["prompt", "full"], default="prompt", help="cache the prompt or prompt+completion")
    c.add_argument("--n", type=_positive_int, default=1000, help="prompts to generate (--task)")
    c.add_argument("--digits", type=int, nargs="+", default=[2, 3], help="operand digit counts (--task)")
    c.add_argument("--split", choices=["train", "test", "all"], default="test")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--hooks", nargs="+", required=True, help="hook names or globs, e.g. 'blocks.*.hook_resid_post'")
    c.add_argument("--positions", type=_positions, default=-1,
                   help="positions from the end or 'all': --positions=-1 (default), --positions=-3,-2,-1, --positions=all")
    c.add_argument("--out", type=Path, required=True, help="cache directory (resumed if it holds a partial cache)")
    c.add_argument("--shard-size", type=_positive_int, default=4096, help="prompts per shard file")
    c.add_argument("--batch-size", type=_positive_int, default=256, help="prompts per forward pass")
    c.set_defaults(fn=cmd_cache)

    tasks = sub.add_parser("tasks", help="task data").add_subparsers(dest="action", required=True)
    x = tasks.add_parser("export", help="write task samples as JSONL (prompt, completion, meta)")
    x.add_argument("--format", choices=FORMATS, default="cot", help="sample format")
    x.add_argument("--n", type=_positive_int, default=1000, help="number of samples")
    x.add_argument("--digits", type=int, nargs="+", default=[2, 3], help="operand digit counts (1..5)")
    x.add_argument("--split", choices=["train", "test", "all"], default="test")
    x.add_argument("--seed", type=int, default=0)
    x.add_argument("--out", type=Path, required=True, help="output .jsonl file")
    x.set_defaults(fn=cmd_tasks_export)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return args.fn(args)
    except WorkbenchError as e:
        print(f"workbench: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("workbench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
