"""Tuned lens (Belrose et al. 2023, "Eliciting Latent Predictions from Transformers with the Tuned Lens").

The logit lens reads the stream entering block L as if it were the last layer's; early layers write the
prediction in another basis, so that readout is biased. The tuned lens puts a learned affine translator per layer
in front of the final LayerNorm and unembedding, ``lens_L(h) = unembed(ln_final(h + h @ weight[L].T + bias[L]))``
(``weight`` in nn.Linear's [out, in] layout), trained with the model frozen to minimise KL(p_final || p_lens_L)
averaged over positions (the paper's eq. 3). Translators start at zero, so an untrained lens is the logit lens:
the final LN is computed fresh on each (translated) stream, as TransformerLens's ``accumulated_resid(apply_ln=
True)`` does for ``workbench.lens.logit_lens``, and the two agree row for row (a unit test holds them to it).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from einops import einsum
from jaxtyping import Float, Int
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from workbench.cache_store import CacheReader
from workbench.errors import WorkbenchError
from workbench.io import atomic_dir
from workbench.lens import LensReadout, readout_from_log_probs
from workbench.models.checkpoint import load_safetensors_checked, refuse_pickle, weights_sha256
from workbench.models.tokenizer import tokenize_prompts

log = logging.getLogger(__name__)
FORMAT = "workbench-tuned-lens"
FORMAT_VERSION = 1
WEIGHTS_FILE = "lens.safetensors"
HELD_OUT_FRACTION = 0.1
"""Share of a cache's prompts (the last ones) kept out of training to measure the lens on."""


@dataclass(frozen=True)
class TunedLens:
    weight: Float[Tensor, "layer d_model d_model"]
    """A_L as [d_out, d_in]: the translator of layer L is h + h @ weight[L].T + bias[L]."""
    bias: Float[Tensor, "layer d_model"]
    model_sha256: str
    """``weights_sha256`` of the model the lens was trained on."""

    @property
    def n_layers(self) -> int:
        return self.weight.shape[0]

    @property
    def d_model(self) -> int:
        return self.weight.shape[-1]

    @classmethod
    def identity(cls, model: HookedTransformer) -> TunedLens:
        """The untrained lens (zero translators): the logit lens with a fresh final LayerNorm."""
        n, d = model.cfg.n_layers, model.cfg.d_model
        kw = {"device": model.cfg.device, "dtype": model.cfg.dtype}
        return cls(torch.zeros(n, d, d, **kw), torch.zeros(n, d, **kw), weights_sha256(model))

    def translate(self, layer: int, resid: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        if not 0 <= layer < self.n_layers:
            raise WorkbenchError(f"layer must be in 0..{self.n_layers - 1}, got {layer}")
        w, b = self.weight[layer].to(resid), self.bias[layer].to(resid)
        return resid + einsum(resid, w, "... d_in, d_out d_in -> ... d_out") + b


def lens_hooks(model: HookedTransformer) -> list[str]:
    """Hooks a training cache must hold: every layer's input and the last layer's output (the target)."""
    n = model.cfg.n_layers
    return [f"blocks.{layer}.hook_resid_pre" for layer in range(n)] + [f"blocks.{n - 1}.hook_resid_post"]


def _log_probs(
    model: HookedTransformer, resid: Float[Tensor, "layer row d_model"]
) -> Float[Tensor, "layer row d_vocab"]:
    # Called directly, ln_final takes its scale from this stream: the fresh LN the translators are trained for.
    return model.unembed(model.ln_final(resid)).log_softmax(-1)


def _layer_kl(
    model: HookedTransformer, lens: TunedLens | None, rows: Float[Tensor, "hook row d_model"]
) -> Float[Tensor, " layer"]:
    """Mean over rows of KL(p_final || p_lens) per layer; ``rows`` stacks ``lens_hooks(model)`` in order."""
    pre = rows[:-1] if lens is None else torch.stack([lens.translate(i, r) for i, r in enumerate(rows[:-1])])
    target = _log_probs(model, rows[-1:])  # the model's own output distribution
    return (target.exp() * (target - _log_probs(model, pre))).sum(-1).mean(-1)


def _check_fits(model: HookedTransformer, lens: TunedLens) -> None:
    if (lens.n_layers, lens.d_model) != (model.cfg.n_layers, model.cfg.d_model):
        raise WorkbenchError(f"the tuned lens has n_layers={lens.n_layers}, d_model={lens.d_model}; the model has "
                             f"n_layers={model.cfg.n_layers}, d_model={model.cfg.d_model}")


@torch.inference_mode()
def lens_kl(
    model: HookedTransformer, lens: TunedLens | None, tokens: Int[Tensor, "batch pos"]
) -> Float[Tensor, " layer"]:
    """KL(final || lens) in nats per layer, averaged over every position of ``tokens`` (pass unpadded prompts);
    ``lens=None`` is the logit lens with a fresh final LayerNorm."""
    if lens is not None:
        _check_fits(model, lens)
    hooks = lens_hooks(model)
    _, cache = model.run_with_cache(tokens, names_filter=hooks)
    return _layer_kl(model, lens, torch.stack([cache[h].flatten(0, 1) for h in hooks]))


def _check_cache(model: HookedTransformer, ours: str, cache: CacheReader) -> list[str]:
    """The lens hooks in order, once the cache is known to hold them for these weights (digest ``ours``)."""
    theirs = cache.manifest.get("model", {}).get("weights_sha256")
    if theirs != ours:
        raise WorkbenchError(f"the cache {cache.dir} was made from other weights (sha256 {str(theirs)[:12]}, model "
                             f"{cache.manifest.get('model', {}).get('name')!r}) than this model ({ours[:12]}); "
                             "cache this model's activations")
    hooks = lens_hooks(model)
    if missing := [h for h in hooks if h not in cache.hooks]:
        raise WorkbenchError(f"the cache {cache.dir} lacks hooks {', '.join(missing)}; the tuned lens needs every "
                             f"layer's input and the last output: workbench cache MODEL ... --hooks "
                             f"'blocks.*.hook_resid_pre' blocks.{model.cfg.n_layers - 1}.hook_resid_post "
                             "(--positions=all for texts of one length, else positions from the end)")
    return hooks


def _shard_rows(
    cache: CacheReader, hooks: list[str], lo: int, hi: int, g: torch.Generator | None = None
) -> Iterator[Float[Tensor, "hook row d_model"]]:
    """Per shard, ``[hook, row, d_model]``: every real cached position of prompts ``lo..hi-1``, all hooks aligned
    row for row; shards in an order drawn from ``g`` if given. One shard of every hook is in memory at a time.

    An all-positions cache (``positions=None``) right-pads shorter prompts with zero rows up to the longest one;
    those rows are no positions of any prompt (on a zero stream the logit lens and the final layer agree, KL 0,
    so they would pull the logit lens's KL towards 0 and train the translators on nothing) and are dropped here
    by the shard's ``lengths``: neither the loss nor the reported KL ever sees them. Caches of positions counted
    from the end hold real positions only.
    """
    all_positions = cache.manifest["positions"] is None
    order = torch.randperm(len(cache.shards), generator=g).tolist() if g is not None else range(len(cache.shards))
    for k in order:
        s = cache.shards[k]
        a, b = max(lo - s["start"], 0), min(hi - s["start"], s["count"])
        if a < b:
            with safe_open(str(cache.dir / s["file"]), "pt") as f:
                acts = torch.stack([f.get_slice(h)[a:b] for h in hooks])  # [hook, prompt, pos, d_model]
                if not all_positions:
                    yield acts.flatten(1, 2)
                    continue
                lengths = f.get_slice("lengths")[a:b]
            real = torch.arange(acts.shape[2])[None, :] < lengths[:, None]  # [prompt, pos]
            yield acts[:, real]


def train_tuned_lens(
    model: HookedTransformer, cache: CacheReader, steps: int = 500, lr: float = 1e-3, batch_size: int = 512,
    seed: int = 0, progress: bool = True,
) -> tuple[TunedLens, list[dict]]:
    """Train every layer's translator at once with Adam on a cache holding ``lens_hooks(model)``.

    The last ``HELD_OUT_FRACTION`` of the cache's prompts are held out; the report gives, per layer, the KL in
    nats of the logit lens (fresh LN) and of the tuned lens on them. Deterministic for a fixed seed on the CPU.
    """
    training = TunedLens.identity(model)  # zero translators: training starts from the logit lens
    hooks = _check_cache(model, training.model_sha256, cache)
    n_train = len(cache) - max(1, round(len(cache) * HELD_OUT_FRACTION))
    if n_train < 1 or steps < 1 or batch_size < 1 or lr <= 0:
        raise WorkbenchError(f"need a cache of at least 2 prompts (it has {len(cache)}) and positive steps, "
                             f"batch_size and lr (got {steps}, {batch_size}, {lr})")
    if not cache.complete:
        log.warning("the cache %s is incomplete; training on its %d complete prompts", cache.dir, len(cache))
    weight, bias = training.weight.requires_grad_(), training.bias.requires_grad_()
    # Adam rather than the paper's SGD with Nesterov momentum: at these sizes it needs no learning-rate schedule.
    opt = torch.optim.Adam([weight, bias], lr=lr)
    g = torch.Generator().manual_seed(seed)

    def batches() -> Iterator[Tensor]:
        while True:  # cycle over the training prompts, reshuffled every pass
            for rows in _shard_rows(cache, hooks, 0, n_train, g):
                yield from rows[:, torch.randperm(rows.shape[1], generator=g)].split(batch_size, dim=1)

    stream = batches()
    for _ in tqdm(range(steps), desc="tuned lens", disable=not progress):
        rows = next(stream).to(model.cfg.device, model.cfg.dtype)
        # Layers have disjoint parameters, so the sum trains each translator as if alone. autograd.grad (not
        # backward) leaves the frozen model's .grad untouched.
        loss = _layer_kl(model, training, rows).sum()
        weight.grad, bias.grad = torch.autograd.grad(loss, [weight, bias])
        opt.step()
    lens = TunedLens(weight.detach(), bias.detach(), training.model_sha256)

    sums, n = torch.zeros(2, model.cfg.n_layers, dtype=torch.float64), 0
    with torch.inference_mode():
        for shard in _shard_rows(cache, hooks, n_train, len(cache)):
            for rows in shard.split(batch_size, dim=1):
                rows = rows.to(model.cfg.device, model.cfg.dtype)
                kl = torch.stack([_layer_kl(model, None, rows), _layer_kl(model, lens, rows)])
                sums += kl.double().cpu() * rows.shape[1]
                n += rows.shape[1]
    report = [{"layer": layer, "hook": hooks[layer], "kl_logit_lens": float(sums[0, layer] / n),
               "kl_tuned_lens": float(sums[1, layer] / n)} for layer in range(model.cfg.n_layers)]
    log.info("tuned lens on %d held-out rows: %s", n, report)
    return lens, report


def save_tuned_lens(lens: TunedLens, directory: str | Path, report: list[dict] | None = None) -> Path:
    """Write ``lens.safetensors`` (weight, bias) and ``config.json`` (and ``report.json``) atomically; an
    existing ``directory`` is replaced whole."""

    def write(tmp: Path) -> None:
        tensors = {"weight": lens.weight.detach().cpu().contiguous(), "bias": lens.bias.detach().cpu().contiguous()}
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        config = {"format": FORMAT, "format_version": FORMAT_VERSION, "model_sha256": lens.model_sha256,
                  "n_layers": lens.n_layers, "d_model": lens.d_model,
                  "translator": "h + h @ weight[L].T + bias[L], then the model's ln_final and unembed",
                  "hooks": [f"blocks.{layer}.hook_resid_pre" for layer in range(lens.n_layers)]}
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        if report is not None:
            (tmp / "report.json").write_text(json.dumps(report, indent=2) + "\n")

    return atomic_dir(directory, write)


def load_tuned_lens(directory: str | Path, model: HookedTransformer | None = None) -> TunedLens:
    """Load a lens written by :func:`save_tuned_lens` (safetensors only). With ``model``, refuse a lens of
    other shapes or trained on other weights, and move it to the model's device and dtype."""
    directory = Path(directory)
    try:
        config = json.loads((directory / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        config = None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise WorkbenchError(f"{directory} is not a tuned lens (config.json with format={FORMAT!r})")
    if not (directory / WEIGHTS_FILE).is_file():
        for path in directory.iterdir():
            refuse_pickle(path)
        raise WorkbenchError(f"{directory} has config.json but no {WEIGHTS_FILE}")
    t = load_safetensors_checked(directory / WEIGHTS_FILE)
    n, d = config.get("n_layers"), config.get("d_model")
    if set(t) != {"weight", "bias"} or t["weight"].shape != (n, d, d) or t["bias"].shape != (n, d):
        raise WorkbenchError(f"{directory / WEIGHTS_FILE} does not hold weight [{n}, {d}, {d}] and bias [{n}, {d}] "
                             "as its config.json says")
    lens = TunedLens(t["weight"], t["bias"], str(config.get("model_sha256")))
    if model is not None:
        _check_fits(model, lens)
        if lens.model_sha256 != (ours := weights_sha256(model)):
            raise WorkbenchError(f"the tuned lens in {directory} was trained on other weights (sha256 "
                                 f"{lens.model_sha256[:12]}) than this model ({ours[:12]}); train one for this model")
        kw = {"device": model.cfg.device, "dtype": model.cfg.dtype}
        lens = TunedLens(lens.weight.to(**kw), lens.bias.to(**kw), lens.model_sha256)
    return lens


@torch.inference_mode()
def tuned_lens_readout(
    model: HookedTransformer, lens: TunedLens, prompt: str | Int[Tensor, " pos"],
    target: int | Int[Tensor, " pos"] | None = None, k: int = 5,
) -> LensReadout:
    """:func:`workbench.lens.logit_lens` through the tuned lens: rows ``L_pre`` are translated, the last row
    ``final_post`` is the model's own output. Checks shapes only; :func:`load_tuned_lens` checks the weights."""
    _check_fits(model, lens)
    if isinstance(prompt, str):
        tokens = tokenize_prompts(model, [prompt])[0].reshape(1, -1)  # refuses, never truncates, a long prompt
    elif prompt.dim() > 2 or (prompt.dim() == 2 and prompt.shape[0] != 1):
        raise WorkbenchError(f"the lens reads one prompt: tokens of shape [pos] or [1, pos], got {tuple(prompt.shape)}")
    else:
        tokens = prompt.reshape(1, -1)
    _, cache = model.run_with_cache(tokens, names_filter=lens_hooks(model))
    resid, labels = cache.accumulated_resid(apply_ln=False, return_labels=True)  # [layer + 1, 1, pos, d_model]
    resid = torch.stack([lens.translate(i, r) for i, r in enumerate(resid[:-1, 0])] + [resid[-1, 0]])
    return readout_from_log_probs(labels, _log_probs(model, resid), target, k)
