"""SAE and transcoder quality, measured as SAELens measures it, on held-out prompts.

- ``l0``: mean number of active features per token.
- ``explained_variance``: 1 - E||x - x_hat||^2 / E||x - E[x]||^2 over all tokens (SAELens's current definition,
  computed by its own ``ExplainedVarianceCalculator``; the per-batch "legacy" ratio is not reported).
- ``mse``: E||x - x_hat||^2 (summed over dimensions, averaged over tokens, SAELens's training convention);
  ``cossim``: mean cosine between x and x_hat.
- ``dead_fraction``: features that never fire on the eval tokens; ``dense_fraction``: features firing on more than
  ``dense_threshold`` (default 10%) of them.
- ``ce_recovered`` = (CE_ablation - CE_sae) / (CE_ablation - CE_clean): next-token cross-entropy with the hook's
  activations replaced by the reconstruction (every position but the BOS, as SAELens does), against zero-ablating
  the hook (every position, as SAELens does) and the clean model. 1 means the SAE loses nothing; 0 means it is no
  better than deleting the hook. For a transcoder the MLP's output is replaced by the transcoder applied to the
  MLP's input.

Tokens are every position after the BOS of every prompt; CE is averaged over predictions made from those tokens.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch
from sae_lens.evals import ExplainedVarianceCalculator
from torch import Tensor
from transformer_lens import HookedTransformer

from workbench.errors import WorkbenchError
from workbench.figures import scatter_lines
from workbench.io import write_json, write_parquet
from workbench.models.tokenizer import tokenize_prompts
from workbench.saes import LoadedSAE, SAERecipe, check_fits, load_sae, train_sae


def _groups(toks: list[Tensor], batch_size: int) -> list[Tensor]:
    by_len: dict[int, list[int]] = defaultdict(list)
    for i, t in enumerate(toks):
        by_len[len(t)].append(i)
    return [torch.stack([toks[i] for i in idx[s : s + batch_size]])
            for _, idx in sorted(by_len.items()) for s in range(0, len(idx), batch_size)]


@torch.inference_mode()
def evaluate_sae(
    model: HookedTransformer,
    loaded: LoadedSAE,
    texts: Sequence[str],
    batch_size: int = 256,
    dense_threshold: float = 0.1,
    skip_first: int = 1,
) -> dict:
    """The metrics in the module docstring for ``loaded`` (from :func:`workbench.saes.load_sae`) on ``texts``."""
    if not texts:
        raise WorkbenchError("no prompts to evaluate on")
    check_fits(loaded, model)  # an SAE loaded without the model (or built in memory) is checked here
    sae, hook_in = loaded.sae, loaded.hook
    hook_target = loaded.hook_out or loaded.hook  # what is reconstructed and replaced
    toks = tokenize_prompts(model, list(texts))
    if min(len(t) for t in toks) <= skip_first + 1:
        raise WorkbenchError(f"every prompt needs more than {skip_first + 1} tokens to be scored")
    ev = ExplainedVarianceCalculator()
    fired = torch.zeros(sae.cfg.d_sae)
    sums = defaultdict(float)
    n_tok = n_ce = 0
    for batch in _groups(toks, batch_size):
        stash: dict[str, Tensor] = {}

        def keep_in(act: Tensor, hook) -> None:
            stash["in"] = act

        def replace(act: Tensor, hook) -> Tensor:
            source = stash.get("in", act)  # a transcoder reads the MLP input stashed earlier; an SAE its own hook
            feats = sae.encode(source[:, skip_first:].float())
            recon = sae.decode(feats).to(act.dtype)
            stash["feats"], stash["recon"], stash["target"] = feats, recon, act[:, skip_first:].clone()
            out = act.clone()
            out[:, skip_first:] = recon
            return out

        def ablate(act: Tensor, hook) -> Tensor:
            return torch.zeros_like(act)

        # The prediction made at a position is scored when that position is an SAE-read token.
        ce_mask = torch.zeros(batch.shape[0], batch.shape[1] - 1, dtype=torch.bool)
        ce_mask[:, skip_first:] = True
        clean = model(batch, return_type="loss", loss_per_token=True)
        hooks = [(hook_in, keep_in), (hook_target, replace)] if loaded.is_transcoder else [(hook_in, replace)]
        with_sae = model.run_with_hooks(batch, return_type="loss", loss_per_token=True, fwd_hooks=hooks)
        ablated = model.run_with_hooks(batch, return_type="loss", loss_per_token=True,
                                       fwd_hooks=[(hook_target, ablate)])
        for name, loss in (("ce_clean", clean), ("ce_sae", with_sae), ("ce_ablation", ablated)):
            sums[name] += loss[ce_mask].double().sum().item()
        n_ce += int(ce_mask.sum())

        x, x_hat, feats = (stash[k].flatten(0, 1).float() for k in ("target", "recon", "feats"))
        ev.add_batch(sae_output=x_hat, hidden_acts=x)
        active = feats > 0
        fired += active.sum(0).float()
        sums["l0"] += active.sum().item()
        sums["mse"] += (x - x_hat).pow(2).sum(-1).double().sum().item()
        sums["cossim"] += torch.nn.functional.cosine_similarity(x, x_hat, dim=-1).double().sum().item()
        n_tok += len(x)
    density = fired / n_tok
    ce = {k: sums[k] / n_ce for k in ("ce_clean", "ce_sae", "ce_ablation")}
    gap = ce["ce_ablation"] - ce["ce_clean"]
    return {
        "hook": hook_in, "hook_out": loaded.hook_out, "d_sae": sae.cfg.d_sae, "architecture": sae.cfg.architecture(),
        "n_prompts": len(texts), "n_tokens": n_tok,
        "l0": sums["l0"] / n_tok, "explained_variance": ev.compute(), "mse": sums["mse"] / n_tok,
        "cossim": sums["cossim"] / n_tok, "dead_fraction": float((density == 0).float().mean()),
        "dense_fraction": float((density > dense_threshold).float().mean()), "dense_threshold": dense_threshold,
        **ce, "ce_recovered": (ce["ce_ablation"] - ce["ce_sae"]) / gap if abs(gap) > 1e-12 else float("nan"),
        "density": density.tolist(),
    }


SWEPT = {"topk": "k", "batchtopk": "k", "standard": "l1_coefficient", "jumprelu": "l0_coefficient"}


def run_sweep(
    model: HookedTransformer,
    model_name: str,
    cache_dir: str | Path,
    hook: str,
    values: Sequence[float],
    eval_texts: Sequence[str],
    out_dir: str | Path,
    base: SAERecipe = SAERecipe(),
    progress: bool = True,
) -> list[dict]:
    """Train one SAE per value of the architecture's sparsity knob (k, or the L1/L0 coefficient), evaluate each
    on ``eval_texts``, and write ``sweep.parquet``, ``sweep.json`` and ``sweep.html/png`` (L0 against explained
    variance and CE recovered). Every SAE is kept (``out_dir/<arch>-<value>``); finished ones are reused."""
    out_dir = Path(out_dir)
    knob = SWEPT["standard" if base.transcoder else base.arch]
    rows = []
    for v in values:
        recipe = replace(base, **{knob: int(v) if knob == "k" else float(v)})
        sae_dir = out_dir / f"{'transcoder' if base.transcoder else base.arch}-{v:g}"
        if not (sae_dir / "cfg.json").is_file():
            train_sae(model, model_name, cache_dir, hook, sae_dir, recipe, progress=progress)
        metrics = evaluate_sae(model, load_sae(sae_dir, model), eval_texts)
        metrics.pop("density")
        rows.append({"knob": knob, "value": float(v), "dir": sae_dir.name, **metrics})
    write_parquet(out_dir / "sweep.parquet", rows)
    write_json(out_dir / "sweep.json", rows)
    labels = [f"{knob}={r['value']:g}" for r in rows]
    l0 = [r["l0"] for r in rows]
    scatter_lines({"explained variance": (l0, [r["explained_variance"] for r in rows], labels),
                   "CE recovered": (l0, [r["ce_recovered"] for r in rows], labels)},
                  f"{model_name} {hook}: {base.arch if not base.transcoder else 'transcoder'} sweep", "L0 (active features per token)",
                  "fraction", out_dir / "sweep", logx=True)
    return rows
