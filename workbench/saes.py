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
from dataclasses import asdict, dataclass, field, fields, replace
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
from workbench.models.checkpoint import (
    DamagedFile,
    check_tensor_shapes,
    error_summary,
    json_kind,
    read_json_object,
    safetensors_shapes,
    weights_sha256,
)
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
    atomic_dir(path, write, whole=True)  # the state is ours alone: never mix old and new files


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
    source: Path | None = None
    """The directory it was loaded from (None when built in memory): messages about it name it."""

    @property
    def is_transcoder(self) -> bool:
        return self.hook_out is not None


SAE_CFG = "cfg.json"
SAE_WEIGHTS = "sae_weights.safetensors"
SAE_CFG_WHAT = "an SAELens SAE config (a JSON object with d_in, d_sae and architecture)"


def _hook_width(model: HookedTransformer, hook: str) -> int:
    _, cache = model.run_with_cache(torch.zeros(1, 2, dtype=torch.long), names_filter=[hook])
    if hook not in cache.cache_dict:
        raise WorkbenchError(f"hook {hook!r} does not fire in this model")
    return cache[hook].shape[-1] if cache[hook].dim() == 3 else int(cache[hook][0, 0].numel())


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def read_sae_cfg(directory: Path) -> dict:
    """``cfg.json`` checked for what SAELens needs to build the SAE, so a bad value is refused naming the file
    instead of failing inside SAELens (or, for top-k's ``k``, only at the first forward pass)."""
    from sae_lens.loading.pretrained_sae_loaders import handle_config_defaulting
    from sae_lens.registry import SAE_CLASS_REGISTRY

    path = directory / SAE_CFG
    cfg = read_json_object(path, ("d_in", "d_sae"), what=SAE_CFG_WHAT)
    if not isinstance(cfg.get("metadata", {}), dict):
        raise DamagedFile(f"{path}: metadata must be a JSON object, got a {json_kind(cfg['metadata'])}")
    try:  # SAELens's own defaults for configs written by older versions (architecture, renamed keys)
        cfg = handle_config_defaulting(dict(cfg))
    except Exception as e:
        raise DamagedFile(f"{path}: expected {SAE_CFG_WHAT}, but SAELens cannot read it ({error_summary(e)})") from None
    arch, known = cfg.get("architecture"), ", ".join(sorted(SAE_CLASS_REGISTRY))
    if arch is None:
        raise DamagedFile(f"{path}: expected {SAE_CFG_WHAT}, but it lacks architecture (one of {known})")
    if not isinstance(arch, str) or arch not in SAE_CLASS_REGISTRY:
        raise DamagedFile(f"{path}: architecture {arch!r} is not one SAELens can load; known: {known}")
    for key in ("d_in", "d_sae", "d_out"):
        if key in cfg and not _positive_int(cfg[key]):
            raise DamagedFile(f"{path}: {key} must be a positive integer, got {cfg[key]!r}")
    _check_k(path, cfg, SAE_CLASS_REGISTRY[arch][1])
    return cfg


def _check_k(path: Path, cfg: dict, config_cls) -> None:
    """Top-k SAEs keep the ``k`` largest of ``d_sae`` features: ``1 <= k <= d_sae`` (torch.topk fails otherwise,
    and k = 0 would silence every feature)."""
    k_field = {f.name: f for f in fields(config_cls)}.get("k")
    if k_field is None:
        return
    k = cfg.get("k", k_field.default)
    if not _positive_int(k):
        raise DamagedFile(f"{path}: k must be a positive integer (features kept per token), got {k!r}")
    if k > cfg["d_sae"]:
        raise DamagedFile(f"{path}: k ({k}) exceeds d_sae ({cfg['d_sae']}); a top-k SAE keeps at most d_sae features")


def _check_sae_weights(directory: Path, cfg: dict) -> None:
    """The weights file whole (its header covers it) and its encoder/decoder shaped as ``cfg.json`` says."""
    path = directory / SAE_WEIGHTS
    found = safetensors_shapes(path)
    d_in, d_sae = cfg["d_in"], cfg["d_sae"]
    d_out = cfg.get("d_out", d_in)
    # Every architecture decodes with W_dec; the rest are checked where present, since some architectures lack
    # them (gated SAEs have no b_enc, matching-pursuit ones no encoder): SAELens reports those missing.
    shapes = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_out), "b_enc": (d_sae,), "b_dec": (d_out,)}
    expected = {name: shape for name, shape in shapes.items() if name == "W_dec" or name in found}
    check_tensor_shapes(path, found, expected, f"{directory / SAE_CFG} (d_in {d_in}, d_sae {d_sae}, d_out {d_out})",
                        extra_allowed=True)


def _load_sae_files(directory: Path) -> SAE:
    cfg = read_sae_cfg(directory)
    _check_sae_weights(directory, cfg)
    try:
        sae = SAE.load_from_disk(str(directory), device="cpu")
    except Exception as e:  # anything SAELens or torch still finds wrong with the pair of files
        raise DamagedFile(f"{directory / SAE_WEIGHTS} with {SAE_CFG}: SAELens cannot load them "
                          f"({error_summary(e)})") from None
    if not all(torch.isfinite(p).all() for p in sae.parameters()):
        raise DamagedFile(f"{directory / SAE_WEIGHTS}: the weights hold nan or inf")
    return sae


def check_fits(loaded: LoadedSAE, model: HookedTransformer) -> None:
    """Refuse ``loaded`` unless the hooks it reads (and, for a transcoder, writes) exist in ``model`` with the
    widths it was built for."""
    where = loaded.source / SAE_CFG if loaded.source is not None else "the SAE"
    cfg = loaded.sae.cfg
    pairs = [(loaded.hook, "reads", "d_in", cfg.d_in)]
    if loaded.hook_out is not None:
        pairs.append((loaded.hook_out, "writes", "d_out", getattr(cfg, "d_out", cfg.d_in)))
    for hook, verb, name, size in pairs:
        if hook not in model.hook_dict:
            raise WorkbenchError(f"{where}: the SAE {verb} hook {hook}, which this model does not have")
        width = _hook_width(model, hook)
        if width != size:
            raise WorkbenchError(f"{where}: the SAE has {name} {size} but {hook} in this model has width {width}")


def load_sae(directory: str | Path, model: HookedTransformer | None = None, hook: str | None = None,
             allow_other_model: bool = False) -> LoadedSAE:
    """Load an SAELens SAE/transcoder directory; with ``model``, refuse it unless it was trained on this model's
    weights (``allow_other_model`` lifts only that check, for transfer studies), its hook exists in the model and
    has the SAE's width, and (with ``hook``) it was trained on that hook. Damaged or inconsistent files are a
    ``DamagedFile`` naming them."""
    directory = Path(directory)
    if not (directory / SAE_CFG).is_file() or not (directory / SAE_WEIGHTS).is_file():
        raise WorkbenchError(f"{directory} is not an SAE directory (cfg.json + sae_weights.safetensors, SAELens's "
                             "format)")
    sae = _load_sae_files(directory)
    sae.eval()
    meta = sae.cfg.metadata
    trained_hook = meta.hook_name
    info_path = directory / "workbench.json"
    info = read_json_object(info_path, what="the SAE's training record (a JSON object)") if info_path.is_file() else {}
    if hook is not None and trained_hook is not None and hook != trained_hook:
        raise WorkbenchError(f"the SAE in {directory} was trained on hook {trained_hook}, not {hook}")
    hook = hook or trained_hook
    if hook is None:
        raise WorkbenchError(f"the SAE in {directory} does not record its hook; pass --hook")
    hook_out = getattr(meta, "hook_name_out", None)
    for name, value in (("hook_name", hook), ("hook_name_out", hook_out)):
        if value is not None and not isinstance(value, str):
            raise DamagedFile(f"{directory / SAE_CFG}: metadata.{name} must be a hook name, got {value!r}")
    loaded = LoadedSAE(sae=sae, hook=hook, hook_out=hook_out, info=info, source=directory)
    if model is not None:
        check_fits(loaded, model)
        trained_on, this = meta.weights_sha256, weights_sha256(model)
        if trained_on is not None and trained_on != this and not allow_other_model:
            raise WorkbenchError(f"the SAE in {directory} was trained on model {meta.model_name} (weights "
                                 f"{trained_on[:12]}), not this model (weights {this[:12]})")
    return loaded


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
            raise WorkbenchError(f"{sub / SAE_CFG}: architecture {loaded.sae.cfg.architecture()!r} is an SAE, not a "
                                 "transcoder (MLP input -> MLP output)")
        out[layer] = loaded.sae
    return out
