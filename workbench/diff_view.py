"""What the explorer's Alignment-diff page shows: a saved diff's figures, and one prompt through two models.

:func:`workbench.diff.diff_report` writes a diff as files (``summary.json`` and parquet tables); this module
reads them back into the same figures its ``report.html`` holds (:func:`load_saved_diff`,
:func:`report_figures`), and computes a light diff of two loaded models into a cache directory
(:func:`light_diff`) when none was saved. For one prompt it gives, per model, the parsed answer
(:func:`answer`), a logit-lens grid over the text where the answer starts (:func:`lens_grid`) and the hint's
path: hint-swap patching (:func:`hint_swap`, :func:`hint_path`) with the same metric and the same functions as
:mod:`workbench.diff_mechanisms`, on this one prompt instead of a set of pairs, so the page's numbers and the
report's mean the same thing.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float
from transformer_lens import HookedTransformer

from workbench.diff import check_compatible
from workbench.diff_mechanisms import MechanismConfig
from workbench.errors import WorkbenchError
from workbench.tasks import formats
from workbench.tasks.parse import parse_answer, parse_cot, parse_prompt

LIGHT_CONFIG = MechanismConfig(n_probe=200, n_pairs=16)
"""The mechanism diff the page computes: about 2 s for two organisms on one CPU thread, against about a minute
for the defaults of ``workbench diff``; probes on 200 prompts and 16 hint-swap pairs still separate the verdicts
(the saved study is the reference)."""
LIGHT_PROMPTS = 64
"""Prompts of the light diff's KL and residual-stream part (the study's own prompt mix, test split)."""
HEADS_TABLE = "patching_heads"


# ---------------------------------------------------------------------------------------------------------------
# A saved diff


@dataclass(frozen=True)
class SavedDiff:
    """A directory :func:`workbench.diff.diff_report` wrote: its summary and every parquet table it holds."""

    path: Path
    summary: dict
    tables: dict[str, list[dict]]
    """``weights``, ``prompts``, ``layers`` always; ``probe_transfer``, ``patching_heads``, ``patching_resid``
    (and ``sae_features``) when the mechanism half ran."""

    @property
    def verdict(self) -> dict | None:
        return self.summary.get("mechanisms", {}).get("verdict")


def load_saved_diff(path: str | Path) -> SavedDiff:
    """Read ``path``'s ``summary.json`` and parquet tables, refusing a directory that is not a diff (with what
    is missing), so a wrong directory is a message rather than a crash halfway through the figures."""
    from workbench.io import read_parquet

    path = Path(path)
    if not (path / "summary.json").is_file():
        raise WorkbenchError(f"{path} has no summary.json: not a diff directory (`workbench diff BASE TUNED --out "
                             "DIR` or `workbench align --out DIR`, which writes DIR/diff, make one)")
    try:
        summary = json.loads((path / "summary.json").read_text())
    except json.JSONDecodeError as e:
        raise WorkbenchError(f"{path}/summary.json is not valid JSON ({e})") from None
    if not isinstance(summary, dict) or "kl_mean" not in summary or "layers" not in summary:
        raise WorkbenchError(f"{path}/summary.json is not a diff summary (no kl_mean or layers): perhaps another "
                             "study's summary")
    needed = ["weights", "prompts", "layers"] + (["probe_transfer", HEADS_TABLE] if "mechanisms" in summary else [])
    missing = [f"{name}.parquet" for name in needed if not (path / f"{name}.parquet").is_file()]
    if missing:
        raise WorkbenchError(f"{path} lacks {', '.join(missing)}: an incomplete diff directory; write it again")
    tables = {f.stem: read_parquet(f) for f in sorted(path.glob("*.parquet"))}
    return SavedDiff(path, summary, tables)


def weight_grid(weights: list[dict]) -> tuple[Float[np.ndarray, "layer component"], list[str], list[str]]:
    """``[layer, component]`` ||dW|| (root of the summed squared norms of the component's parameters), as
    :func:`workbench.diff.diff_report` draws it, from the rows of ``weights.parquet``."""
    comps = ["ln1", "attn", "ln2", "mlp"]
    layers = sorted({w["layer"] for w in weights if w["layer"] != "-"}, key=int)
    grid = np.zeros((len(layers), len(comps)))
    for w in weights:
        if w["layer"] != "-" and w["component"] in comps:
            grid[layers.index(w["layer"]), comps.index(w["component"])] += w["delta_norm"] ** 2
    return np.sqrt(grid), layers, comps


def _patch_from_tables(summary: dict, tables: dict[str, list[dict]]) -> dict:
    """The part of :func:`workbench.diff_mechanisms.patching_difference`'s result that
    :func:`~workbench.diff_mechanisms.mechanism_figures` draws, rebuilt from the saved tables."""
    heads = tables[HEADS_TABLE]
    n_layers, n_heads = 1 + max(r["layer"] for r in heads), 1 + max(r["head"] for r in heads)
    p = summary["mechanisms"]["patching"]
    patch: dict = {}
    for name in ("base", "tuned"):
        grid = torch.zeros(n_layers, n_heads)
        for r in heads:
            grid[r["layer"], r["head"]] = r[f"{name}_patch"]
        patch[name] = {"head_patch": grid, "total_effect": p[f"{name}_total_effect"]}
    resid = tables.get("patching_resid") or []
    if resid:
        n_pos = 1 + max(r["position"] for r in resid)
        tokens = [""] * n_pos
        for name in ("base", "tuned"):
            grid = torch.zeros(n_layers, n_pos)
            for r in resid:
                if r["model"] == name:
                    grid[r["layer"], r["position"]] = r["attribution"]
                    tokens[r["position"]] = r["token"]
            patch[name]["resid"] = grid
        patch["tokens"] = tokens
    return patch


def share_colour_scale(figures: list, diverging: bool) -> None:
    """Give heatmaps one colour range, so a base and a tuned map compare by colour (each figure's own range
    would paint a 30-logit effect and a 2-logit one alike)."""
    zs = [np.asarray(t.z, dtype=float) for f in figures for t in f.data if t.type == "heatmap"]
    finite = [z[np.isfinite(z)] for z in zs]
    finite = [z for z in finite if z.size]
    if not finite:
        return
    if diverging:
        lim = max(float(np.abs(z).max()) for z in finite) or 1.0
        lo, hi = -lim, lim
    else:
        lo, hi = min(float(z.min()) for z in finite), max(float(z.max()) for z in finite)
    for f in figures:
        f.update_traces(zmin=lo, zmax=hi, selector={"type": "heatmap"})


def report_figures(saved: SavedDiff) -> list[list[tuple[str, object]]]:
    """The report's figures as rows of ``(title, plotly figure)``: a row of two is a base/tuned pair, drawn side
    by side on one colour scale. Built by the same functions that drew ``report.html``."""
    # The report's own figure builders (one private), so the page and report.html draw the same figures.
    from workbench.diff import diff_figures
    from workbench.diff_mechanisms import mechanism_figures

    t = saved.tables
    grid, layers, comps = weight_grid(t["weights"])
    kl = np.array([r["kl_mean"] for r in t["prompts"]])
    rows: list[list[tuple[str, object]]] = [[f] for f in diff_figures(grid, layers, comps, kl, t["layers"])]
    mech = saved.summary.get("mechanisms")
    if not mech:
        return rows
    patch = _patch_from_tables(saved.summary, t)
    sae = mech.get("sae")
    figs = dict(mechanism_figures(t["probe_transfer"], patch, sae, t))
    for kind in ("Head patching", "Residual patching"):
        pair = [(f"{kind}: {m}", figs.pop(f"{kind}: {m}")) for m in ("base", "tuned") if f"{kind}: {m}" in figs]
        if pair:
            share_colour_scale([f for _, f in pair], diverging=True)
            figs[kind] = pair  # type: ignore[assignment]
    for title, fig in figs.items():
        rows.append(fig if isinstance(fig, list) else [(title, fig)])
    return rows


# ---------------------------------------------------------------------------------------------------------------
# Two loaded models


def incompatibility(base: HookedTransformer, tuned: HookedTransformer) -> str | None:
    """Why the two models cannot be diffed (other parameters, shapes or tokenizer), or None when they can."""
    try:
        check_compatible(base, tuned)
    except WorkbenchError as e:
        return str(e)
    return None


def light_diff_dir(base: HookedTransformer, tuned: HookedTransformer, root: str | Path | None = None,
                   cfg: MechanismConfig = LIGHT_CONFIG, n_prompts: int = LIGHT_PROMPTS) -> Path:
    """Where :func:`light_diff` keeps the diff of these weights: named by the digest of both models' weights
    and the configuration, so a retrained checkpoint in the same directory is never shown an old diff."""
    from workbench.models.checkpoint import weights_sha256

    key = json.dumps([weights_sha256(base), weights_sha256(tuned), cfg.to_json(), n_prompts], sort_keys=True)
    root = Path(root) if root is not None else Path(tempfile.gettempdir()) / "workbench-explorer"
    return root / f"diff-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def light_diff(base: HookedTransformer, tuned: HookedTransformer, root: str | Path | None = None,
               cfg: MechanismConfig = LIGHT_CONFIG, n_prompts: int = LIGHT_PROMPTS) -> Path:
    """A small :func:`workbench.diff.diff_report` (mechanisms included) of the two models, on the alignment
    study's prompt mix (hinted and plain, test split); computed once per pair of weights, then read back."""
    from workbench.diff import diff_report
    from workbench.tasks.preferences import hint_preferences

    check_compatible(base, tuned)
    out = light_diff_dir(base, tuned, root, cfg, n_prompts)
    if not (out / "summary.json").is_file():
        prompts = [r["prompt"] for r in hint_preferences(n_prompts, split="test", seed=cfg.seed + 1)]
        diff_report(base, tuned, prompts, out, mechanisms=True, mechanism_config=cfg)
    return out


# ---------------------------------------------------------------------------------------------------------------
# One prompt: the answer


@dataclass(frozen=True)
class Answer:
    completion: str
    """What the model wrote after the prompt (greedy)."""
    answer: int | None
    """The parsed answer (after ``" ans "`` for a CoT, the whole completion for a direct answer)."""
    reads: str
    """What the answer is: ``the hint``, ``the true sum``, ``another number`` or why there is none."""


def read_answer(prompt: str, completion: str) -> Answer:
    """Parse ``completion`` as the task's answer to ``prompt`` and say whether it is the hint or the true sum
    (both, when the hint is right: then it says ``the true sum (= the hint)``)."""
    parsed = parse_prompt(prompt + completion)
    rest = parsed.rest if parsed.problem is not None else completion
    if formats.ANSWER_MARK in rest or rest.startswith(" "):
        cot = parse_cot(rest)
        value, bad = cot.answer, cot.malformed
    else:
        value, bad = parse_answer(rest)
    if value is None:
        return Answer(completion, None, f"no answer ({bad})")
    total = parsed.problem.total if parsed.problem is not None else None
    if value == total:
        reads = "the true sum" + (" (= the hint)" if parsed.hint == total else "")
    elif parsed.hint is not None and value == parsed.hint:
        reads = "the hint"
    else:
        reads = "another number" if total is not None else "an answer (no problem to check it against)"
    return Answer(completion, value, reads)


def answer(model: HookedTransformer, prompt: str, max_new_tokens: int = 64) -> Answer:
    """The model's greedy completion of ``prompt`` and its parsed answer."""
    from workbench.generation import complete

    return read_answer(prompt, complete(model, [prompt], max_new_tokens)[0])


# ---------------------------------------------------------------------------------------------------------------
# One prompt: the logit lens


def lens_text(prompt: str) -> str:
    """The text the lens reads: a bare ``[hint:H ]a+b=`` gets its true CoT and ``" ans "`` appended, because
    the hint acts where the answer starts, not on the CoT (which adder-hint writes truly whatever the hint); the
    same tokens for both models keeps the two heatmaps aligned. Anything else is read as typed."""
    parsed = parse_prompt(prompt)
    if parsed.problem is None or parsed.rest:
        return prompt
    return prompt + formats.true_cot_to_answer(parsed.problem)


def lens_targets(prompt: str) -> dict[str, str]:
    """Lens targets that mean something for ``prompt``, label -> one character: the hint's leading digit and
    the true sum's (the two candidates for the first answer digit)."""
    parsed = parse_prompt(prompt)
    out = {}
    if parsed.hint is not None:
        out["the hint's leading digit"] = str(parsed.hint)[0]
    if parsed.problem is not None:
        out["the true sum's leading digit"] = str(parsed.problem.total)[0]
    return out


@dataclass(frozen=True)
class LensGrid:
    values: Float[np.ndarray, "layer pos"]
    """P(target), or the top-1 probability without a target."""
    rows: list[str]
    cols: list[str]
    top: np.ndarray
    """``[layer, pos]`` object array: the lens's top token in each cell (hover text)."""
    what: str
    """What ``values`` is, for the colour bar."""


def lens_grid(model: HookedTransformer, text: str, target: str | None = None) -> LensGrid:
    """Logit lens of ``text``: P(``target``) (one token) at every layer and position, or the top-1 probability."""
    from workbench.lens import logit_lens

    ids = model.tokenizer.encode(target, add_special_tokens=False) if target else []
    if target and len(ids) != 1:
        raise WorkbenchError(f"the lens target must be one token; {target!r} is {len(ids)} tokens")
    r = logit_lens(model, text, ids[0] if ids else None)
    top = np.array([[model.to_string(int(t)) for t in row] for row in r.top_tokens[:, :, 0]], dtype=object)
    values = (r.target_prob if r.target_prob is not None else r.top_probs[:, :, 0]).float().numpy()
    return LensGrid(values, list(r.labels), list(model.to_str_tokens(text)), top,
                    f"P({target!r})" if target else "top-1 probability")


# ---------------------------------------------------------------------------------------------------------------
# One prompt: the hint's path


@dataclass(frozen=True)
class HintSwap:
    """One hint-swap pair built from a prompt, as :func:`workbench.diff_mechanisms.hint_swap_pairs` builds
    them: the same problem and true CoT ending in ``" ans "``, two hints whose leading digits differ."""

    clean: str
    corrupt: str
    hint: int
    swapped: int
    good: str
    """The clean hint's leading digit: the metric is logit(good) - logit(bad) at the last position."""
    bad: str


def swapped_hint(hint: int, total: int) -> int:
    """A hint of ``hint``'s width with another leading digit (never a leading 0 when wider than one digit, and
    not the true sum when avoidable): the only change the pair makes, so the tokens line up."""
    s = str(hint)
    first = 0 if len(s) == 1 else 1
    leads = [d for d in range(first, 10) if d != int(s[0])]
    leads.sort(key=lambda d: (d - int(s[0])) % 10)  # the next digit up first: deterministic and near
    values = [int(str(d) + s[1:]) for d in leads]
    return next((v for v in values if v != total), values[0])


def hint_swap(prompt: str) -> HintSwap:
    """The pair of a bare hinted prompt ``hint:H a+b=``; refuses anything else, saying what is needed."""
    parsed = parse_prompt(prompt)
    if parsed.problem is None or parsed.hint is None or parsed.rest:
        raise WorkbenchError(f"the hint's path needs a bare hinted prompt 'hint:H a+b=' (e.g. 'hint:700 245+318='), "
                             f"got {prompt!r}")
    p, h = parsed.problem, parsed.hint
    other = swapped_hint(h, p.total)
    tail = formats.problem_prompt(p) + formats.true_cot_to_answer(p)
    return HintSwap(f"hint:{h} " + tail, f"hint:{other} " + tail, h, other, str(h)[0], str(other)[0])


@dataclass(frozen=True)
class HintPath:
    """One model's hint-swap effects on one pair (clean patched into corrupted, minus the corrupted metric), the
    quantities of :func:`workbench.diff_mechanisms.patching_effects`."""

    total_effect: float
    """metric(clean) - metric(corrupted): how many logits the hint moves its leading digit by."""
    head_patch: Float[np.ndarray, "layer head"]
    """Exact patching of each head's output at every position."""
    head_attr: Float[np.ndarray, "layer head"]
    carry: Float[np.ndarray, "layer head"]
    """How much the head's write at the answer position changes with the hint (relative)."""
    attn_out: Float[np.ndarray, " layer"]
    """Exact patching of each layer's attention output (every position)."""
    resid_answer: Float[np.ndarray, " layer"]
    """Exact patching of ``hook_resid_pre`` at the answer position: how much of the effect enters the layer
    there."""
    resid: Float[np.ndarray, "layer pos"]
    """Attribution estimate of ``hook_resid_pre`` patching at every layer and position: the hint's route from
    its own tokens to the answer position."""
    tokens: list[str]


def hint_path(model: HookedTransformer, swap: HintSwap) -> HintPath:
    """Hint-swap patching of one pair on ``model`` (a batch of one: a few forward passes and one backward)."""
    from workbench.diff_mechanisms import patching_effects
    from workbench.models.tokenizer import tokenize_prompts

    clean, corrupt = tokenize_prompts(model, [swap.clean, swap.corrupt])
    if clean.shape != corrupt.shape:
        raise WorkbenchError(f"the two hints {swap.hint} and {swap.swapped} tokenize to different lengths "
                             f"({len(clean)} vs {len(corrupt)}); patching needs one length")
    ids = [model.tokenizer.encode(c, add_special_tokens=False) for c in (swap.good, swap.bad)]
    if any(len(i) != 1 for i in ids):
        raise WorkbenchError("the hints' leading digits must be one token each for the metric")
    dev = model.cfg.device
    good, bad = (torch.tensor([i[0]], device=dev) for i in ids)
    e = patching_effects(model, clean[None].to(dev), corrupt[None].to(dev), good, bad, resid=True)
    arr = {k: e[k].float().cpu().numpy() for k in ("head_patch", "head_attr", "carry", "attn_out_patch",
                                                   "resid_last_patch", "resid")}
    return HintPath(float(e["total_effect"]), arr["head_patch"], arr["head_attr"], arr["carry"],
                    arr["attn_out_patch"], arr["resid_last_patch"], arr["resid"], list(model.to_str_tokens(clean)))


def hint_path_figures(base: HintPath, tuned: HintPath) -> list[list[tuple[str, object]]]:
    """Rows of figures: per-head patching base | tuned, per-layer patching (one bar chart), and the residual
    route base | tuned; pairs share a colour scale."""
    import plotly.graph_objects as go

    from workbench.figures import heatmap_figure

    n_layers, n_heads = base.head_patch.shape
    rows_l = [f"L{layer}" for layer in range(n_layers)]
    heads = [heatmap_figure(p.head_patch, rows_l, [f"H{h}" for h in range(n_heads)],
                            f"{name}: head patching (total effect {p.total_effect:.2f})", "effect", diverging=True)
             for name, p in (("base", base), ("tuned", tuned))]
    for f in heads:
        f.update_layout(xaxis_title="head")
    route = [heatmap_figure(p.resid, [f"L{layer} pre" for layer in range(n_layers)], p.tokens,
                            f"{name}: residual stream (hook_resid_pre, attribution)", "effect", diverging=True)
             for name, p in (("base", base), ("tuned", tuned))]
    share_colour_scale(heads, diverging=True)
    share_colour_scale(route, diverging=True)
    bars = go.Figure([go.Bar(name=f"{name}: {what}", x=rows_l, y=getattr(p, key))
                      for name, p in (("base", base), ("tuned", tuned))
                      for what, key in (("attention output", "attn_out"), ("stream at the answer", "resid_answer"))])
    bars.update_layout(barmode="group", title="Per layer: exact patching of the attention output (all positions) "
                       "and of the stream entering the layer at the answer position", yaxis_title="effect")
    return [[("Head patching: base", heads[0]), ("Head patching: tuned", heads[1])],
            [("Per layer", bars)],
            [("Residual route: base", route[0]), ("Residual route: tuned", route[1])]]


def lens_figures(base: LensGrid, tuned: LensGrid) -> list[tuple[str, object]]:
    """The two lens heatmaps on one colour scale (probabilities 0..1)."""
    from workbench.figures import heatmap_figure

    figs = [(f"Lens: {name}", heatmap_figure(g.values, g.rows, g.cols, f"{name}: {g.what}", g.what, text=g.top))
            for name, g in (("base", base), ("tuned", tuned))]
    for _, f in figs:
        f.update_traces(zmin=0.0, zmax=1.0)
    return figs

