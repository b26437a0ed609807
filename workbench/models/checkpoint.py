"""Our checkpoint format: a directory of ``config.json`` + ``model.safetensors`` + tokenizer files.

Never pickle: safetensors holds only tensors and JSON holds the rest, so loading a checkpoint a user was handed
cannot run code. Files that would need unpickling (``.pt``, ``.bin``, ...) are refused with a message.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformer_lens import HookedTransformer, HookedTransformerConfig

from workbench.errors import WorkbenchError
from workbench.io import atomic_dir
from workbench.models.tokenizer import load_tokenizer

FORMAT = "workbench-checkpoint"
FORMAT_VERSION = 1
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt")


class UnsafeCheckpoint(WorkbenchError):
    """A checkpoint that could only be read by unpickling it."""


def refuse_pickle(path: Path) -> None:
    if path.suffix in PICKLE_SUFFIXES:
        raise UnsafeCheckpoint(
            f"refusing to load {path.name}: {path.suffix} files are pickles, which can run arbitrary code when "
            "loaded; convert the weights to safetensors (model.safetensors + config.json) and load that"
        )


def weights_sha256(model: HookedTransformer) -> str:
    """A digest of the weights (names, shapes and bytes): checks bit-for-bit reproducibility and cache identity."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.flatten().view(torch.uint8).numpy().tobytes())  # raw bytes: works for bf16 too
    return h.hexdigest()


def config_to_json(cfg: HookedTransformerConfig) -> dict:
    """The JSON-able init fields of a HookedTransformerConfig (dtype as its name, no device)."""
    out = {}
    for key, value in cfg.to_dict().items():
        if key in ("device", "n_params"):
            continue
        if isinstance(value, torch.dtype):
            value = str(value).removeprefix("torch.")
        try:
            json.dumps(value)
        except TypeError:
            continue  # derived objects (e.g. a tokenizer handle) are rebuilt on load
        out[key] = value
    return out


def config_from_json(d: dict, device: str | None = None) -> HookedTransformerConfig:
    d = dict(d)
    if "dtype" in d:
        d["dtype"] = getattr(torch, d["dtype"])
    if device is not None:
        d["device"] = device
    return HookedTransformerConfig.from_dict(d)


def is_checkpoint_dir(path: Path) -> bool:
    cfg = path / "config.json"
    if not cfg.is_file():
        return False
    try:
        return json.loads(cfg.read_text()).get("format") == FORMAT
    except (json.JSONDecodeError, AttributeError):
        return False


def save_checkpoint(model: HookedTransformer, directory: str | Path, extra_files: dict[str, dict] | None = None) -> Path:
    """Write ``model`` (weights, config, tokenizer) and any extra JSON files atomically into ``directory``."""

    def write(tmp: Path) -> None:
        config = {"format": FORMAT, "format_version": FORMAT_VERSION, "hooked_transformer_config": config_to_json(model.cfg)}
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if model.tokenizer is not None:
            model.tokenizer.save_pretrained(str(tmp))
        for name, obj in (extra_files or {}).items():
            (tmp / name).write_text(json.dumps(obj, indent=2) + "\n")

    return atomic_dir(directory, write)


def load_checkpoint(directory: str | Path, device: str | None = None) -> HookedTransformer:
    """Load a directory written by :func:`save_checkpoint`."""
    directory = Path(directory)
    if not is_checkpoint_dir(directory):
        raise WorkbenchError(f"{directory} is not a workbench checkpoint (config.json with format={FORMAT!r})")
    weights = directory / "model.safetensors"
    if not weights.is_file():
        pickles = [p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES]
        if pickles:
            refuse_pickle(directory / pickles[0])
        raise WorkbenchError(f"{directory} has config.json but no model.safetensors")
    config = json.loads((directory / "config.json").read_text())
    if "hooked_transformer_config" not in config:
        raise WorkbenchError(f"{directory}/config.json has no hooked_transformer_config")
    cfg = config_from_json(config["hooked_transformer_config"], device)
    tokenizer = load_tokenizer(directory) if (directory / "tokenizer.json").is_file() else None
    model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    state = load_file(str(weights))
    model.load_state_dict(state, strict=True)
    model.to(cfg.device, print_details=False)
    model.eval()
    return model
