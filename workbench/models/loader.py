"""One function to load any model as a TransformerLens ``HookedTransformer`` with its tokenizer.

``load_model(spec)`` accepts, in this order:

1. an organism name (``adder-direct``, ...): the checkpoint shipped inside the package;
2. a directory in our checkpoint format (``config.json`` with ``"format": "workbench-checkpoint"``);
3. a local Hugging Face model directory (``config.json`` with ``model_type`` and ``*.safetensors`` weights),
   converted by TransformerLens's own loading functions, offline;
4. a TransformerLens model name (``gpt2``, ``pythia-70m``, ...), which needs the hub or a warm HF cache.

When none works the error says, for each form, why it did not apply.
"""

from __future__ import annotations

import difflib
import socket
import tempfile
from pathlib import Path
from urllib.parse import urlparse

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


def load_hf_dir(path: str | Path, device: str | None = None, fold_ln: bool = True) -> HookedTransformer:
    """Load a local Hugging Face causal LM directory through TransformerLens's weight conversion, offline.

    ``HookedTransformer.from_pretrained`` insists on an official model name, but the loading functions it calls
    accept a local path; we call those same functions with the same processing defaults (fold LN, centre
    writing weights and unembedding), so the result equals what ``from_pretrained`` gives for a hub model.

    Every file is checked first (config and tokenizer JSON, safetensors headers), so damage names its file; any
    other failure of the conversion is a WorkbenchError naming the directory and the library's error.
    """
    path = Path(path).resolve()
    problem = _hf_dir_problem(path)
    if problem:
        raise WorkbenchError(f"{path} is not a Hugging Face model directory: {problem}")
    _check_hf_files(path)
    tokenizer = _hf_tokenizer(path)
    try:
        return _convert_hf(path, tokenizer, device, fold_ln)
    except WorkbenchError:
        raise
    except Exception as e:  # transformers, TransformerLens and torch raise every kind of exception here
        raise WorkbenchError(f"cannot convert the Hugging Face model in {path} to TransformerLens "
                             f"({error_summary(e)}); TransformerLens supports the architectures in "
                             "transformer_lens.supported_models") from None


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


def _convert_hf(path: Path, tokenizer, device: str | None, fold_ln: bool) -> HookedTransformer:
    from transformer_lens import loading_from_pretrained as loading
    from transformers import AutoModelForCausalLM

    hf_model, info = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, use_safetensors=True,
                                                          output_loading_info=True)
    if info["missing_keys"]:  # transformers would fill them with random weights and only warn
        missing = sorted(info["missing_keys"])
        files = sorted(path.glob("*.safetensors"))
        weights = files[0] if len(files) == 1 else f"the safetensors files in {path}"
        raise DamagedFile(f"{weights} lacks {len(missing)} tensor(s) that {path / 'config.json'} needs "
                          f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})")
    cfg = _tl_config(path, fold_ln, device or "cpu")
    if tokenizer is None:
        cfg.tokenizer_name = None  # no tokenizer to re-load: HookedTransformer would fail trying
    state_dict = loading.get_pretrained_state_dict(str(path), cfg, hf_model)
    model = HookedTransformer(cfg, tokenizer, move_to_device=False)
    model.load_and_process_state_dict(
        state_dict, fold_ln=fold_ln, center_writing_weights=fold_ln, center_unembed=fold_ln, fold_value_biases=fold_ln
    )
    model.to(cfg.device, print_details=False)
    model.eval()
    return model


def _names_an_architecture(path: str) -> bool:
    return any(word in path.lower() for word in PATH_KEYWORDS)


def _tl_config(path: Path, fold_ln: bool, device: str):
    """TransformerLens's config for the model in ``path``, with the architecture taken from config.json.

    TransformerLens reads ``architectures`` from config.json unless the path contains a word in
    ``PATH_KEYWORDS`` (``/models/llama-ft/`` holding a GPT-2 is taken for Llama and fails); such a path is
    handed over as a symlink whose path names nothing, and the names it set are put back.
    """
    from transformer_lens import loading_from_pretrained as loading

    if not _names_an_architecture(str(path)):
        return loading.get_pretrained_model_config(str(path), fold_ln=fold_ln, device=device)
    with tempfile.TemporaryDirectory(prefix="workbench-hf-") as tmp:
        alias = Path(tmp) / "model"
        if _names_an_architecture(str(alias)):
            raise WorkbenchError(f"TransformerLens would guess the architecture of {path} from its path (it "
                                 f"contains one of {', '.join(PATH_KEYWORDS)}), and so would it from the temporary "
                                 f"directory {tmp}; set TMPDIR to a path without those words, or rename {path}")
        try:
            alias.symlink_to(path, target_is_directory=True)
        except OSError as e:
            raise WorkbenchError(f"TransformerLens would guess the architecture of {path} from its path (it contains "
                                 f"one of {', '.join(PATH_KEYWORDS)}) and a neutral symlink to it cannot be made "
                                 f"({error_summary(e)}); rename the directory") from None
        cfg = loading.get_pretrained_model_config(str(alias), fold_ln=fold_ln, device=device)
    cfg.model_name, cfg.tokenizer_name = path.name, str(path)
    return cfg


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


def load_model(spec: str | Path, device: str | None = None) -> HookedTransformer:
    """Load ``spec`` (organism name | our checkpoint dir | local HF dir | TransformerLens name)."""
    spec_str = str(spec)
    if spec_str in RECIPES:
        return _organism(spec_str, device)
    path = Path(spec_str).expanduser()
    tried = [f"organism name: not one of {', '.join(RECIPES)}"]
    if path.is_file():
        refuse_pickle(path)
        raise ModelNotFound(f"{path} is a file; a model is a directory (config.json + model.safetensors + tokenizer)")
    if path.is_dir():
        config = _config(path)
        if config is not None and config.get("format") == FORMAT:
            return load_checkpoint(path, device)
        problem = _hf_dir_problem(path)
        tried.append("workbench checkpoint dir: " + ("config.json lacks \"format\": \"workbench-checkpoint\""
                                                     if config is not None else "no config.json"))
        if problem is None:
            return load_hf_dir(path, device)
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

