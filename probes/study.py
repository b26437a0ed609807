"""A probe study end to end: prompts -> residual stream -> probe sweep with controls -> causal checks -> files.

Writes into ``out``: ``probes.parquet`` (one row per variable x layer x position), ``causal.json``, a selectivity
heatmap per variable under ``figures/`` (HTML and PNG) and ``summary.json``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from transformer_lens import HookedTransformer

from probes.causal import causal_check
from probes.linear import ProbeConfig
from probes.sweep import best_site, collect_resid, matrix, probe_sweep
from workbench.errors import WorkbenchError
from workbench.figures import heatmap
from workbench.io import write_json, write_parquet
from workbench.tasks import formats
from workbench.tasks.addition import Problem, sample_problems

TEXTS = ("prompt", "direct", "cot")
"""What is probed: the prompt ``a+b=``; the prompt and the direct answer; the prompt and the written CoT up to
``ans`` (the answer not yet written)."""


def probe_texts(digits: int, n: int, text: str, split: str = "test", seed: int = 0) -> tuple[list[Problem], list[str]]:
    """``n`` problems with two ``digits``-digit operands, and the texts to probe, all of one token length.

    For ``direct`` the sum must have ``digits`` digits too (no carry out of the top column), so every answer
    digit sits at the same position.
    """
    if text not in TEXTS:
        raise WorkbenchError(f"text must be one of {', '.join(TEXTS)}, got {text!r}")
    problems: list[Problem] = []
    draw = 0
    while len(problems) < n:
        more = sample_problems(4 * n, (digits,), split, seed + draw)
        problems += [p for p in more if text != "direct" or len(str(p.total)) == digits]
        draw += 1
        if draw > 20:
            raise WorkbenchError(f"could not draw {n} problems of {digits} digits from the {split} split")
    problems = problems[:n]
    if text == "prompt":
        texts = [formats.problem_prompt(p) for p in problems]
    elif text == "direct":
        texts = [formats.direct(p).text for p in problems]
    else:
        texts = [formats.problem_prompt(p) + formats.true_cot_to_answer(p)
                 for p in problems]
    return problems, texts


def run_probe_study(
    model: HookedTransformer,
    out: str | Path,
    digits: int = 3,
    n: int = 1500,
    text: str = "prompt",
    variables: Sequence[str] | None = None,
    causal: Sequence[str] = (),
    site: tuple[int, int] | None = None,
    scale: float = 1.0,
    cfg: ProbeConfig = ProbeConfig(),
) -> dict:
    """Probe every variable everywhere, then the causal check of each variable in ``causal`` at its most selective
    site (or at ``site`` = (layer index, position))."""
    out = Path(out)
    problems, texts = probe_texts(digits, n, text, seed=cfg.seed)
    stack = collect_resid(model, texts)
    rows = probe_sweep(stack, problems, variables, cfg=cfg)
    write_parquet(out / "probes.parquet", rows)
    figures = []
    for var in dict.fromkeys(r["variable"] for r in rows):
        values, layers, positions = matrix(rows, var)
        metric = rows[[r["variable"] for r in rows].index(var)]["metric"]
        figures += heatmap(values, layers, [stack.tokens[p] for p in positions],
                           f"{var}: probe {metric} minus control (selectivity), {len(problems)} prompts",
                           out / "figures" / f"probe_{var}", colorbar="selectivity", diverging=True)
    checks = []
    for var in causal:
        if site is None:
            best = best_site(rows, var)
            layer, pos = best["layer_index"], best["position"]
        else:
            layer, pos = site
            if not (0 <= layer < stack.acts.shape[0] and 0 <= pos < stack.acts.shape[2]):
                raise WorkbenchError(f"site {site} is outside layers 0..{stack.acts.shape[0] - 1} x positions "
                                     f"0..{stack.acts.shape[2] - 1}")
        checks.append(causal_check(model, stack, texts, problems, var, layer, pos, scale=scale, cfg=cfg))
    write_json(out / "causal.json", checks)
    best = {}
    for var in dict.fromkeys(r["variable"] for r in rows):
        b = best_site(rows, var)
        best[var] = {k: b[k] for k in ("layer", "position", "token", "score", "control", "selectivity", "metric")}
    summary = {"n_prompts": len(problems), "text": text, "digits": digits, "example": texts[0],
               "best_sites": best, "causal": [{k: c[k] for k in c if k not in ("examples", "per_example")} for c in checks],
               "files": ["probes.parquet", "causal.json", *sorted(str(Path(f).relative_to(out)) for f in figures)]}
    write_json(out / "summary.json", summary)
    return summary
