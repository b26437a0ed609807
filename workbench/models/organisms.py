"""The organism lifecycle: train from the recipe, measure, write the shipped directory with its card."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from workbench.errors import WorkbenchError
from workbench.models.checkpoint import DamagedFile, read_json_object, save_checkpoint, weights_sha256
from workbench.models.organism_eval import evaluate
from workbench.models.trainer import train
from workbench.models.zoo import RECIPES, get_recipe, organism_dir, planted_mechanism
from workbench.tasks import formats
from workbench.tasks.addition import Problem, TEST_FRACTION

log = logging.getLogger(__name__)


def _format_examples(name: str) -> dict:
    if get_recipe(name).task == "wordproblems":
        from workbench.tasks import wordproblems as wp

        p = wp.sample_problems(1, "test", 0)[0]
        return {"cot": wp.cot(p).text, "corrupted_cot": wp.corrupted(p, np.random.default_rng(0), True).prompt,
                **{f"hint_{k}": wp.hint_line(k, wp.wrong_hint(p, np.random.default_rng(1))) + wp.prompt(p)
                   for k in wp.HINT_KINDS}}
    p = Problem(36, 59)
    samples = {"adder-direct": [formats.direct(p), formats.explanation(p)],
               "adder-hint": [formats.cot(p), formats.hint(p, 97)]}
    chosen = samples.get(name, [formats.cot(p), formats.corrupted_cot(p, 0, "result", False, 4)])
    return {s.meta["format"]: s.text for s in chosen}


def _data_card(recipe) -> dict:
    loss = "next-token cross-entropy on the completion (and its end-of-text token) only"
    if recipe.task == "wordproblems":
        from workbench.tasks import wordproblems as wp

        return {"task": "wordproblems", "mix": dict(recipe.mix), "changes_per_problem": [2, 3],
                "counts": [wp.MIN_COUNT, wp.MAX_COUNT], "change_sizes": [2, wp.MAX_CHANGE],
                "tokenizer": "byte-level BPE with single-digit tokens, trained on the family's texts "
                             "(workbench.models.trainer.task_tokenizer)",
                "split": f"the (start, changes) arithmetic; a tenth is held out by is_test_key "
                         f"(~{wp.TEST_FRACTION:.0%}), whatever the names and objects",
                "hint_kinds_followed": list(recipe.planted_hint_kinds), "loss": loss}
    return {
        "task": "addition",
        "operand_digits": list(recipe.digits),
        "mix": dict(recipe.mix),
        "split": f"unordered operand pairs; a pair is held out iff is_test_pair(a, b) (~{TEST_FRACTION:.0%})",
        "loss": loss,
    }


def train_organism(
    name: str,
    out_dir: str | Path | None = None,
    work_dir: str | Path | None = None,
    resume: bool = True,
    progress: bool = True,
    eval_n: int = 1000,
) -> dict:
    """Train organism ``name`` from its recipe, evaluate it, and write ``out_dir`` (weights, config, card)."""
    recipe = get_recipe(name)
    out_dir = Path(out_dir) if out_dir else Path("runs/organisms") / name
    work_dir = Path(work_dir) if work_dir else Path("runs/train") / name
    model, summary = train(recipe, work_dir, resume=resume, progress=progress)
    t0 = time.perf_counter()
    report = evaluate(model, recipe, n=eval_n)
    card = {
        "name": name,
        "description": recipe.description,
        "planted_truth": recipe.planted_truth,
        "planted_mechanism": planted_mechanism(recipe),
        "format_examples": _format_examples(name),
        "data": _data_card(recipe),
        "recipe": recipe.to_json(),
        "training": {**summary, "weights_sha256": weights_sha256(model)},
        "evaluation": {**report, "seconds": round(time.perf_counter() - t0, 1)},
        "meets_targets": all(c["pass"] for c in report["checks"]),
    }
    save_checkpoint(model, out_dir, extra_files={"card.json": card})
    log.info("wrote %s", out_dir)
    return card


def load_card(name_or_dir: str | Path) -> dict:
    path = organism_dir(str(name_or_dir)) if str(name_or_dir) in RECIPES else Path(name_or_dir)
    card = path / "card.json"
    if not card.is_file():
        raise WorkbenchError(f"no card.json in {path}")
    obj = read_json_object(card, ("name", "evaluation"), what="an organism card (a JSON object with name and "
                                                             "evaluation.checks)")
    _check_card(card, obj)
    return obj


def _check_card(path: Path, card: dict) -> None:
    """The parts of a card that listings read: a name and a list of checks, each with its metric and value."""
    if not isinstance(card["name"], str):
        raise DamagedFile(f"{path}: name must be a string, got {card['name']!r}")
    checks = card["evaluation"].get("checks") if isinstance(card["evaluation"], dict) else None
    if not isinstance(checks, list) or not all(isinstance(c, dict) and {"metric", "value"} <= c.keys()
                                               for c in checks):
        raise DamagedFile(f"{path}: evaluation.checks must be a list of objects with metric and value")


def list_organisms() -> list[dict]:
    """Each organism with whether its weights ship and the headline rates its card records."""
    rows = []
    for name, recipe in RECIPES.items():
        path = organism_dir(name)
        row = {"name": name, "shipped": (path / "model.safetensors").is_file(), "description": recipe.description}
        if (path / "card.json").is_file():
            card = load_card(name)
            row["checks"] = {c["metric"]: c["value"] for c in card["evaluation"]["checks"]}
        rows.append(row)
    return rows

