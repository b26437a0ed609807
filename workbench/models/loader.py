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
import json
import socket
from pathlib import Path
from urllib.parse import urlparse

from transformer_lens import HookedTransformer

from workbench.errors import WorkbenchError
from workbench.models.checkpoint import PICKLE_SUFFIXES, is_checkpoint_dir, load_checkpoint, refuse_pickle
from workbench.models.zoo import RECIPES, organism_dir

class ModelNotFound(WorkbenchError):
    """No form of model spec matched."""


def _organism(spec: str, device: str | None) -> HookedTransformer:
    path = organism_dir(spec)
    if not (path / "model.safetensors").is_file():
        raise ModelNotFound(
            f"organism {spec!r} has no shipped weights at {path}; train it with `workbench organisms train {spec}`"
        )
    return load_checkpoint(path, device)


def _hf_dir_problem(path: Path) -> str | None:
    """Why ``path`` is not a loadable local HF model directory (None if it is)."""
    cfg = path / "config.json"
    if not cfg.is_file():
        return "no config.json"
    try:
        if "model_type" not in json.loads(cfg.read_text()):
            return "config.json has no model_type"
    except json.JSONDecodeError as e:
        return f"config.json is not valid JSON ({e})"
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
    """
    from transformer_lens import loading_from_pretrained as loading
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path).resolve()
    problem = _hf_dir_problem(path)
    if problem:
        raise WorkbenchError(f"{path} is not a Hugging Face model directory: {problem}")
    try:
        hf_model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, use_safetensors=True)
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True) if _has_tokenizer(path) else None
        cfg = loading.get_pretrained_model_config(str(path), fold_ln=fold_ln, device=device or "cpu")
        state_dict = loading.get_pretrained_state_dict(str(path), cfg, hf_model)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, NotImplementedError) as e:
        raise WorkbenchError(f"cannot convert the Hugging Face model in {path} to TransformerLens "
                             f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); TransformerLens supports the "
                             "architectures in transformer_lens.supported_models") from None
    model = HookedTransformer(cfg, tokenizer, move_to_device=False)
    model.load_and_process_state_dict(
        state_dict, fold_ln=fold_ln, center_writing_weights=fold_ln, center_unembed=fold_ln, fold_value_biases=fold_ln
    )
    model.to(cfg.device, print_details=False)
    model.eval()
    return model


def _has_tokenizer(path: Path) -> bool:
    return any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json"))


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
        if is_checkpoint_dir(path):
            return load_checkpoint(path, device)
        problem = _hf_dir_problem(path)
        has_config = (path / "config.json").is_file()
        tried.append("workbench checkpoint dir: " + ("config.json lacks \"format\": \"workbench-checkpoint\""
                                                     if has_config else "no config.json"))
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

