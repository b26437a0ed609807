"""Feature dashboards for a sparse autoencoder or transcoder: what each feature fires on, how often, what it
writes to the logits, and which addition-task variable it tracks best -- a cheap, checkable label per feature.

A feature *fires* on a token when its activation is > 0 (ReLU, TopK and JumpReLU SAEs are non-negative). BOS is
never encoded: position 0 sees only itself, so its activations are one row repeated for every text.

Logit effects are ``W_dec[f] @ W_U`` through ln_final with its per-position scale ignored: the scale divides
every direction at a position alike, so it moves magnitudes but not which tokens a feature promotes. ln_final's
centering and learned weight are applied where the model has them (its bias, the same for every feature, is
left out); a model loaded with ``fold_ln`` has them inside ``W_U`` already. For an SAE at a hook that writes the residual stream
(``hook_resid_*``, ``hook_attn_out``, ``hook_mlp_out``) or a transcoder, that is the direct logit effect only --
paths through later layers are left out. Other residual-basis hooks (``ln*.hook_normalized``, ``hook_embed``)
get the effect the direction would have if added to the final residual (``dashboard.json: logit_effect``);
hooks in a head's or the MLP's basis (``hook_z``, ``mlp.hook_post``, ...) get none.

Files in ``out_dir``: ``features.parquet`` (row i = feature i), ``examples.parquet`` (sorted by feature, rank)
and ``dashboard.json``, written last: the file sizes and counts it records are checked on load, so a build killed
half-way is refused. :func:`load_dashboard` reads them back for a UI.
"""

from __future__ import annotations

import difflib
import json
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from workbench.errors import WorkbenchError
from workbench.io import write_json, write_parquet
from workbench.models.tokenizer import tokenize_prompts
from workbench.tasks.addition import Problem

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa
    from sae_lens import SAE

FORMAT_VERSION = 1
RIGHT_CONTEXT = 3
"""Tokens shown right of an example's token: enough to see what the model wrote next."""
RESIDUAL_WRITERS = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out")
NOT_RESIDUAL = {"hook_z", "hook_q", "hook_k", "hook_v", "hook_pre", "hook_pre_linear", "hook_post"}
"""Hooks in a head's or the MLP's own basis: even when as wide as d_model (n_heads x d_head often is), their
directions mean nothing to W_U."""
TABLE_COLUMNS = ("id", "density", "mean_act", "max_act", "dead", "label", "label_auroc")


def _hook_of(model: HookedTransformer, sae: SAE) -> str:
    hook = sae.cfg.metadata.hook_name
    if not hook:
        raise WorkbenchError("the SAE has no cfg.metadata.hook_name: set it to the model hook it reads, "
                             "e.g. 'blocks.0.hook_resid_post'")
    if hook not in model.hook_dict:
        close = difflib.get_close_matches(hook, list(model.hook_dict), n=5, cutoff=0.5)
        raise WorkbenchError(f"the SAE's hook {hook!r} is not in the model; closest: {', '.join(close) or '(none)'}")
    return hook


@torch.inference_mode()
def feature_activations(model: HookedTransformer, sae: SAE, texts: list[str], batch_size: int = 256,
                        progress: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """Every feature's activation on every token of ``texts`` but BOS.

    Returns ``acts [n_tokens, d_sae]`` float32 (dense: n_tokens x d_sae x 4 bytes), ``ids [n_tokens]`` token ids
    and ``where [n_tokens, 2]`` (text index, position in the text's tokens, BOS = 0). Rows are in text order,
    positions ascending, so one text's rows are contiguous. Texts of one token length share a batch.
    """
    hook = _hook_of(model, sae)
    if not texts:
        raise WorkbenchError("no texts to encode: pass at least one")
    if batch_size < 1:
        raise WorkbenchError(f"batch_size must be >= 1, got {batch_size}")
    toks = tokenize_prompts(model, list(texts))
    bos = model.tokenizer.bos_token_id
    skip = int(bos is not None and len(toks[0]) > 0 and int(toks[0][0]) == bos)  # every text shares the prefix
    lengths = torch.tensor([len(t) - skip for t in toks])
    starts = torch.cumsum(lengths, 0) - lengths
    n = int(lengths.sum())
    if n == 0:
        raise WorkbenchError("the texts have no tokens besides BOS: pass non-empty texts")
    text = torch.repeat_interleave(torch.arange(len(toks)), lengths)
    where = torch.stack([text, torch.arange(n) - starts[text] + skip], 1)
    ids = torch.cat([t[skip:].cpu() for t in toks])
    acts = torch.zeros(n, sae.cfg.d_sae, dtype=torch.float32)
    layer = re.match(r"blocks\.(\d+)\.", hook)  # later blocks cannot change this hook: skip them
    stop = int(layer[1]) + 1 if layer else None
    by_len: dict[int, list[int]] = defaultdict(list)
    for i, t in enumerate(toks):
        by_len[len(t)].append(i)
    chunks = [idx[s : s + batch_size] for _, idx in sorted(by_len.items()) for s in range(0, len(idx), batch_size)]
    for chunk in tqdm(chunks, desc="encoding", disable=not progress):
        _, cache = model.run_with_cache(torch.stack([toks[i] for i in chunk]), names_filter=hook, stop_at_layer=stop)
        if hook not in cache.cache_dict:
            raise WorkbenchError(f"hook {hook!r} exists but does not fire in this model's configuration")
        x = cache[hook][:, skip:]
        width = x.shape[2:].numel()
        if width != sae.cfg.d_in:
            raise WorkbenchError(f"the SAE's d_in is {sae.cfg.d_in} but hook {hook!r} is {width} wide: "
                                 "use an SAE trained on this model's hook")
        if x.ndim > 3 and sae.cfg.reshape_activations != "hook_z":  # hook_z SAEs flatten heads themselves
            x = x.flatten(2)
        f = sae.encode(x.to(sae.device)).float().cpu()
        rows = (starts[chunk][:, None] + torch.arange(x.shape[1])).reshape(-1)
        acts[rows] = f.reshape(len(rows), -1)
    return acts, ids, where


def _ranks(x: np.ndarray) -> np.ndarray:
    """``[n, F]`` -> 1-based ranks down each column, tied values sharing their mean rank."""
    n, f = x.shape
    order = np.argsort(x, axis=0, kind="stable")
    s = np.take_along_axis(x, order, axis=0)
    new = np.ones((n, f), bool)
    new[1:] = s[1:] != s[:-1]
    run = np.cumsum(new.T.ravel()) - 1  # column-major: a run never spans two columns (each starts a new one)
    ends = np.cumsum(np.bincount(run))
    starts = np.concatenate([[0], ends[:-1]])
    mean_rank = ((starts + ends - 1) / 2)[run] - np.repeat(np.arange(f) * n, n) + 1
    out = np.empty((n, f))
    np.put_along_axis(out, order, mean_rank.reshape(f, n).T, axis=0)
    return out


def auroc_matrix(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """AUROC of each score column ``[n, F]`` for each boolean label column ``[n, C]`` -> ``[F, C]``.

    Mann-Whitney U from rank sums (ties count half), all pairs in one matmul. Columns of ``labels`` must hold
    both classes.
    """
    y = np.asarray(labels, dtype=float)
    pos = y.sum(0)
    u = _ranks(np.asarray(scores, dtype=float)).T @ y - pos * (pos + 1) / 2
    return u / (pos * (len(y) - pos))


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve of ``scores [n]`` for boolean ``labels [n]`` (Mann-Whitney, ties count half).

    Rank-based, O(n log n); ``probes.faithfulness.suite.auroc`` is the O(n^2) pairwise reference.
    """
    s, y = np.asarray(scores, dtype=float), np.asarray(labels)
    if s.ndim != 1 or s.shape != y.shape:
        raise WorkbenchError(f"scores and labels must be 1-D of one length, got shapes {s.shape} and {y.shape}")
    if not np.isin(y, (0, 1)).all() or not np.isfinite(s).all():
        raise WorkbenchError("labels must be 0/1 (or bool) and scores finite")
    if y.all() or not y.any():
        raise WorkbenchError("AUROC needs both a positive and a negative label")
    return float(auroc_matrix(s[:, None], y.astype(bool)[:, None])[0, 0])


def feature_labels(scores: np.ndarray, problems: list[Problem], top: int = 3, min_count: int = 10) -> list[list[dict]]:
    """The task variables each feature tracks best: per feature the ``top`` (variable, class) targets by AUROC
    of ``scores [n_texts, F]`` (e.g. each text's max activation) for ``variable == class`` (one-vs-rest for every
    class of every classification variable), each with ``n_pos`` texts of that class. ``[]`` for a feature whose
    score never varies (dead).

    Only classes with >= ``min_count`` texts in and out are candidates: with a handful of positives (say
    total0=18 in 2 texts of 200) a random feature reaches AUROC 1.0 by chance, which is no label.
    """
    from probes.variables import task_variables  # here: the probes package is only needed when labelling

    if len(problems) != len(scores):
        raise WorkbenchError(f"need one problem per text: {len(problems)} problems for {len(scores)} texts")
    targets, cols = [], []
    for v in task_variables(problems):
        for c in range(v.n_classes):  # n_classes 0 (the regression 'answer') has no classes
            y = v.labels == c
            if min(y.sum(), len(y) - y.sum()) >= max(min_count, 1):
                targets.append((v.name, c, int(y.sum())))
                cols.append(y)
    if not cols:
        return [[] for _ in range(scores.shape[1])]
    a = auroc_matrix(scores, np.stack(cols, 1))
    best = np.argsort(-a, axis=1, kind="stable")[:, :top]
    varies = scores.max(0) > scores.min(0)
    return [[{"variable": targets[j][0], "class": targets[j][1], "auroc": float(a[f, j]), "n_pos": targets[j][2]}
             for j in best[f]]
            if varies[f] else [] for f in range(scores.shape[1])]


def _logit_effects(model: HookedTransformer, sae: SAE, hook: str, k: int) -> tuple[str, list]:
    """``(kind, [values_pos, ids_pos, values_neg, ids_neg])`` each ``[F, k]``, or ``("none", [])``."""
    from sae_lens import Transcoder

    transcoder = isinstance(sae, Transcoder)  # reads one hook, writes the residual (an MLP's output) anyway
    w_dec = sae.W_dec.detach().float().cpu()
    if w_dec.shape[1] != model.cfg.d_model or (hook.rsplit(".", 1)[-1] in NOT_RESIDUAL and not transcoder):
        return "none", []
    kind = "direct" if transcoder or hook.endswith(RESIDUAL_WRITERS) else "as_if_final_residual"
    if model.cfg.normalization_type == "LN":  # LNPre (folded) has no weight, and W_U is centered already
        w_dec = w_dec - w_dec.mean(1, keepdim=True)
    if isinstance(getattr(getattr(model, "ln_final", None), "w", None), torch.Tensor):
        w_dec = w_dec * model.ln_final.w.detach().float().cpu()
    w_u, k = model.W_U.detach().float().cpu(), min(k, model.cfg.d_vocab)
    parts = []
    for s in range(0, len(w_dec), 1024):  # [F, d_vocab] at once would be GBs for a big SAE on a real vocabulary
        eff = w_dec[s : s + 1024] @ w_u
        parts.append((*eff.topk(k, dim=1), *(-eff).topk(k, dim=1)))
    vp, ip, vn, inn = (torch.cat(p) for p in zip(*parts))
    return kind, [vp, ip, -vn, inn]


def build_dashboards(model: HookedTransformer, sae: SAE, texts: list[str], problems: list[Problem] | None,
                     out_dir: str | Path, n_top: int = 20, context: int = 8, n_bins: int = 30, n_logits: int = 10,
                     progress: bool = True) -> Path:
    """Compute every feature's dashboard on ``texts`` and write it to ``out_dir`` (see the module docstring);
    ``problems`` (one per text, same order) adds task-variable labels. Returns ``out_dir``."""
    for name, value, least in (("n_top", n_top, 1), ("n_bins", n_bins, 1), ("n_logits", n_logits, 1),
                               ("context", context, 0)):
        if not isinstance(value, int) or value < least:
            raise WorkbenchError(f"{name} must be an integer >= {least}, got {value!r}")
    if problems is not None and len(problems) != len(texts):
        raise WorkbenchError(f"need one problem per text: {len(problems)} problems for {len(texts)} texts")
    if problems is not None:
        from probes.variables import task_variables

        task_variables(problems)  # refuse mixed column counts before the model runs
    hook = _hook_of(model, sae)
    acts, ids, where = feature_activations(model, sae, texts, progress=progress)
    n, n_feat = acts.shape
    text = where[:, 0]

    fired = acts > 0
    count = fired.sum(0)
    mean_act = (acts * fired).sum(0) / count.clamp(min=1)
    max_act = acts.max(0).values.clamp(min=0)
    # Histograms over each feature's nonzero acts, n_bins equal bins from its smallest to largest firing value.
    rows, feats = fired.nonzero(as_tuple=True)
    vals = acts[rows, feats].double()
    lo = torch.full((n_feat,), float("inf"), dtype=torch.float64).scatter_reduce(0, feats, vals, "amin")
    lo = torch.where(count > 0, lo, 0.0)
    span = (max_act.double() - lo).clamp(min=1e-12)
    bins = ((vals - lo[feats]) / span[feats] * n_bins).long().clamp(0, n_bins - 1)
    hist = torch.bincount(feats * n_bins + bins, minlength=n_feat * n_bins).reshape(n_feat, n_bins)
    edges = lo[:, None] + (max_act.double() - lo)[:, None] * torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)

    # Top examples: one topk down the token axis; each example's context is a window of rows of the same text.
    top_vals, top_rows = acts.topk(min(n_top, n), dim=0)  # [k, F]
    window = top_rows[..., None] + torch.arange(-context, RIGHT_CONTEXT + 1)  # [k, F, W]
    inside = (window >= 0) & (window < n)
    window = window.clamp(0, n - 1)
    inside &= text[window] == text[top_rows][..., None]
    ctx_ids = ids[window]
    ctx_acts = acts[window, torch.arange(n_feat)[None, :, None]]

    kind, logits = _logit_effects(model, sae, hook, n_logits)
    used = torch.unique(torch.cat([ctx_ids[inside], *(t.reshape(-1) for t in logits[1::2])]))
    vocab = dict(zip(used.tolist(), model.tokenizer.batch_decode([[i] for i in used.tolist()])))
    labels = feature_labels(_text_max(acts, text, len(texts)).numpy(), problems) if problems is not None else None

    examples = []
    tv, tr, ins, cid, cact = (t.tolist() for t in (top_vals, top_rows, inside, ctx_ids, ctx_acts))
    wh = where.tolist()
    for f in range(n_feat):  # assembling rows; the numbers were all computed above
        for r in range(len(tv)):
            if tv[r][f] <= 0:
                break
            keep = [j for j, ok in enumerate(ins[r][f]) if ok]
            examples.append({
                "feature": f, "rank": r, "text": wh[tr[r][f]][0], "position": wh[tr[r][f]][1],
                "activation": tv[r][f], "focus": keep.index(context),
                "tokens": [vocab[cid[r][f][j]] for j in keep], "acts": [cact[r][f][j] for j in keep]})
    lg = [t.tolist() for t in logits]
    features = []
    for f in range(n_feat):
        best = labels[f] if labels else []
        features.append({
            "id": f, "density": float(count[f]) / n, "mean_act": float(mean_act[f]), "max_act": float(max_act[f]),
            "dead": bool(count[f] == 0), "label": f"{best[0]['variable']}={best[0]['class']}" if best else None,
            "label_auroc": best[0]["auroc"] if best else None, "top_labels": best,
            "hist_edges": edges[f].tolist() if count[f] else [], "hist_counts": hist[f].tolist() if count[f] else [],
            "logits_pos": [vocab[i] for i in lg[1][f]] if lg else [], "logits_pos_values": lg[0][f] if lg else [],
            "logits_neg": [vocab[i] for i in lg[3][f]] if lg else [], "logits_neg_values": lg[2][f] if lg else []})
    out = Path(out_dir)
    sizes = {name: write_parquet(out / name, rows).stat().st_size
             for name, rows in (("features.parquet", features), ("examples.parquet", examples))}
    meta = sae.cfg.metadata
    write_json(out / "dashboard.json", {
        "format_version": FORMAT_VERSION, "hook": hook, "logit_effect": kind, "file_sizes": sizes,
        "model": {"name": model.cfg.model_name, "n_layers": model.cfg.n_layers, "d_model": model.cfg.d_model,
                  "d_vocab": model.cfg.d_vocab},
        "sae": {"architecture": sae.cfg.architecture(), "d_in": sae.cfg.d_in, "d_sae": n_feat,
                **{k: meta.get(k) for k in ("model_name", "release", "sae_id") if isinstance(meta.get(k), str)}},
        "n_texts": len(texts), "n_tokens": n, "n_features": n_feat, "n_dead": int((count == 0).sum()),
        "n_examples": len(examples), "labelled": problems is not None, "n_top": n_top, "context": context,
        "right_context": RIGHT_CONTEXT, "n_bins": n_bins, "n_logits": n_logits})
    return out


def _text_max(acts: Tensor, text: Tensor, n_texts: int) -> Tensor:
    """``[n_texts, F]`` each text's max activation (0 where a feature never fires in it)."""
    index = text[:, None].expand(-1, acts.shape[1])
    return torch.zeros(n_texts, acts.shape[1]).scatter_reduce_(0, index, acts, "amax")


@dataclass
class Dashboard:
    """A built dashboard, read back: ``meta`` (dashboard.json), ``features`` / ``examples`` (Arrow tables)."""

    meta: dict
    features: pa.Table
    examples: pa.Table
    bounds: np.ndarray
    """Feature i's examples are rows ``bounds[i]:bounds[i + 1]`` of ``examples``."""

    def __len__(self) -> int:
        return self.features.num_rows

    def feature(self, i: int) -> dict:
        """Feature ``i``'s row, with ``examples``: its top examples, best first."""
        if not 0 <= int(i) < len(self):
            raise WorkbenchError(f"feature {i} does not exist: this SAE has features 0..{len(self) - 1}")
        row = self.features.slice(int(i), 1).to_pylist()[0]
        row["examples"] = self.examples.slice(self.bounds[i], self.bounds[i + 1] - self.bounds[i]).to_pylist()
        return row

    def table(self) -> pd.DataFrame:
        """One row per feature, scalar columns only: what a UI sorts and filters."""
        return self.features.select(list(TABLE_COLUMNS)).to_pandas()


def load_dashboard(out_dir: str | Path) -> Dashboard:
    import pyarrow.parquet as pq

    out = Path(out_dir)
    files = [out / n for n in ("dashboard.json", "features.parquet", "examples.parquet")]
    if missing := [p.name for p in files if not p.is_file()]:
        raise WorkbenchError(f"no dashboard in {out}: missing {', '.join(missing)}; build one with build_dashboards")
    meta = json.loads(files[0].read_text())
    features, examples = pq.read_table(files[1]), pq.read_table(files[2])
    # Each file is replaced atomically, but not the three together: sizes recorded by the json written last tell
    # a complete build from one killed half-way through a rebuild.
    sizes = {p.name: p.stat().st_size for p in files[1:]}
    if (meta.get("format_version") != FORMAT_VERSION or meta.get("file_sizes") != sizes
            or features.num_rows != meta.get("n_features") or examples.num_rows != meta.get("n_examples")):
        raise WorkbenchError(f"the dashboard in {out} is incomplete, mixed from two builds or of another format "
                             f"version (this one reads {FORMAT_VERSION}): rebuild it")
    # An SAE with every feature dead has no examples, and Arrow stores an empty row list with no columns at all.
    ids = examples.column("feature").to_numpy() if examples.num_rows else np.zeros(0, int)
    bounds = np.searchsorted(ids, np.arange(len(features) + 1))
    return Dashboard(meta, features, examples, bounds)
