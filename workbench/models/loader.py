"""One function to load any model as a TransformerLens ``HookedTransformer`` with its tokenizer.

``load_model(spec)`` accepts, in this order:

1. an organism name (``adder-direct``, ...): the checkpoint shipped inside the package;
2. a directory in our checkpoint format (``config.json`` with ``"format": "workbench-checkpoint"``);
3. a local Hugging Face model directory (``config.json`` with ``model_type`` and ``*.safetensors`` weights),
   converted by TransformerLens's own loading functions, offline, with every computation field of config.json
   carried (or the model refused naming it) and the result checked against transformers on a few sequences;
4. a TransformerLens model name (``gpt2``, ``pythia-70m``, ...), which needs the hub or a warm HF cache.

When none works the error says, for each form, why it did not apply.
"""

from __future__ import annotations

import difflib
import gc
import math
import socket
import tempfile
import warnings
from pathlib import Path
from urllib.parse import urlparse

import torch
from transformer_lens import HookedTransformer

from workbench.errors import WorkbenchError
from workbench.models.checkpoint import (
    FORMAT,
    PICKLE_SUFFIXES,
    DamagedFile,
    error_summary,
    load_checkpoint,
    read_json_object,
    refuse_pickle,
    safetensors_shapes,
)
from workbench.models.tokenizer import check_tokenizer_files, tokenizer_load_error
from workbench.models.zoo import RECIPES, organism_dir

CONFIG_WHAT = "a model config (a JSON object: a workbench checkpoint's or a Hugging Face model's config.json)"
HF_JSON_FILES = ("generation_config.json", "model.safetensors.index.json")
HF_TOKENIZER_EXTRA = ("vocab.json",)
PATH_KEYWORDS = ("llama", "gemma", "wav2vec2", "santacoder")
"""Words that make TransformerLens pick an architecture (or a setting) from a local model's path instead of its
config.json: ``convert_hf_model_config`` matches them anywhere in the name it is given, and for a local model the
name is the path."""


class ModelNotFound(WorkbenchError):
    """No form of model spec matched."""


def _organism(spec: str, device: str | None) -> HookedTransformer:
    path = organism_dir(spec)
    if not (path / "model.safetensors").is_file():
        raise ModelNotFound(
            f"organism {spec!r} has no shipped weights at {path}; train it with `workbench organisms train {spec}`"
        )
    return load_checkpoint(path, device)


def _config(path: Path) -> dict | None:
    """``path/config.json`` as a JSON object (None if there is none); a damaged one is refused here, since
    every directory form needs it."""
    cfg = path / "config.json"
    return read_json_object(cfg, what=CONFIG_WHAT) if cfg.is_file() else None


def _hf_dir_problem(path: Path) -> str | None:
    """Why ``path`` is not a loadable local HF model directory (None if it is)."""
    config = _config(path)
    if config is None:
        return "no config.json"
    if "model_type" not in config:
        return "config.json has no model_type"
    if not list(path.glob("*.safetensors")):
        pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            refuse_pickle(path / pickles[0])
        return "no *.safetensors weights"
    return None



class UnsupportedConfig(WorkbenchError):
    """A local Hugging Face model whose config.json asks for a computation TransformerLens cannot host."""


class ConversionMismatch(WorkbenchError):
    """The converted HookedTransformer does not compute what the transformers model computes."""


class ConversionMismatchWarning(UserWarning):
    """A conversion mismatch let through by ``allow_mismatch=True``."""


class ContextCappedWarning(UserWarning):
    """A context hosted shorter than config.json's, because TransformerLens's per-layer masks would not fit."""


def load_hf_dir(path: str | Path, device: str | None = None, fold_ln: bool = True, allow_mismatch: bool = False,
                n_ctx: int | None = None) -> HookedTransformer:
    """Load a local Hugging Face causal LM directory through TransformerLens's weight conversion, offline.

    ``HookedTransformer.from_pretrained`` insists on an official model name, but the loading functions it calls
    accept a local path; we call those same functions with the same processing defaults (fold LN, centre
    writing weights and unembedding), so the result equals what ``from_pretrained`` gives for a hub model.

    TransformerLens's config mappings drop fields of a local config.json (a Llama's rope_theta and rope_scaling,
    a Qwen2's context, ...): every field that changes the computation is carried from config.json
    (:func:`_carry`), or the model is refused naming it (:class:`UnsupportedConfig`). The converted model is then
    checked against the transformers model on a few short sequences (:func:`_verify`): beyond
    ``CHECK_TOLERANCE`` it is refused (:class:`ConversionMismatch`), or, with ``allow_mismatch=True``, loaded
    with a :class:`ConversionMismatchWarning`.

    ``n_ctx``: the context to host; by default config.json's, at most what ``MASK_BUDGET_BYTES`` allows.

    Every file is checked first (config and tokenizer JSON, safetensors headers), so damage names its file; any
    other failure of the conversion is a WorkbenchError naming the directory and the library's error.
    """
    path = Path(path).resolve()
    problem = _hf_dir_problem(path)
    if problem:
        raise WorkbenchError(f"{path} is not a Hugging Face model directory: {problem}")
    if n_ctx is not None and (not isinstance(n_ctx, int) or isinstance(n_ctx, bool) or n_ctx < 1):
        raise WorkbenchError(f"n_ctx must be a positive integer, got {n_ctx!r}")
    _check_hf_files(path)
    tokenizer = _hf_tokenizer(path)
    try:
        return _convert_hf(path, tokenizer, device, fold_ln, allow_mismatch, n_ctx)
    except WorkbenchError:
        raise
    except Exception as e:  # transformers, TransformerLens and torch raise every kind of exception here
        raise WorkbenchError(f"cannot convert the Hugging Face model in {path} to TransformerLens "
                             f"({error_summary(e)}); {_failure_hint(e)}") from None


def _failure_hint(e: Exception) -> str:
    if isinstance(e, NotImplementedError):
        return (f"TransformerLens {_tl_version()} has no config mapping for this architecture from a local "
                "directory; TransformerLens 4's TransformerBridge or nnsight can host any transformers model")
    if isinstance(e, AttributeError):
        return "config.json lacks a field that TransformerLens's mapping for this architecture reads"
    return "config.json and the weights may disagree, or TransformerLens cannot build this configuration"


def _check_hf_files(path: Path) -> None:
    """Read every safetensors header and JSON file the conversion will read, so damage names its file."""
    for weights in sorted(path.glob("*.safetensors")):
        safetensors_shapes(weights)
    for name in HF_JSON_FILES:
        if (path / name).is_file():
            read_json_object(path / name, what="a Hugging Face model file (a JSON object)")


def _hf_tokenizer(path: Path):
    from transformers import AutoTokenizer

    present = check_tokenizer_files(path, HF_TOKENIZER_EXTRA)
    if not _has_tokenizer(path):
        return None
    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as e:
        raise tokenizer_load_error(path, present, e) from None


def _has_tokenizer(path: Path) -> bool:
    return any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json"))



# ---- conversion ----------------------------------------------------------------------------------------------------

CHECK_TOLERANCE = 1e-3
"""Largest |log p_TransformerLens - log p_transformers| (nats) accepted. Both run in float32: summing in another
order, folding LayerNorm and centring the weights move log-probabilities by about 1e-6 in a small model and
1e-5..1e-4 in one of billions of parameters, while a computation field left behind (rope_theta, a norm eps, a
bias, a soft cap) moves them by 1e-2 and more. 1e-3 keeps an order of magnitude from either."""
CHECK_BATCH, CHECK_LENGTH, CHECK_MAX_LENGTH = 2, 32, 128
"""The check runs CHECK_BATCH random sequences of CHECK_LENGTH tokens (longer, up to CHECK_MAX_LENGTH, to pass a
short sliding window), through both models: one small forward pass each."""
MASK_BUDGET_BYTES = 1 << 30
"""TransformerLens keeps an n_ctx x n_ctx causal mask (one byte an entry) in every layer: a context whose masks
would take more is hosted shorter (a power of two), with a warning; ``n_ctx=`` overrides."""
OWN_MAPPINGS = ("GPT2LMHeadModel", "Gemma2ForCausalLM")
"""Architectures whose TransformerLens config comes from :func:`_own_mapping`: TransformerLens's GPT-2 mapping
reads ``n_ctx``, which transformers no longer writes, and its Gemma-2 mappings exist only for official hub names
(the weight conversion and every component Gemma-2 needs are there)."""
BIAS_CARRYING = frozenset({
    "GPT2LMHeadModel", "GPTNeoForCausalLM", "GPTNeoXForCausalLM", "GPTJForCausalLM", "OPTForCausalLM",
    "BloomForCausalLM", "GPT2LMHeadCustomModel", "PhiForCausalLM", "QWenLMHeadModel", "Qwen2ForCausalLM",
    "GptOssForCausalLM"})
"""Architectures whose TransformerLens weight conversion copies attention biases; the others write zeros, so a
config.json with ``attention_bias`` or ``mlp_bias`` true is refused for them."""
ROPE_KEYS = ("rope_theta", "rope_scaling", "rope_parameters", "rope_local_base_freq", "partial_rotary_factor",
             "head_dim", "sliding_window", "layer_types", "use_sliding_window", "max_window_layers",
             "max_position_embeddings", "n_positions")
"""config.json fields of how positions are encoded or masked (named when only later positions disagree)."""
NONPOSITION_KEYS = ("rms_norm_eps", "layer_norm_epsilon", "layer_norm_eps", "attention_bias", "mlp_bias",
                    "query_pre_attn_scalar", "attn_logit_softcapping", "final_logit_softcapping", "hidden_act",
                    "hidden_activation", "activation_function", "scale_attn_weights", "tie_word_embeddings")
"""config.json fields of the computation at every position (named when the first position disagrees)."""
NO_EFFECT_KEYS = frozenset({
    "attention_dropout", "attn_pdrop", "embd_pdrop", "resid_pdrop", "summary_first_dropout", "dropout",
    "hidden_dropout", "embd_dropout", "initializer_range", "use_cache", "dtype", "torch_dtype", "pretraining_tp",
    "reorder_and_upcast_attn", "summary_activation", "summary_proj_to_labels", "summary_type", "summary_use_proj",
    "cache_implementation", "quantization_config", "auto_map"})
"""config.json fields that do not change the eval-mode forward pass of one unpadded sequence."""


def _tl_version() -> str:
    from importlib.metadata import version

    return version("transformer-lens")


def _convert_hf(path: Path, tokenizer, device: str | None, fold_ln: bool, allow_mismatch: bool = False,
                n_ctx: int | None = None) -> HookedTransformer:
    from transformer_lens import loading_from_pretrained as loading
    from transformers import AutoModelForCausalLM

    # eager attention: transformers' reference implementation (soft-capping included), used for the check only
    hf_model, info = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, use_safetensors=True,
                                                          output_loading_info=True, attn_implementation="eager")
    try:
        if info["missing_keys"]:  # transformers would fill them with random weights and only warn
            missing = sorted(info["missing_keys"])
            files = sorted(path.glob("*.safetensors"))
            weights = files[0] if len(files) == 1 else f"the safetensors files in {path}"
            raise DamagedFile(f"{weights} lacks {len(missing)} tensor(s) that {path / 'config.json'} needs "
                              f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})")
        hf_model.eval()
        cfg = _tl_config(path, fold_ln, device or "cpu", hf_model.config, n_ctx)
        if tokenizer is None:
            cfg.tokenizer_name = None  # no tokenizer to re-load: HookedTransformer would fail trying
        fold = cfg.normalization_type in ("LNPre", "RMSPre")  # fold_ln, where the architecture allows it
        state_dict = loading.get_pretrained_state_dict(str(path), cfg, hf_model)
        model = HookedTransformer(cfg, tokenizer, move_to_device=False)
        # a soft cap is not invariant to adding a constant to the logits, so the unembedding is not centred then
        model.load_and_process_state_dict(state_dict, fold_ln=fold, center_writing_weights=fold,
                                          center_unembed=fold and cfg.output_logits_soft_cap <= 0,
                                          fold_value_biases=fold)
        del state_dict
        model.to(cfg.device, print_details=False)
        model.eval()
        model.conversion_max_diff = _verify(path, model, hf_model, allow_mismatch)  # nats, as measured
        return model
    finally:
        del hf_model, info
        gc.collect()


def _tl_config(path: Path, fold_ln: bool, device: str, hf_config=None, n_ctx: int | None = None):
    """TransformerLens's config for the model in ``path``: its mapping of config.json (or ours, for
    ``OWN_MAPPINGS``), with every field of config.json that changes the computation carried (:func:`_carry`)
    and the processing ``get_pretrained_model_config`` applies. The architecture is config.json's, never the
    path's."""
    from transformer_lens import HookedTransformerConfig

    if hf_config is None:
        from transformers import AutoConfig

        hf_config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    arch = _architecture(hf_config)
    d = _own_mapping(arch, hf_config) if arch in OWN_MAPPINGS else _tl_mapping(path)
    d["original_architecture"] = arch
    _carry(path, arch, hf_config, d, n_ctx)
    d.update(model_name=path.name, tokenizer_name=str(path), init_weights=False, device=device, dtype=torch.float32,
             n_devices=1, from_checkpoint=False, load_in_4bit=False, d_vocab=hf_config.vocab_size)
    d.setdefault("default_prepend_bos", True)
    # OLMo 2 normalizes after attention and MLP: folding the norms into the next weights would be wrong
    if fold_ln and arch != "Olmo2ForCausalLM":
        d["normalization_type"] = {"LN": "LNPre", "RMS": "RMSPre"}.get(d["normalization_type"],
                                                                        d["normalization_type"])
    return HookedTransformerConfig.from_dict(d)


def _architecture(hf_config) -> str:
    archs = getattr(hf_config, "architectures", None) or []
    if archs:
        return archs[0]
    from transformers import AutoModelForCausalLM

    # no "architectures" in config.json: the class transformers builds for its model_type
    return AutoModelForCausalLM._model_mapping[type(hf_config)].__name__


def _names_an_architecture(path: str) -> bool:
    return any(word in path.lower() for word in PATH_KEYWORDS)


def _tl_mapping(path: Path) -> dict:
    """TransformerLens's own config mapping (``convert_hf_model_config``) of the config.json in ``path``.

    TransformerLens reads ``architectures`` from config.json unless the name it is given contains a word in
    ``PATH_KEYWORDS`` (``/models/llama-ft/`` holding a GPT-2 is taken for Llama, ``gemma2-tiny`` for Gemma-1);
    it is handed a symlink whose path names nothing instead.
    """
    from transformer_lens import loading_from_pretrained as loading

    with tempfile.TemporaryDirectory(prefix="workbench-hf-") as tmp:
        alias = Path(tmp) / "model"
        if _names_an_architecture(str(alias)):
            if not _names_an_architecture(str(path)):
                return loading.convert_hf_model_config(str(path))
            raise WorkbenchError(f"TransformerLens would guess the architecture of {path} from its path (it "
                                 f"contains one of {', '.join(PATH_KEYWORDS)}), and so would it from the temporary "
                                 f"directory {tmp}; set TMPDIR to a path without those words, or rename {path}")
        try:
            alias.symlink_to(path, target_is_directory=True)
        except OSError as e:
            if not _names_an_architecture(str(path)):
                return loading.convert_hf_model_config(str(path))
            raise WorkbenchError(f"TransformerLens would guess the architecture of {path} from its path (it contains "
                                 f"one of {', '.join(PATH_KEYWORDS)}) and a neutral symlink to it cannot be made "
                                 f"({error_summary(e)}); rename the directory") from None
        return loading.convert_hf_model_config(str(alias))


def _own_mapping(arch: str, c) -> dict:
    if arch == "GPT2LMHeadModel":  # TransformerLens's mapping, with the fields it reads wrongly or not at all
        return {
            "d_model": c.n_embd, "d_head": c.n_embd // c.n_head, "n_heads": c.n_head,
            "d_mlp": c.n_inner if c.n_inner is not None else 4 * c.n_embd, "n_layers": c.n_layer,
            "n_ctx": c.n_positions,  # the rows of the position table (n_ctx is a legacy field, often absent)
            "eps": c.layer_norm_epsilon, "d_vocab": c.vocab_size, "act_fn": c.activation_function,
            "use_attn_scale": bool(getattr(c, "scale_attn_weights", True)), "use_local_attn": False,
            "scale_attn_by_inverse_layer_idx": c.scale_attn_by_inverse_layer_idx, "normalization_type": "LN",
        }
    # Gemma-2: TransformerLens's official-name mappings, read from config.json; soft caps and sliding windows
    # are set by _carry like any other architecture's
    return {
        "d_model": c.hidden_size, "d_head": c.head_dim, "n_heads": c.num_attention_heads,
        "n_key_value_heads": c.num_key_value_heads, "d_mlp": c.intermediate_size, "n_layers": c.num_hidden_layers,
        "n_ctx": c.max_position_embeddings, "eps": c.rms_norm_eps, "d_vocab": c.vocab_size,
        "act_fn": getattr(c, "hidden_activation", None) or c.hidden_act, "initializer_range": c.initializer_range,
        "normalization_type": "RMS", "positional_embedding_type": "rotary", "rotary_dim": c.head_dim,
        "rotary_adjacent_pairs": False, "rotary_base": 10000.0, "use_attn_scale": True,
        "attn_scale": float(c.query_pre_attn_scalar) ** 0.5, "gated_mlp": True, "final_rms": True,
        "use_normalization_before_and_after": True,
    }


def _refuse(path: Path, field: str, value, why: str) -> UnsupportedConfig:
    return UnsupportedConfig(f"{path / 'config.json'} sets {field}={value!r}: {why}; TransformerLens "
                             f"{_tl_version()} cannot host that, so the model is refused")


def _rope(c) -> tuple[float | None, dict | None]:
    """(rope theta, rope scaling) from config.json: top-level fields, or ``rope_parameters`` (transformers 5)."""
    theta, scaling = getattr(c, "rope_theta", None), getattr(c, "rope_scaling", None)
    params = getattr(c, "rope_parameters", None)
    if isinstance(params, dict):
        theta = params.get("rope_theta", theta) if theta is None else theta
        if scaling is None and params.get("rope_type", "default") != "default":
            scaling = params
    return theta, scaling


def _carry(path: Path, arch: str, c, d: dict, n_ctx: int | None) -> None:
    """Put into ``d`` (a TransformerLens config dict) every field of config.json that changes the computation
    and that the mapping dropped or read wrongly; refuse those TransformerLens cannot host.

    Carried: the context (max_position_embeddings / n_positions), norm eps, head_dim, rope_theta, rope_scaling
    (linear; llama3 = NTK-by-parts; dynamic, which within max_position_embeddings is the default), attention
    scale (query_pre_attn_scalar), soft caps (attn_logit_softcapping, final_logit_softcapping), sliding windows
    (sliding_window with layer_types, use_sliding_window). Tied
    embeddings need nothing: the unembedding is copied from lm_head, which transformers ties to the embedding.
    Refused: biases the weight conversion would zero, rope scalings TransformerLens lacks, partial rotary
    dimensions it would not apply, attention kinds other than full and sliding.
    """
    raw = c.to_dict()
    position = d.get("positional_embedding_type", "standard")
    rotary = position == "rotary"

    # context
    ctx_field = next((k for k in ("max_position_embeddings", "n_positions") if raw.get(k) is not None), None)
    if position in ("standard", "shortformer"):  # a learned position table: its rows are the context
        if n_ctx is not None and n_ctx != d["n_ctx"]:
            raise WorkbenchError(f"n_ctx={n_ctx} cannot be hosted: the model's learned position table has "
                                 f"{d['n_ctx']} rows")
    elif n_ctx is not None:
        d["n_ctx"] = n_ctx
    elif ctx_field is not None:
        want = int(raw[ctx_field])
        cap = _context_cap(d["n_layers"])
        d["n_ctx"] = min(want, cap)
        if want > cap:
            warnings.warn(f"{path}: config.json {ctx_field}={want} is hosted as n_ctx={cap} (TransformerLens keeps "
                          f"an n_ctx x n_ctx mask in each of the {d['n_layers']} layers: "
                          f"{_size(d['n_layers'] * want * want)} at {want}); longer prompts are refused, "
                          "load_hf_dir(..., n_ctx=N) hosts more", ContextCappedWarning, stacklevel=4)

    for key in ("rms_norm_eps", "layer_norm_epsilon", "layer_norm_eps", "norm_eps"):
        if raw.get(key) is not None:
            d["eps"] = float(raw[key])
            break

    head_dim = raw.get("head_dim")
    if head_dim is not None and head_dim != d["d_head"]:
        if d.get("rotary_dim") in (None, d["d_head"]):
            d["rotary_dim"] = head_dim
        d["d_head"] = head_dim

    for flag in ("attention_bias", "mlp_bias"):
        if raw.get(flag) is True and arch not in BIAS_CARRYING:
            raise _refuse(path, flag, True, f"TransformerLens's {arch} weight conversion replaces those biases by "
                                            "zeros")

    if raw.get("query_pre_attn_scalar") is not None:
        d["attn_scale"] = float(raw["query_pre_attn_scalar"]) ** 0.5
    for key, field in (("attn_logit_softcapping", "attn_scores_soft_cap"),
                       ("final_logit_softcapping", "output_logits_soft_cap")):
        if raw.get(key) is not None:
            d[field] = float(raw[key])

    sliding = _sliding_layers(path, c, raw, d["n_layers"])
    if any(sliding) and int(raw["sliding_window"]) < d["n_ctx"]:
        d.update(use_local_attn=True, window_size=int(raw["sliding_window"]),
                 attn_types=["local" if s else "global" for s in sliding])
    elif d.get("use_local_attn") and not any(sliding):
        d.update(use_local_attn=False, window_size=None, attn_types=None)

    if rotary:
        _carry_rope(path, c, raw, d, any(sliding))


def _size(n_bytes: int) -> str:
    return f"{n_bytes / 2**30:.1f} GiB" if n_bytes >= 2**30 else f"{n_bytes / 2**20:.1f} MiB"


def _context_cap(n_layers: int) -> int:
    cap = 1
    while n_layers * (2 * cap) ** 2 <= MASK_BUDGET_BYTES:
        cap *= 2
    return cap


def _sliding_layers(path: Path, c, raw: dict, n_layers: int) -> list[bool]:
    """Which layers attend through a sliding window, as transformers decides it."""
    window = raw.get("sliding_window")
    layer_types = getattr(c, "layer_types", None)
    if layer_types:
        other = sorted(set(layer_types) - {"full_attention", "sliding_attention"})
        if other:
            raise _refuse(path, "layer_types", other, "TransformerLens has full and sliding-window attention only")
        if len(layer_types) != n_layers:
            raise DamagedFile(f"{path / 'config.json'}: layer_types has {len(layer_types)} entries for "
                              f"{n_layers} layers")
        return [window is not None and t == "sliding_attention" for t in layer_types]
    if window is None or raw.get("use_sliding_window") is False:
        return [False] * n_layers
    return [True] * n_layers  # Mistral and the like: sliding_window set and no layer_types means every layer


def _carry_rope(path: Path, c, raw: dict, d: dict, has_local: bool) -> None:
    theta, scaling = _rope(c)
    if theta is not None:
        d["rotary_base"] = float(theta)
    if raw.get("rope_local_base_freq") is not None:
        d["rotary_base_local"] = float(raw["rope_local_base_freq"])
    factor = raw.get("partial_rotary_factor")
    if factor is not None and d.get("rotary_dim", d["d_head"]) != int(d["d_head"] * factor):
        raise _refuse(path, "partial_rotary_factor", factor, f"rotating {int(d['d_head'] * factor)} of "
                                                             f"{d['d_head']} head dimensions")
    if not scaling:
        return
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return
    if kind == "linear":
        if has_local:  # TransformerLens scales only the global layers' rotary frequencies
            raise _refuse(path, "rope_scaling", scaling, "linear scaling of every layer's rotary frequencies in a "
                                                         "model with sliding-window layers")
        d["rotary_scaling_factor"] = float(scaling["factor"])
    elif kind == "llama3":
        d.update(use_NTK_by_parts_rope=True, NTK_by_parts_factor=float(scaling["factor"]),
                 NTK_by_parts_low_freq_factor=float(scaling.get("low_freq_factor", 1.0)),
                 NTK_by_parts_high_freq_factor=float(scaling.get("high_freq_factor", 4.0)),
                 NTK_original_ctx_len=int(scaling.get("original_max_position_embeddings",
                                                      raw.get("max_position_embeddings"))))
    elif kind == "dynamic":  # transformers rescales only past max_position_embeddings; short of it, the default
        limit = raw.get("max_position_embeddings")
        if limit is None or d["n_ctx"] > limit:
            raise _refuse(path, "rope_scaling", scaling, f"dynamic NTK scaling beyond max_position_embeddings "
                                                         f"({limit}) with n_ctx={d['n_ctx']}")
    elif not (kind == "yarn" and d.get("use_yarn_rope")):  # TransformerLens maps YaRN itself for OLMo 3
        raise _refuse(path, "rope_scaling", scaling, f"rope_type {kind!r} (TransformerLens implements linear and "
                                                     "llama3 NTK-by-parts scaling)")


# ---- the check -----------------------------------------------------------------------------------------------------


def _check_tokens(model: HookedTransformer, vocab: int) -> torch.Tensor:
    length = CHECK_LENGTH
    if model.cfg.use_local_attn and model.cfg.window_size is not None:
        length = max(length, min(model.cfg.window_size + 8, CHECK_MAX_LENGTH))
    length = min(length, model.cfg.n_ctx)
    g = torch.Generator().manual_seed(0)
    return torch.randint(vocab, (CHECK_BATCH, length), generator=g)


@torch.no_grad()
def _verify(path: Path, model: HookedTransformer, hf_model, allow_mismatch: bool) -> float:
    """Run a few random token sequences through both models and compare log-probabilities; return the largest
    difference. Beyond ``CHECK_TOLERANCE`` refuse, naming where and the likely cause (a warning instead with
    ``allow_mismatch``)."""
    ids = _check_tokens(model, min(model.cfg.d_vocab, hf_model.config.vocab_size))
    theirs = hf_model(ids).logits.float().log_softmax(-1)[..., :model.cfg.d_vocab_out]
    ours = model(ids.to(model.cfg.device)).float().cpu().log_softmax(-1)
    diff = (ours - theirs).abs().nan_to_num(nan=float("inf"))
    worst = float(diff.max())
    if worst <= CHECK_TOLERANCE:
        return worst
    seq, pos, tok = (int(i) for i in torch.unravel_index(diff.argmax(), diff.shape))
    first = float(diff[:, 0].max())
    raw = hf_model.config.to_dict()
    if first <= CHECK_TOLERANCE:
        where = "the first position agrees and later ones do not: likely a field of how positions are encoded or " \
                "masked that was not carried"
        keys = ROPE_KEYS
    else:
        where = "the first position differs already: likely a position-independent field that was not carried, " \
                "or weights the conversion drops"
        keys = NONPOSITION_KEYS
    disagree = _disagreements(path, model.cfg, hf_model.config)
    if disagree:
        cause = "config.json fields the converted model does not follow: " + "; ".join(disagree[:3])
    else:
        unread = _unread_fields(raw)
        fields = unread + [k for k in keys if raw.get(k) is not None and k not in unread]
        cause = "config.json fields to check: " + (", ".join(f"{k}={_short(raw[k])}" for k in fields[:4])
                                                   or "none identified")
    msg = (f"{path}: the TransformerLens conversion disagrees with transformers: log-probabilities differ by up "
           f"to {worst:.3g} nats (tolerance {CHECK_TOLERANCE:g}), largest at position {pos} of check sequence {seq} "
           f"(token id {tok}); {where} ({cause})")
    if allow_mismatch:
        warnings.warn(msg + "; loaded anyway (allow_mismatch)", ConversionMismatchWarning, stacklevel=4)
        return worst
    raise ConversionMismatch(msg + "; pass allow_mismatch=True (CLI --allow-mismatch) to load it anyway")


def _disagreements(path: Path, cfg, c) -> list[str]:
    """Where the converted model's TransformerLens config does not say what config.json says (each as
    ``field=value, TransformerLens tl_field=value``): the fields :func:`_carry` carries, audited afresh."""
    raw, out = c.to_dict(), []

    def same(a, b) -> bool:
        return a == b if not isinstance(a, float) and not isinstance(b, float) else math.isclose(a, b, rel_tol=1e-6)

    def check(field, value, tl_field, tl_value, agrees=None):
        if not (same(value, tl_value) if agrees is None else agrees):
            out.append(f"{field}={_short(value)}, TransformerLens {tl_field}={_short(tl_value)}")

    if cfg.positional_embedding_type == "rotary":
        theta, scaling = _rope(c)
        if theta is not None:
            check("rope_theta", float(theta), "rotary_base", float(cfg.rotary_base))
        kind = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
        if kind == "llama3":
            check("rope_scaling", scaling, "use_NTK_by_parts_rope", cfg.use_NTK_by_parts_rope,
                  cfg.use_NTK_by_parts_rope and same(float(scaling["factor"]), cfg.NTK_by_parts_factor))
        elif kind == "linear":
            check("rope_scaling", scaling, "rotary_scaling_factor", cfg.rotary_scaling_factor,
                  same(float(scaling["factor"]), float(cfg.rotary_scaling_factor)))
        elif kind != "dynamic":
            check("rope_scaling", scaling, "use_NTK_by_parts_rope", cfg.use_NTK_by_parts_rope,
                  not cfg.use_NTK_by_parts_rope and cfg.rotary_scaling_factor == 1.0 or kind == "yarn")
    eps = next((k for k in ("rms_norm_eps", "layer_norm_epsilon", "layer_norm_eps", "norm_eps")
                if raw.get(k) is not None), None)
    if eps:
        check(eps, float(raw[eps]), "eps", float(cfg.eps))
    if raw.get("head_dim") is not None:
        check("head_dim", raw["head_dim"], "d_head", cfg.d_head)
    if raw.get("num_key_value_heads") is not None:
        check("num_key_value_heads", raw["num_key_value_heads"], "n_key_value_heads",
              cfg.n_key_value_heads or cfg.n_heads)
    for key, tl_field in (("attn_logit_softcapping", "attn_scores_soft_cap"),
                          ("final_logit_softcapping", "output_logits_soft_cap")):
        value, tl_value = raw.get(key), getattr(cfg, tl_field)
        check(key, value, tl_field, tl_value,
              tl_value <= 0 if value is None else tl_value > 0 and same(float(value), float(tl_value)))
    if raw.get("query_pre_attn_scalar") is not None:
        check("query_pre_attn_scalar", raw["query_pre_attn_scalar"], "attn_scale", cfg.attn_scale,
              same(float(raw["query_pre_attn_scalar"]) ** 0.5, float(cfg.attn_scale)))
    sliding = _sliding_layers(path, c, raw, cfg.n_layers)
    if any(sliding) and int(raw["sliding_window"]) < cfg.n_ctx:
        want = ["local" if s else "global" for s in sliding]
        check("sliding_window", raw["sliding_window"], "window_size", cfg.window_size,
              cfg.use_local_attn and cfg.window_size == raw["sliding_window"] and list(cfg.attn_types or []) == want)
    return out


def _unread_fields(raw: dict) -> list[str]:
    """config.json fields that may change the computation and that neither mapping reads (best effort)."""
    from transformers import PretrainedConfig

    base = set(PretrainedConfig().to_dict())
    read = {"hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "vocab_size", "hidden_act", "hidden_activation", "activation_function", "n_embd", "n_head", "n_layer",
            "n_inner", "n_ctx", "scale_attn_weights", "scale_attn_by_inverse_layer_idx", "rms_norm_eps",
            "layer_norm_epsilon", "layer_norm_eps", "attention_bias", "mlp_bias", "query_pre_attn_scalar",
            *ROPE_KEYS, *NONPOSITION_KEYS}
    return sorted(k for k in raw if k not in base and k not in read and k not in NO_EFFECT_KEYS)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _transformer_lens_name(spec: str, device: str | None) -> HookedTransformer:
    from transformer_lens.loading_from_pretrained import get_official_model_name

    try:
        official = get_official_model_name(spec)
    except ValueError:
        raise ModelNotFound("not a TransformerLens model name") from None
    try:
        why = _hub_unreachable(official)
        if why is None:
            return HookedTransformer.from_pretrained(official, device=device)
    except OSError as e:  # network, auth and cache failures of huggingface_hub are all OSErrors
        why = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
    if why is not None:
        raise ModelNotFound(
            f"{official!r} is a TransformerLens model name, but loading it needs the Hugging Face hub "
            f"(or a warm cache), which failed ({why}); download it where there is a network and save it as a "
            "local directory (model.save_pretrained / tokenizer.save_pretrained), then load that directory"
        ) from None


def _hub_unreachable(official: str) -> str | None:
    """Why the hub cannot serve ``official`` right now, decided in milliseconds (None: worth trying).

    huggingface_hub retries an unreachable host for about half a minute; a cached model or a resolvable hub
    host is worth that wait, an offline flag or an unresolvable host is not.
    """
    from huggingface_hub import constants, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(official, "config.json"), str):
        return None
    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set and the model is not in the local cache"
    host = urlparse(constants.ENDPOINT).hostname or ""
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return f"the hub host {host} cannot be resolved (offline?) and the model is not in the local cache"
    return None


def load_model(spec: str | Path, device: str | None = None, allow_mismatch: bool = False) -> HookedTransformer:
    """Load ``spec`` (organism name | our checkpoint dir | local HF dir | TransformerLens name). A training
    run's directory (``run.json`` + ``model/`` or ``policy/``, as ``workbench train`` writes it) loads that model.

    ``allow_mismatch``: load a local Hugging Face directory whose conversion disagrees with transformers (with a
    warning) instead of refusing it; see :func:`load_hf_dir`.
    """
    spec_str = str(spec)
    if spec_str in RECIPES:
        return _organism(spec_str, device)
    path = Path(spec_str).expanduser()
    tried = [f"organism name: not one of {', '.join(RECIPES)}"]
    if path.is_file():
        refuse_pickle(path)
        raise ModelNotFound(f"{path} is a file; a model is a directory (config.json + model.safetensors + tokenizer)")
    if path.is_dir() and _config(path) is None and (path / "run.json").is_file():
        # A training run's directory (`workbench train`): its language model is in model/ (SFT, DPO) or policy/
        # (PPO); a reward run's model/ is a reward model, which generates nothing.
        inner = next((path / d for d in ("model", "policy") if (path / d / "config.json").is_file()), None)
        if inner is not None and (_config(inner) or {}).get("format") == "workbench-reward-model":
            raise ModelNotFound(f"{path} is a reward-model run: its model/ scores text and is not a language model "
                                "(load it with training.reward.load_reward_model)")
        path = inner or path
    if path.is_dir():
        config = _config(path)
        if config is not None and config.get("format") == FORMAT:
            return load_checkpoint(path, device)
        problem = _hf_dir_problem(path)
        tried.append("workbench checkpoint dir: " + ("config.json lacks \"format\": \"workbench-checkpoint\""
                                                     if config is not None else "no config.json"))
        if problem is None:
            return load_hf_dir(path, device, allow_mismatch=allow_mismatch)
        tried.append(f"Hugging Face dir: {problem}")
    else:
        tried.append(f"checkpoint or Hugging Face dir: no directory {path}")
    try:
        return _transformer_lens_name(spec_str, device)
    except ModelNotFound as e:
        tried.append(f"TransformerLens name: {e}")
        if "needs the Hugging Face hub" in str(e):
            raise
    close = difflib.get_close_matches(spec_str, list(RECIPES), n=2)
    hint = f" Did you mean {' or '.join(close)}?" if close else ""
    raise ModelNotFound(f"cannot load {spec_str!r}.{hint} Tried: " + "; ".join(tried))

