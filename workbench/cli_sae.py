"""``workbench sae ...`` and ``workbench circuit``: SAEs, transcoders, feature dashboards and attribution graphs.

Kept apart from ``cli.py`` so each file stays readable; ``cli.build_parser`` calls :func:`register`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from workbench.cli_types import _fraction, _learning_rate, _non_negative_int, _path, _port, _seed
from workbench.errors import WorkbenchError


HELD_OUT_EVERY = 10  # a user dataset's rows whose text hash is 0 mod this are the held-out split


def _held_out(text: str) -> bool:
    """A row's split, from its text alone: the same row is held out in every run and every command."""
    import hashlib

    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") % HELD_OUT_EVERY == 0


def texts_for(model_spec: str, n: int, split: str, seed: int, dataset: Path | None = None) -> list[str]:
    """Training/eval text for a model: a JSONL ``dataset`` (prompt + completion), else the organism's own training
    mix (its recipe, found by name or by a checkpoint's card). A model that is not an organism has no default
    texts: it needs ``dataset`` (falling back to addition prompts would train on text the model never sees).

    ``split`` is "train", "test" (held out: disjoint from "train", also for a dataset) or "all".
    """
    from workbench.io import read_dataset
    from workbench.models.zoo import RECIPES, build_samples, get_recipe

    if dataset is not None:
        rows = read_dataset(dataset)
        texts = [r["prompt"] + str(r.get("completion", "")) for r in rows]
        if split != "all":
            texts = [t for t in texts if _held_out(t) == (split == "test")]
            if not texts:
                raise WorkbenchError(f"{dataset} has no {split} rows: 1 row in {HELD_OUT_EVERY} (by a hash of its "
                                     f"text) is held out for evaluation; give more rows ({len(rows)} now)")
        return texts[:n]
    name = model_spec
    card = Path(model_spec) / "card.json"
    if card.is_file():
        try:
            name = json.loads(card.read_text()).get("name", model_spec)
        except (ValueError, UnicodeDecodeError, AttributeError):
            raise WorkbenchError(f"{card} is not a JSON object (an organism card); repair or remove it") from None
    if name in RECIPES:
        return [s.prompt + s.completion for s in build_samples(get_recipe(name), n, split, seed)]
    raise WorkbenchError(f"{model_spec} is not an organism, so it has no built-in texts: pass --dataset FILE.jsonl "
                         "with a 'prompt' (and optional 'completion') field per line, text the model was trained on")


def _recipe(args: argparse.Namespace, transcoder: bool):
    from workbench.saes import SAERecipe

    return SAERecipe(arch=args.arch or ("standard" if transcoder else "topk"),
                     d_sae=args.d_sae, k=args.k, l1_coefficient=args.l1, l0_coefficient=args.l0, lr=args.lr,
                     batch_size=args.batch_size, total_tokens=args.tokens, seed=args.seed,
                     checkpoint_every=args.checkpoint_every, num_threads=args.threads, transcoder=transcoder)


def _ensure_cache(args: argparse.Namespace, model, hooks: list[str]) -> Path:
    """The cache to train on: ``--cache``, or one built (resumably) beside ``--out`` from the model's texts."""
    from workbench.cache_store import write_cache

    if args.cache is not None:
        return args.cache
    cache = args.out.with_name(args.out.name + ".cache")
    texts = texts_for(args.model, args.n, "train", args.seed, args.dataset)
    return write_cache(model, args.model, texts, hooks, cache, positions=None, shard_size=args.shard_size)


def cmd_sae_train(args: argparse.Namespace) -> int:
    from workbench.models.loader import load_model
    from workbench.saes import train_sae, transcoder_hooks

    _recipe(args, args.transcoder).check()  # before any caching
    model = load_model(args.model, allow_mismatch=args.allow_mismatch)
    if args.transcoder:
        layers = range(model.cfg.n_layers)
        cache = _ensure_cache(args, model, [h for layer in layers for h in transcoder_hooks(layer)])
        outs = [train_sae(model, args.model, cache, transcoder_hooks(layer)[0], args.out / f"layer_{layer}",
                          _recipe(args, True), resume=not args.no_resume) for layer in layers]
    else:
        if args.hook is None:
            raise WorkbenchError("--hook is required for an SAE (e.g. blocks.1.hook_resid_post)")
        if args.hook not in model.hook_dict:
            raise WorkbenchError(f"{args.hook!r} is not a hook of {args.model}; e.g. blocks.0.hook_resid_post")
        cache = _ensure_cache(args, model, [args.hook])
        outs = [train_sae(model, args.model, cache, args.hook, args.out, _recipe(args, False),
                          resume=not args.no_resume)]
    summary = []
    for out in outs:
        info = json.loads((out / "workbench.json").read_text())
        summary.append({"out": str(out), "hook": info["hooks"][0], "steps": info["steps"], "tokens": info["tokens"],
                        "seconds": info["seconds"], "final": info["final"]})
    print(json.dumps(summary if args.transcoder else summary[0], indent=2))
    return 0


def cmd_sae_eval(args: argparse.Namespace) -> int:
    from workbench.io import write_json
    from workbench.models.loader import load_model
    from workbench.sae_eval import evaluate_sae
    from workbench.saes import load_sae

    model = load_model(args.model, allow_mismatch=args.allow_mismatch)
    loaded = load_sae(args.sae, model, allow_other_model=args.allow_other_model)
    metrics = evaluate_sae(model, loaded, texts_for(args.model, args.n, "test", args.seed, args.dataset))
    if args.out is not None:
        write_json(args.out, metrics)
    metrics.pop("density")
    print(json.dumps(metrics, indent=2))
    return 0


def labelled_texts(model_spec: str, n: int, split: str, seed: int) -> tuple[list[str], list]:
    """The model's texts whose problems all have the most common number of columns, with those problems (task
    variables, and so feature labels, need aligned columns); for a task without addition problems, all its
    texts and None (features are then described by their top contexts and logits, not labelled)."""
    from collections import Counter

    from workbench.tasks.parse import parse_prompt

    texts = texts_for(model_spec, n, split, seed)
    problems = [parse_prompt(t).problem for t in texts]
    if not any(problems):  # another task family (the word problems): its texts, without addition's labels
        return texts, None
    common = Counter(len(p.columns) for p in problems if p is not None).most_common(1)[0][0]
    keep = [i for i, p in enumerate(problems) if p is not None and len(p.columns) == common]
    return [texts[i] for i in keep], [problems[i] for i in keep]


def cmd_sae_dashboard(args: argparse.Namespace) -> int:
    from workbench.dashboards import build_dashboards, load_dashboard
    from workbench.models.loader import load_model
    from workbench.saes import load_sae

    model = load_model(args.model, allow_mismatch=args.allow_mismatch)
    loaded = load_sae(args.sae, model)
    if args.dataset is not None:
        texts, problems = texts_for(args.model, args.n, "all", args.seed, args.dataset), None
    else:
        texts, problems = labelled_texts(args.model, args.n, "test", args.seed)
    out = build_dashboards(model, loaded.sae, texts, problems, args.out, n_top=args.n_top)
    table = load_dashboard(out).table()
    live = table[~table["dead"]]
    print(json.dumps({"out": str(out), "features": len(table), "dead": int(table["dead"].sum()),
                      "labelled_auroc_0.9": int((live["label_auroc"] >= 0.9).sum()),
                      "top": live.sort_values("label_auroc", ascending=False).head(args.show)[
                          ["id", "density", "label", "label_auroc"]].to_dict("records")}, indent=2, default=float))
    return 0


def _values(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return values


def cmd_sae_sweep(args: argparse.Namespace) -> int:
    from workbench.models.loader import load_model
    from workbench.sae_eval import run_sweep

    from workbench.sae_eval import SWEPT

    base = _recipe(args, args.transcoder)
    knob = SWEPT["standard" if base.transcoder else base.arch]
    if knob == "k":
        fractional = [v for v in args.values if v != int(v)]
        if fractional:
            raise WorkbenchError(f"--values are k (active features) for --arch {base.arch}: whole numbers, got "
                                 f"{', '.join(f'{v:g}' for v in fractional)}")
        too_big = [int(v) for v in args.values if v > base.d_sae]
        if too_big:
            raise WorkbenchError(f"k cannot exceed --d-sae ({base.d_sae}), got {too_big}")
    base.check()
    model = load_model(args.model, allow_mismatch=args.allow_mismatch)
    if args.hook not in model.hook_dict:
        raise WorkbenchError(f"{args.hook!r} is not a hook of {args.model}; e.g. blocks.0.hook_resid_post")
    hooks = [args.hook]
    if args.transcoder:
        from workbench.saes import transcoder_hooks

        layer = args.hook.split(".")[1] if args.hook.startswith("blocks.") else ""
        if not layer.isdigit():
            raise WorkbenchError(f"--transcoder sweeps a layer's transcoder: --hook blocks.L.hook_resid_mid, got "
                                 f"{args.hook!r}")
        hooks = list(transcoder_hooks(int(layer)))
    cache = _ensure_cache(argparse.Namespace(**{**vars(args), "out": args.out / "sae"}), model, hooks)
    rows = run_sweep(model, args.model, cache, hooks[0], args.values,
                     texts_for(args.model, args.n_eval, "test", args.seed, args.dataset), args.out,
                     _recipe(args, args.transcoder))
    keep = ("knob", "value", "l0", "explained_variance", "ce_recovered", "dead_fraction", "dense_fraction")
    print(json.dumps([{k: r[k] for k in keep} for r in rows], indent=2))
    return 0


def _transcoder_dir(args: argparse.Namespace) -> Path:
    from workbench.models.zoo import RECIPES, organism_dir

    if args.transcoders is not None:
        return args.transcoders
    if args.model in RECIPES and (organism_dir(args.model) / "transcoders").is_dir():
        return organism_dir(args.model) / "transcoders"
    raise WorkbenchError(f"no transcoders for {args.model}: pass --transcoders DIR (made by `workbench sae train "
                         f"{args.model} --transcoder --out DIR`)")


def _slug(text: str, limit: int = 128) -> str:
    """A graph name from a text: its letters, digits and '_.-'; a long text (a story and its reasoning) keeps its
    first characters and a hash of the whole, so two long prompts with one beginning get two names."""
    import hashlib
    import re

    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "graph"
    if len(slug) <= limit:
        return slug
    return slug[: limit - 9].rstrip("_.-") + "-" + hashlib.sha256(text.encode()).hexdigest()[:8]


def cmd_circuit(args: argparse.Namespace) -> int:
    from workbench.circuits import (attribute_prompt, check_slug, replacement_model, top_features,
                                    validate_by_intervention, write_graph_json)
    from workbench.io import write_json
    from workbench.models.loader import load_model
    from workbench.saes import load_transcoders

    # A model given as a directory is named by its last component, not by the whole path.
    slug = args.slug or _slug(f"{Path(args.model).name or args.model}-{args.prompt}")
    check_slug(slug)
    model = load_model(args.model, allow_mismatch=args.allow_mismatch)
    transcoders = load_transcoders(_transcoder_dir(args), model)
    rm = replacement_model(model, transcoders)
    result = attribute_prompt(rm, args.prompt, max_n_logits=args.max_n_logits)
    graph = write_graph_json(result, args.out, slug, node_threshold=args.node_threshold,
                             edge_threshold=args.edge_threshold)
    summary = {**result.summary(), "graph": str(graph),
               "top_features": top_features(result, n=args.top, node_threshold=args.node_threshold)}
    if args.validate:
        summary["validation"] = validate_by_intervention(rm, result, n_features=args.validate)
    write_json(args.out / f"{slug}.summary.json", summary)
    brief = {k: summary[k] for k in ("prompt", "top_token", "top_prob", "replacement_score", "completeness_score",
                                     "seconds", "graph")}
    if args.validate:
        brief["validation"] = {k: summary["validation"][k] for k in ("agreement_rate", "spearman", "n_features")}
    print(json.dumps(brief, indent=2))
    print(f"open it: workbench circuit-serve {args.out}  (then http://localhost:8032/index.html)", file=sys.stderr)
    return 0


def cmd_circuit_serve(args: argparse.Namespace) -> int:
    import time

    from workbench.circuits import serve_graphs

    try:
        server = serve_graphs(args.dir, port=args.port)
    except OSError as e:
        raise WorkbenchError(f"cannot serve on port {args.port} ({e.strerror or e}); is another server using it? "
                             "choose a free one with --port") from None
    print(f"serving {args.dir} at http://localhost:{args.port}/index.html (Ctrl-C to stop)", file=sys.stderr)
    try:
        while True:
            time.sleep(3600)
    finally:
        server.stop()


def cmd_circuit_study(args: argparse.Namespace) -> int:
    from probes.circuit_study import group_shares, run_circuit_study
    from workbench.io import write_json, write_parquet
    from workbench.models.loader import load_model
    from workbench.models.zoo import RECIPES
    from workbench.saes import load_transcoders
    from workbench.tasks.addition import Problem, sample_operands

    import numpy as np

    recipe = RECIPES.get(args.model)
    if args.planted and (recipe is None or recipe.iit is None):
        planted = ", ".join(n for n, r in RECIPES.items() if r.iit is not None)
        raise WorkbenchError(f"--planted needs an organism with a planted mechanism ({planted}); "
                             f"{args.model} has none")
    model = load_model(args.model, allow_mismatch=args.allow_mismatch)
    transcoders = load_transcoders(_transcoder_dir(args), model)
    rng = np.random.default_rng(args.seed)
    a, b = sample_operands(args.n, (args.digits,), "test", rng)
    problems = [Problem(int(x), int(y)) for x, y in zip(a, b)]
    # default: continue from the model's CoT unless its recipe trains direct answers (adder-direct and kin)
    direct = recipe is not None and any(kind == "direct" for kind, _ in recipe.mix)
    cot = args.cot if args.cot is not None else not (direct or args.model == "adder-direct")
    study = run_circuit_study(model, transcoders, problems, cot=cot)
    rows = study.pop("rows")
    study["grouped_by_column"] = {col: group_shares(sh, col) for col, sh in study["shares_by_column"].items()}
    write_parquet(args.out / "graphs.parquet", rows)
    write_json(args.out / "study.json", {"model": args.model, "cot": cot, "n_problems": args.n, **study})
    print(json.dumps({k: study[k] for k in ("n_graphs", "skipped_wrong_prediction", "replacement_mean",
                                            "completeness_mean", "seconds_per_graph", "grouped_by_column")},
                     indent=2))
    if args.planted:
        from probes.planted_graphs import feature_tracking, graph_localisation, lines

        graphs = graph_localisation(model, transcoders, recipe, n=args.n, seed=args.seed)
        features = feature_tracking(model, transcoders, recipe, n=args.planted_n, seed=args.seed + 1)
        write_json(args.out / "planted.json", {"model": args.model, "graphs": graphs, "features": features})
        print("\n".join(lines(graphs, features)))
    return 0


def _train_args(p: argparse.ArgumentParser, positive_int, positive_float) -> None:
    p.add_argument("--arch", choices=["topk", "batchtopk", "jumprelu", "standard"],
                   help="SAELens training architecture (default topk; transcoders are standard)")
    p.add_argument("--d-sae", type=positive_int, default=1024, help="number of features")
    p.add_argument("--k", type=positive_int, default=16, help="active features per token (topk, batchtopk)")
    p.add_argument("--l1", type=positive_float, default=3.0, help="L1 coefficient (standard, transcoders)")
    p.add_argument("--l0", type=positive_float, default=1.0, help="L0 coefficient (jumprelu)")
    p.add_argument("--lr", type=_learning_rate, default=4e-4)
    p.add_argument("--batch-size", type=positive_int, default=1024, help="tokens per step")
    p.add_argument("--tokens", type=positive_int, default=2_000_000, help="training tokens (epochs over the cache)")
    p.add_argument("--checkpoint-every", type=positive_int, default=500, help="steps between resumable checkpoints")
    p.add_argument("--cache", type=_path, help="an all-positions cache (`workbench cache --positions=all`); default: "
                                              "build OUT.cache from --n texts")
    p.add_argument("--n", type=positive_int, default=20_000, help="texts to cache when building the cache")
    p.add_argument("--dataset", type=_path, help="JSONL with 'prompt' (+ 'completion'); default: the organism's "
                                                "own training mix")
    p.add_argument("--shard-size", type=positive_int, default=4096)
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--threads", type=positive_int, default=2, help="torch CPU threads (1 is faster on a busy machine)")


def register(sub, positive_int, positive_float) -> None:
    sae = sub.add_parser("sae", help="sparse autoencoders and transcoders (SAELens format)").add_subparsers(
        dest="action", required=True)
    t = sae.add_parser("train", help="train an SAE on one hook, or transcoders for every layer (resumable)")
    t.add_argument("model", help="organism name, checkpoint dir or local HF dir")
    t.add_argument("--hook", help="the hook to train on, e.g. blocks.1.hook_resid_post")
    t.add_argument("--transcoder", action="store_true",
                   help="train one transcoder per layer (hook_resid_mid -> hook_mlp_out) into OUT/layer_L")
    t.add_argument("--out", type=_path, required=True, help="SAELens SAE directory (or transcoder set directory)")
    t.add_argument("--no-resume", action="store_true", help="start over even if OUT.work holds a run")
    _train_args(t, positive_int, positive_float)
    t.set_defaults(fn=cmd_sae_train)

    e = sae.add_parser("eval", help="L0, explained variance, MSE, cosine, dead/dense fractions, CE loss recovered")
    e.add_argument("sae", type=_path, help="an SAE or transcoder directory (SAELens format)")
    e.add_argument("--model", required=True, help="the model to evaluate it on")
    e.add_argument("--n", type=positive_int, default=1000, help="held-out texts")
    e.add_argument("--dataset", type=_path, help="JSONL with 'prompt' (+ 'completion')")
    e.add_argument("--seed", type=_seed, default=1)
    e.add_argument("--allow-other-model", action="store_true",
                   help="evaluate on a model other than the one it was trained on (SAE transfer)")
    e.add_argument("--out", type=_path, help="also write the metrics (with per-feature density) as JSON")
    e.set_defaults(fn=cmd_sae_eval)

    d = sae.add_parser("dashboard", help="per-feature dashboard data: top examples, histogram, density, logit "
                                         "effects and the task variable each feature tracks (AUROC)")
    d.add_argument("sae", type=_path, help="an SAE or transcoder directory (SAELens format)")
    d.add_argument("--model", required=True)
    d.add_argument("--n", type=positive_int, default=2000, help="texts to scan")
    d.add_argument("--dataset", type=_path, help="JSONL with 'prompt' (+ 'completion'); features then get no labels")
    d.add_argument("--n-top", type=positive_int, default=20, help="top activating examples kept per feature")
    d.add_argument("--show", type=positive_int, default=10, help="best-labelled features printed")
    d.add_argument("--seed", type=_seed, default=1)
    d.add_argument("--out", type=_path, required=True, help="dashboard directory (features.parquet, examples.parquet)")
    d.set_defaults(fn=cmd_sae_dashboard)

    s = sae.add_parser("sweep", help="train and evaluate SAEs across k (or the L1/L0 coefficient); plot L0 vs "
                                     "explained variance and CE recovered")
    s.add_argument("model")
    s.add_argument("--hook", required=True)
    s.add_argument("--transcoder", action="store_true", help="sweep the L1 coefficient of --hook's layer transcoder "
                                                             "(--hook blocks.L.hook_resid_mid)")
    s.add_argument("--values", type=_values, required=True, help="comma-separated k (or coefficients), e.g. 4,8,16,32")
    s.add_argument("--n-eval", type=positive_int, default=1000, help="held-out texts per evaluation")
    s.add_argument("--out", type=_path, required=True)
    _train_args(s, positive_int, positive_float)
    s.set_defaults(fn=cmd_sae_sweep)

    c = sub.add_parser("circuit", help="attribution graph of a prompt's next token through per-layer transcoders "
                                       "(circuit-tracer graph JSON)")
    c.add_argument("model")
    c.add_argument("prompt", help="e.g. '36+59=' (the graph explains the next token)")
    c.add_argument("--transcoders", type=_path, help="DIR/layer_L transcoders (default: the organism's shipped set)")
    c.add_argument("--out", type=_path, required=True, help="graph directory (SLUG.json + graph-metadata.json)")
    c.add_argument("--slug", help="graph name (letters, digits, _ . -); default from model and prompt")
    c.add_argument("--node-threshold", type=_fraction, default=0.8, help="cumulative influence kept when pruning nodes")
    c.add_argument("--edge-threshold", type=_fraction, default=0.98, help="cumulative influence kept when pruning edges")
    c.add_argument("--max-n-logits", type=positive_int, default=5)
    c.add_argument("--top", type=positive_int, default=10, help="top features listed in SLUG.summary.json")
    c.add_argument("--validate", type=_non_negative_int, default=10, help="ablate this many top features and compare with the "
                                                            "graph's predictions (0: skip)")
    c.set_defaults(fn=cmd_circuit)

    cs = sub.add_parser("circuit-serve", help="serve graph JSON directories with circuit-tracer's local frontend")
    cs.add_argument("dir", type=_path)
    cs.add_argument("--port", type=_port, default=8032)
    cs.set_defaults(fn=cmd_circuit_serve)

    st = sub.add_parser("circuit-study", help="which input tokens each answer digit is computed from, over many "
                                              "attribution graphs (the addition case study)")
    st.add_argument("model")
    st.add_argument("--transcoders", type=_path)
    st.add_argument("--n", type=positive_int, default=20, help="problems")
    st.add_argument("--digits", type=int, choices=[2, 3], default=2, help="operand digits")
    st.add_argument("--cot", action=argparse.BooleanOptionalAction, default=None,
                    help="continue from the model's own CoT (default: all but adder-direct)")
    st.add_argument("--seed", type=_seed, default=0)
    st.add_argument("--planted", action="store_true",
                    help="also score the graphs and transcoder features against the organism's planted mechanism "
                         "(3-digit problems; planted.json)")
    st.add_argument("--planted-n", type=positive_int, default=600,
                    help="problems for the feature-tracking part of --planted")
    st.add_argument("--out", type=_path, required=True)
    st.set_defaults(fn=cmd_circuit_study)
