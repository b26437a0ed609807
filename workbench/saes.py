"""Sparse autoencoders and transcoders, trained by SAELens's own trainer on our activation caches.

SAELens does the modelling: its training SAE classes (TopK, BatchTopK, JumpReLU, standard L1) and ``SAETrainer``
(optimiser, LR and coefficient schedules, dead-feature tracking, end-of-training folding). Our part is feeding it
from an activation cache (``workbench cache --positions=all``), checkpointing in safetensors + JSON so a killed
run resumes bit for bit (SAELens's own trainer state is a pickle, which we never write or read), stopping on a
non-finite loss with the last good checkpoint kept, and recording which model and hook an SAE belongs to so it
is refused anywhere else.

A finished SAE is a plain SAELens directory (``cfg.json`` + ``sae_weights.safetensors``):
``sae_lens.SAE.load_from_disk(dir)`` loads it. ``cfg.json``'s metadata carries ``model_name``, ``hook_name`` and
our ``weights_sha256``; ``workbench.json`` beside it records the recipe and the training run.

Transcoders (MLP input -> MLP output, the replacement layers attribution graphs need) train the same way: a
batch is ``[resid_mid | mlp_out]`` side by side, and :class:`TrainingTranscoder` (SAELens's standard ReLU SAE
with its L1 penalty) encodes the first half and is scored on the second. They are saved as SAELens
``Transcoder`` directories reading ``blocks.L.hook_resid_mid`` and writing ``blocks.L.hook_mlp_out``, the hooks
circuit-tracer's TransformerLens replacement model uses.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from sae_lens import (
    SAE,
    BatchTopKTrainingSAE,
    BatchTopKTrainingSAEConfig,
    JumpReLUTrainingSAE,
    JumpReLUTrainingSAEConfig,
    SAETrainer,
    StandardTrainingSAE,
    StandardTrainingSAEConfig,
    TopKTrainingSAE,
    TopKTrainingSAEConfig,
    Transcoder,
    TranscoderConfig,
)
from sae_lens.config import SAETrainerConfig
from sae_lens.saes.sae import SAEMetadata, TrainingSAE, TrainStepInput, TrainStepOutput
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from workbench.cache_store import CacheReader
from workbench.errors import NonFiniteLoss, WorkbenchError
from workbench.io import atomic_dir, write_json
from workbench.models.checkpoint import weights_sha256
from workbench.models.trainer import deterministic_cpu, flat_optimizer_state, load_flat_optimizer_state

log = logging.getLogger(__name__)

ARCHS = ("topk", "batchtopk", "jumprelu", "standard")
TRANSCODER_IN, TRANSCODER_OUT = "hook_resid_mid", "hook_mlp_out"


@dataclass(frozen=True)
class SAERecipe:
    """What to train. ``k`` is used by topk/batchtopk, ``l1_coefficient`` by standard SAEs and transcoders,
    ``l0_coefficient`` by jumprelu."""

    arch: str = "topk"
    d_sae: int = 1024
    k: int = 16
    l1_coefficient: float = 5.0
    l0_coefficient: float = 1.0
    lr: float = 4e-4
    batch_size: int = 1024
    total_tokens: int = 2_000_000
    seed: int = 0
    skip_first: int = 1
    """Leading positions of every prompt left out (1 = the BOS, whose norm is an outlier)."""
    checkpoint_every: int = 500
    num_threads: int = 2
    transcoder: bool = False

    def check(self) -> None:
        if self.transcoder and self.arch != "standard":
            raise WorkbenchError(f"transcoders are trained as standard ReLU + L1 (what SAELens's Transcoder and "
                                 f"circuit-tracer load); --arch {self.arch} is not available for them")
        if self.arch not in ARCHS:
            raise WorkbenchError(f"--arch must be one of {', '.join(ARCHS)}, got {self.arch!r}")
        for name in ("d_sae", "k", "batch_size", "total_tokens", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise WorkbenchError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.arch in ("topk", "batchtopk") and self.k > self.d_sae:
            raise WorkbenchError(f"k ({self.k}) cannot exceed d_sae ({self.d_sae})")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise WorkbenchError(f"lr must be a positive number, got {self.lr}")


class TrainingTranscoder(StandardTrainingSAE):
    """SAELens's standard training SAE used as a transcoder: each batch row is ``[x_in | x_out]``; the features
    are computed from ``x_in`` and the decoder is scored on ``x_out``. Everything else (L1 weighted by decoder
    norm, the trainer's bookkeeping) is SAELens's."""

    def training_forward_pass(self, step_input: TrainStepInput) -> TrainStepOutput:
        x_in, x_out = step_input.sae_in.split(self.cfg.d_in, dim=-1)
        feature_acts, hidden_pre = self.encode_with_hidden_pre(x_in)
        out = self.decode(feature_acts)
        mse = self.mse_loss_fn(out, x_out).sum(dim=-1).mean()
        aux = self.calculate_aux_loss(step_input=replace(step_input, sae_in=x_in), feature_acts=feature_acts,
                                      hidden_pre=hidden_pre, sae_out=out)
        return TrainStepOutput(sae_in=x_out, sae_out=out, feature_acts=feature_acts, hidden_pre=hidden_pre,
                               loss=mse + sum(aux.values()), losses={"mse_loss": mse, **aux})


def _training_sae(recipe: SAERecipe, d_in: int, metadata: SAEMetadata) -> TrainingSAE:
    # Inputs are scaled to mean norm sqrt(d_in) during training (SAELens's "expected_average_only_in") so one
    # L1/L0 coefficient or learning rate means the same on every model; the factor is folded into the weights
    # at the end, so the saved SAE reads raw activations.
    common = dict(d_in=d_in, d_sae=recipe.d_sae, dtype="float32", device="cpu", metadata=metadata,
                  normalize_activations="expected_average_only_in")
    if recipe.transcoder:
        return TrainingTranscoder(StandardTrainingSAEConfig(**common, l1_coefficient=recipe.l1_coefficient,
                                                            apply_b_dec_to_input=False))
    if recipe.arch == "topk":
        return TopKTrainingSAE(TopKTrainingSAEConfig(**common, k=recipe.k))
    if recipe.arch == "batchtopk":
        return BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(**common, k=recipe.k))
    if recipe.arch == "jumprelu":
        return JumpReLUTrainingSAE(JumpReLUTrainingSAEConfig(**common, l0_coefficient=recipe.l0_coefficient))
    return StandardTrainingSAE(StandardTrainingSAEConfig(**common, l1_coefficient=recipe.l1_coefficient))


def activation_stream(reader: CacheReader, hooks: list[str], batch_size: int, seed: int,
                      skip_first: int = 1) -> Iterator[Tensor]:
    """Endless ``[batch_size, d * len(hooks)]`` batches: the hooks' rows side by side, reshuffled every epoch
    (epoch ``e`` uses seed ``seed + e``; shard order and rows within a shard are permuted, so memory stays one
    shard). Deterministic, so a resumed run replays the same stream."""
    for epoch in itertools.count():
        g = torch.Generator().manual_seed(seed + epoch)
        carry: Tensor | None = None
        for k in torch.randperm(len(reader.shards), generator=g).tolist():
            rows = torch.cat([reader.shard_rows(h, k, skip_first) for h in hooks], dim=-1)
            rows = rows[torch.randperm(len(rows), generator=g)]
            if carry is not None:
                rows = torch.cat([carry, rows])
            n_full = len(rows) // batch_size * batch_size
            yield from rows[:n_full].float().split(batch_size)
            carry = rows[n_full:]


def _scaling_factor(stream: Iterator[Tensor], n_batches: int = 50) -> float:
    """SAELens's "expected_average_only_in" factor, sqrt(d) / mean ||x||, over ``n_batches`` batches (computed
    here only to skip SAELens's progress bar for a sub-second estimate)."""
    batches = list(itertools.islice(stream, n_batches))
    x = torch.cat(batches)
    if not torch.isfinite(x).all():
        raise WorkbenchError("the cache has non-finite activations (nan or inf); an SAE cannot be trained on them")
    return float(x.shape[-1] ** 0.5 / x.norm(dim=-1).mean())


def transcoder_hooks(layer: int) -> tuple[str, str]:
    return f"blocks.{layer}.{TRANSCODER_IN}", f"blocks.{layer}.{TRANSCODER_OUT}"


def _check_cache(reader: CacheReader, model: HookedTransformer, hooks: list[str]) -> None:
    digest = reader.manifest["model"]["weights_sha256"]
    if digest != weights_sha256(model):
        raise WorkbenchError(f"the cache {reader.dir} was made with model {reader.manifest['model']['name']} "
                             f"(weights {digest[:12]}), not this model (weights {weights_sha256(model)[:12]})")
    for h in hooks:
        if h not in reader.hooks:
            raise WorkbenchError(f"hook {h!r} is not in the cache {reader.dir}; cached: {', '.join(reader.hooks)}")
    if reader.manifest["positions"] is not None:
        raise WorkbenchError(f"the cache {reader.dir} holds positions {reader.manifest['positions']} only; SAEs "
                             "train on every position: make it with `workbench cache ... --positions=all`")
    if not reader.complete:
        raise WorkbenchError(f"the cache {reader.dir} is incomplete; rerun the same `workbench cache` to finish it")


def _save_state(path: Path, trainer: SAETrainer, seconds: float, history: list[dict]) -> None:
    """Everything a resumed run needs, as safetensors + JSON (SAELens's ``save_trainer_state`` pickles)."""
    def write(tmp: Path) -> None:
        save_file({k: v.contiguous() for k, v in trainer.sae.state_dict().items()}, str(tmp / "sae.safetensors"))
        flat, param_groups = flat_optimizer_state(trainer.optimizer)
        flat |= {"trainer.act_freq_scores": trainer.act_freq_scores,
                 "trainer.n_forward_passes_since_fired": trainer.n_forward_passes_since_fired}
        save_file(flat, str(tmp / "optimizer.safetensors"))
        meta = {"param_groups": param_groups, "lr_scheduler": trainer.lr_scheduler.state_dict(),
                "coefficients": {n: s.__dict__ for n, s in trainer.coefficient_schedulers.items()},
                "n_training_steps": trainer.n_training_steps, "n_training_samples": trainer.n_training_samples,
                "n_frac_active_samples": trainer.n_frac_active_samples, "seconds": seconds, "history": history,
                "scaling_factor": trainer.activation_scaler.scaling_factor}
        (tmp / "state.json").write_text(json.dumps(meta))
    atomic_dir(path, write)


def _load_state(path: Path, trainer: SAETrainer) -> tuple[float, list[dict]]:
    meta = json.loads((path / "state.json").read_text())
    trainer.sae.load_state_dict(load_file(str(path / "sae.safetensors")))
    flat = load_file(str(path / "optimizer.safetensors"))
    trainer.act_freq_scores = flat.pop("trainer.act_freq_scores")
    trainer.n_forward_passes_since_fired = flat.pop("trainer.n_forward_passes_since_fired")
    load_flat_optimizer_state(trainer.optimizer, flat, meta["param_groups"])
    trainer.lr_scheduler.load_state_dict(meta["lr_scheduler"])
    for name, d in meta["coefficients"].items():
        trainer.coefficient_schedulers[name].__dict__.update(d)
    trainer.n_training_steps = meta["n_training_steps"]
    trainer.n_training_samples = meta["n_training_samples"]
    trainer.n_frac_active_samples = meta["n_frac_active_samples"]
    trainer.activation_scaler.scaling_factor = meta["scaling_factor"]
    return meta["seconds"], meta["history"]


def _inference_dir(trainer: SAETrainer, recipe: SAERecipe, out: Path, provenance: dict) -> Path:
    sae = trainer.sae

    def write(tmp: Path) -> None:
        if recipe.transcoder:
            cfg = TranscoderConfig(d_in=sae.cfg.d_in, d_sae=sae.cfg.d_sae, d_out=sae.cfg.d_in, dtype="float32",
                                   device="cpu", apply_b_dec_to_input=False, metadata=sae.cfg.metadata)
            tc = Transcoder(cfg)
            tc.load_state_dict({k: sae.state_dict()[k] for k in ("W_enc", "b_enc", "W_dec", "b_dec")})
            tc.save_model(tmp)
        else:
            sae.save_inference_model(tmp)
        write_json(tmp / "workbench.json", provenance)
    return atomic_dir(out, write)


def train_sae(
    model: HookedTransformer,
    model_name: str,
    cache_dir: str | Path,
    hook: str,
    out_dir: str | Path,
    recipe: SAERecipe = SAERecipe(),
    work_dir: str | Path | None = None,
    resume: bool = True,
    progress: bool = True,
    stop_after: int | None = None,
) -> Path:
    """Train an SAE (or, with ``recipe.transcoder``, a transcoder for layer ``hook``'s MLP) on a cache; returns
    the SAELens directory ``out_dir``.

    Resumable state goes to ``work_dir`` (default ``out_dir`` + ``.work``) every ``recipe.checkpoint_every``
    steps. ``stop_after`` ends the run after that many steps without writing ``out_dir`` (as a kill would).
    """
    recipe.check()
    out_dir = Path(out_dir)
    work = Path(work_dir) if work_dir else out_dir.with_name(out_dir.name + ".work")
    reader = CacheReader(cache_dir)
    if recipe.transcoder:
        m = re.fullmatch(r"blocks\.(\d+)\.(hook_resid_mid|hook_mlp_out|mlp)", hook)
        if not m:
            raise WorkbenchError(f"a transcoder is named by its layer's blocks.L.hook_resid_mid (or "
                                 f"blocks.L.hook_mlp_out); got {hook!r}")
        hooks = list(transcoder_hooks(int(m[1])))
    else:
        hooks = [hook]
    _check_cache(reader, model, hooks)
    d_in = reader.manifest["shapes"][hooks[0]][-1]
    if len(reader.manifest["shapes"][hooks[0]]) != 2:
        raise WorkbenchError(f"{hooks[0]} has shape {reader.manifest['shapes'][hooks[0]]} per prompt; SAEs here "
                             "train on one vector per position (residual stream, MLP or attention outputs)")
    key = {"recipe": asdict(recipe), "model_sha256": weights_sha256(model), "hooks": hooks,
           "cache_prompts_sha256": reader.manifest["prompts_sha256"]}
    marker = work / "run.json"
    if marker.exists() and resume and json.loads(marker.read_text()) != json.loads(json.dumps(key)):
        raise WorkbenchError(f"{work} holds the state of a different SAE run; delete it or pass another --work-dir")
    metadata = SAEMetadata(model_name=model_name, hook_name=hooks[0], weights_sha256=weights_sha256(model),
                           prepend_bos=True, context_size=model.cfg.n_ctx)
    if recipe.transcoder:
        metadata.hook_name_out = hooks[1]

    with deterministic_cpu(recipe.num_threads):
        torch.manual_seed(recipe.seed)
        sae = _training_sae(recipe, d_in, metadata)
        stream = activation_stream(reader, hooks, recipe.batch_size, recipe.seed, recipe.skip_first)
        trainer = SAETrainer(SAETrainerConfig(
            total_training_samples=recipe.total_tokens, train_batch_size_samples=recipe.batch_size, lr=recipe.lr, lr_end=recipe.lr,
            device="cpu", dead_feature_window=max(1, 200_000 // recipe.batch_size),
            feature_sampling_window=max(1, 200_000 // recipe.batch_size)), sae, data_provider=stream)
        seconds, history = 0.0, []
        if resume and (work / "state" / "state.json").exists():
            seconds, history = _load_state(work / "state", trainer)
            for _ in range(trainer.n_training_steps):  # replay the stream up to where the run stopped
                next(stream)
            log.info("resuming SAE training at step %d", trainer.n_training_steps)
        else:  # its own stream, so the training stream is the same whether or not a run resumed
            trainer.activation_scaler.scaling_factor = _scaling_factor(
                activation_stream(reader, hooks, recipe.batch_size, recipe.seed + 10_000, recipe.skip_first))
        write_json(marker, key)
        total_steps = recipe.total_tokens // recipe.batch_size
        if total_steps < 1:
            raise WorkbenchError(f"total_tokens ({recipe.total_tokens}) is less than one batch ({recipe.batch_size})")
        bar = tqdm(total=total_steps, initial=trainer.n_training_steps, desc="sae", disable=not progress)
        t0, steps_run = time.perf_counter(), 0
        while trainer.n_training_steps < total_steps:
            trainer.maybe_reset_sparsity()
            out = trainer.step(next(stream))
            if not torch.isfinite(out.loss) or not all(torch.isfinite(p).all() for p in sae.parameters()):
                kept = f"the last good checkpoint (step {_saved_step(work)}) is kept in {work}" \
                    if (work / "state").exists() else "no checkpoint had been written yet"
                raise NonFiniteLoss(f"the SAE loss became {out.loss.item()} at step {trainer.n_training_steps}; "
                                    f"{kept}. Lower --lr or check the cache for inf/nan activations.")
            trainer.n_training_steps += 1
            steps_run += 1
            if trainer.n_training_steps % 50 == 0 or trainer.n_training_steps == total_steps:
                l0 = (out.feature_acts > 0).float().sum(-1).mean().item()
                history.append({"step": trainer.n_training_steps, "loss": out.loss.item(), "l0": l0,
                                **{k: v.item() for k, v in out.losses.items()}})
                bar.set_postfix(loss=f"{out.loss.item():.4f}", l0=f"{l0:.1f}")
            bar.update(1)
            if trainer.n_training_steps % recipe.checkpoint_every == 0 or trainer.n_training_steps == total_steps:
                _save_state(work / "state", trainer, seconds + time.perf_counter() - t0, history)
            if stop_after is not None and steps_run >= stop_after:
                bar.close()
                return out_dir
        bar.close()
        seconds += time.perf_counter() - t0
        sae.fold_activation_norm_scaling_factor(trainer.activation_scaler.scaling_factor)
        trainer.activation_scaler.scaling_factor = None
        trainer.set_final_sae_metadata()
        provenance = {"format": "workbench-sae", "version": 1, "model": model_name,
                      "weights_sha256": weights_sha256(model), "hooks": hooks, "cache": str(cache_dir),
                      "cache_prompts_sha256": reader.manifest["prompts_sha256"], "recipe": asdict(recipe),
                      "steps": trainer.n_training_steps, "tokens": trainer.n_training_samples,
                      "seconds": round(seconds, 2), "tokens_per_second": round(trainer.n_training_samples / seconds),
                      "final": history[-1] if history else {}, "history": history}
        return _inference_dir(trainer, recipe, out_dir, provenance)


def _saved_step(work: Path) -> int | str:
    try:
        return json.loads((work / "state" / "state.json").read_text())["n_training_steps"]
    except (OSError, ValueError, KeyError):
        return "?"


# ---------------------------------------------------------------------------------------------------------------
# Loading, with the checks that keep an SAE on the model and hook it was trained for


@dataclass
class LoadedSAE:
    sae: SAE
    hook: str
    hook_out: str | None
    info: dict = field(default_factory=dict)

    @property
    def is_transcoder(self) -> bool:
        return self.hook_out is not None


def _hook_width(model: HookedTransformer, hook: str) -> int:
    _, cache = model.run_with_cache(torch.zeros(1, 2, dtype=torch.long), names_filter=[hook])
    if hook not in cache.cache_dict:
        raise WorkbenchError(f"hook {hook!r} does not fire in this model")
    return cache[hook].shape[-1] if cache[hook].dim() == 3 else int(cache[hook][0, 0].numel())


def load_sae(directory: str | Path, model: HookedTransformer | None = None, hook: str | None = None,
             allow_other_model: bool = False) -> LoadedSAE:
    """Load an SAELens SAE/transcoder directory; with ``model``, refuse it unless it was trained on this model's
    weights (``allow_other_model`` lifts only that check, for transfer studies), its hook exists in the model and
    has the SAE's width, and (with ``hook``) it was trained on that hook."""
    directory = Path(directory)
    if not (directory / "cfg.json").is_file() or not (directory / "sae_weights.safetensors").is_file():
        raise WorkbenchError(f"{directory} is not an SAE directory (cfg.json + sae_weights.safetensors, SAELens's "
                             "format)")
    sae = SAE.load_from_disk(str(directory), device="cpu")
    sae.eval()
    meta = sae.cfg.metadata
    trained_hook = meta.hook_name
    info = json.loads((directory / "workbench.json").read_text()) if (directory / "workbench.json").is_file() else {}
    if hook is not None and trained_hook is not None and hook != trained_hook:
        raise WorkbenchError(f"the SAE in {directory} was trained on hook {trained_hook}, not {hook}")
    hook = hook or trained_hook
    if hook is None:
        raise WorkbenchError(f"the SAE in {directory} does not record its hook; pass --hook")
    if model is not None:
        if hook not in model.hook_dict:
            raise WorkbenchError(f"the SAE in {directory} reads hook {hook}, which this model does not have")
        width = _hook_width(model, hook)
        if width != sae.cfg.d_in:
            raise WorkbenchError(f"the SAE in {directory} has d_in {sae.cfg.d_in} but {hook} in this model has "
                                 f"width {width}")
        trained_on, this = meta.weights_sha256, weights_sha256(model)
        if trained_on is not None and trained_on != this and not allow_other_model:
            raise WorkbenchError(f"the SAE in {directory} was trained on model {meta.model_name} (weights "
                                 f"{trained_on[:12]}), not this model (weights {this[:12]})")
    return LoadedSAE(sae=sae, hook=hook, hook_out=getattr(meta, "hook_name_out", None), info=info)


def load_transcoders(directory: str | Path, model: HookedTransformer) -> dict[int, Transcoder]:
    """``DIR/layer_L`` transcoder directories, one per layer 0..n_layers-1, checked against ``model``."""
    directory = Path(directory)
    out: dict[int, Transcoder] = {}
    for layer in range(model.cfg.n_layers):
        sub = directory / f"layer_{layer}"
        if not sub.is_dir():
            raise WorkbenchError(f"{directory} has no layer_{layer}/ transcoder; attribution graphs need one per "
                                 f"layer (0..{model.cfg.n_layers - 1}): `workbench sae train ... --transcoder`")
        loaded = load_sae(sub, model, hook=transcoder_hooks(layer)[0])
        if not isinstance(loaded.sae, Transcoder):
            raise WorkbenchError(f"{sub} holds a {loaded.sae.cfg.architecture()} SAE, not a transcoder")
        out[layer] = loaded.sae
    return out
