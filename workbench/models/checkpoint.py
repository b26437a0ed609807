"""Our checkpoint format: a directory of ``config.json`` + ``model.safetensors`` + tokenizer files.

Never pickle: safetensors holds only tensors and JSON holds the rest, so loading a checkpoint a user was handed
cannot run code. Files that would need unpickling (``.pt``, ``.bin``, ...) are refused with a message.

Every loader of the workbench (checkpoints, Hugging Face directories, tokenizers, SAEs, transcoders, cards) reads
its files through :func:`read_json_object`, :func:`safetensors_shapes` and :func:`load_safetensors_checked`, so a
truncated, garbled or inconsistent file is a :class:`DamagedFile` naming it and what was expected, never a
traceback from the library underneath.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from safetensors import safe_open
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


class DamagedFile(WorkbenchError):
    """A file that is there but is not what it should be: unreadable, truncated, garbled, incomplete, or
    contradicting the files beside it."""


def error_summary(e: BaseException) -> str:
    """``Type: first line`` of an exception, for one-line messages. When the first line ends with a colon the
    detail is on the next one (PyTorch's ``load_state_dict`` errors), so that line is kept too."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    if text.endswith(":") and len(lines) > 1:
        text = f"{text} {lines[1]}"
    return f"{type(e).__name__}: {text[:240]}" if text else type(e).__name__


def json_kind(value) -> str:
    """What a parsed JSON value is, in JSON's words (for "expected an object, got a list")."""
    kinds = {dict: "object", list: "list", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else kinds.get(type(value), type(value).__name__)


def read_json_object(path: str | Path, required: Iterable[str] = (), what: str = "a JSON object") -> dict:
    """The JSON object in ``path``; a file that cannot be read, is not UTF-8, is not JSON, is not an object or
    lacks one of the ``required`` keys is a :class:`DamagedFile` saying so and naming ``what`` was expected."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise DamagedFile(f"{path}: expected {what}, but it is not UTF-8 text (undecodable byte at offset "
                          f"{e.start})") from None
    except OSError as e:
        raise DamagedFile(f"{path}: expected {what}, but it cannot be read ({error_summary(e)})") from None
    if not text.strip():
        raise DamagedFile(f"{path}: expected {what}, but it is empty")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise DamagedFile(f"{path}: expected {what}, but it is not valid JSON ({e.msg} at line {e.lineno} "
                          f"column {e.colno})") from None
    except (ValueError, RecursionError) as e:  # numbers too long to parse, nesting too deep
        raise DamagedFile(f"{path}: expected {what}, but it is not usable JSON ({error_summary(e)})") from None
    if not isinstance(obj, dict):
        raise DamagedFile(f"{path}: expected {what}, but it holds a JSON {json_kind(obj)}")
    missing = [key for key in required if key not in obj]
    if missing:
        raise DamagedFile(f"{path}: expected {what}, but it lacks {', '.join(missing)}")
    return obj


def _unreadable_safetensors(path: Path, e: BaseException) -> DamagedFile:
    return DamagedFile(f"{path}: expected a safetensors file, but it cannot be read ({error_summary(e)}); it is "
                       "truncated, damaged or not safetensors")


def safetensors_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Each tensor's shape, from the header alone. Opening the file checks that the header is whole and that the
    tensors it lists cover the file exactly, so a truncated or padded file is refused without reading the data."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            return {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
    except Exception as e:  # SafetensorError, OSError, ...: whatever the reader says, the file is unusable
        raise _unreadable_safetensors(path, e) from None


def _few(items: list[str], n: int = 3) -> str:
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def _shape(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def check_tensor_shapes(path: str | Path, found: Mapping[str, tuple], expected: Mapping[str, tuple],
                        expected_by: str, extra_allowed: bool = False) -> None:
    """Refuse ``path`` unless its tensors (``found``: name -> shape) are the ``expected`` ones with the expected
    shapes; ``expected_by`` says where the expectation comes from (the config that describes the model)."""
    missing = [name for name in expected if name not in found]
    extra = [] if extra_allowed else [name for name in found if name not in expected]
    wrong = [f"{name} is {_shape(found[name])} not {_shape(expected[name])}" for name in expected
             if name in found and tuple(found[name]) != tuple(expected[name])]
    problems = [f"{label} {_few(names)}" for label, names in
                (("missing tensors", missing), ("unexpected tensors", extra), ("wrong shapes:", wrong)) if names]
    if problems:
        raise DamagedFile(f"{path} does not match {expected_by}: " + "; ".join(problems))


def load_safetensors_checked(path: str | Path, expected: Mapping[str, tuple] | None = None,
                             expected_by: str = "") -> dict[str, torch.Tensor]:
    """The tensors in ``path``, refused as a :class:`DamagedFile` when the file is unreadable or (given
    ``expected``, name -> shape) when its tensors are not exactly those."""
    path = Path(path)
    shapes = safetensors_shapes(path)
    if expected is not None:
        check_tensor_shapes(path, shapes, expected, expected_by)
    try:
        return load_file(str(path))
    except Exception as e:
        raise _unreadable_safetensors(path, e) from None


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
        dtype = getattr(torch, d["dtype"], None) if isinstance(d["dtype"], str) else None
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"dtype {d['dtype']!r} is not the name of a torch dtype")
        d["dtype"] = dtype
    if device is not None:
        d["device"] = device
    return HookedTransformerConfig.from_dict(d)


def is_checkpoint_dir(path: Path) -> bool:
    """Whether ``path`` has a readable config.json that declares our format (a damaged one is not ours to claim:
    :func:`load_checkpoint` reports the damage)."""
    cfg = path / "config.json"
    if not cfg.is_file():
        return False
    try:
        return read_json_object(cfg).get("format") == FORMAT
    except DamagedFile:
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


CONFIG_WHAT = f'a workbench checkpoint config (a JSON object with "format": "{FORMAT}" and hooked_transformer_config)'
_REQUIRED_CONFIG_FIELDS = [f.name for f in dataclasses.fields(HookedTransformerConfig)
                           if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]


def load_checkpoint(directory: str | Path, device: str | None = None) -> HookedTransformer:
    """Load a directory written by :func:`save_checkpoint`; any damaged or inconsistent file is a
    :class:`DamagedFile` naming it."""
    directory = Path(directory)
    config_path = directory / "config.json"
    config = read_json_object(config_path, what=CONFIG_WHAT) if config_path.is_file() else {}
    if config.get("format") != FORMAT:
        raise WorkbenchError(f"{directory} is not a workbench checkpoint (config.json with format={FORMAT!r})")
    _check_format_version(config_path, config)
    weights = _weights_file(directory)
    cfg = _hooked_config(config_path, config, device)
    tokenizer = load_tokenizer(directory) if (directory / "tokenizer.json").is_file() else None
    model = _build(config_path, cfg, tokenizer)
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    state = load_safetensors_checked(weights, expected, expected_by=f"the model that {config_path} describes")
    model.load_state_dict(state, strict=True)  # names and shapes were checked above: this cannot fail
    model.to(cfg.device, print_details=False)
    model.eval()
    return model


def _check_format_version(config_path: Path, config: dict) -> None:
    version = config.get("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise DamagedFile(f"{config_path}: format_version must be a positive integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise WorkbenchError(f"{config_path} is format_version {version}, written by a newer workbench; this one "
                             f"reads up to {FORMAT_VERSION}")


def _weights_file(directory: Path) -> Path:
    weights = directory / "model.safetensors"
    if not weights.is_file():
        pickles = [p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES]
        if pickles:
            refuse_pickle(directory / pickles[0])
        raise WorkbenchError(f"{directory} has config.json but no model.safetensors")
    return weights


def _hooked_config(config_path: Path, config: dict, device: str | None) -> HookedTransformerConfig:
    d = config.get("hooked_transformer_config")
    if d is None:
        raise DamagedFile(f"{config_path}: expected {CONFIG_WHAT}, but it has no hooked_transformer_config")
    if not isinstance(d, dict):
        raise DamagedFile(f"{config_path}: hooked_transformer_config must be a JSON object, got a {json_kind(d)}")
    missing = [name for name in _REQUIRED_CONFIG_FIELDS if name not in d]
    if missing:
        raise DamagedFile(f"{config_path}: hooked_transformer_config lacks {', '.join(missing)}")
    try:
        return config_from_json(d, device)
    except Exception as e:  # TypeError (unknown field), ValueError/AssertionError (inconsistent values), ...
        raise DamagedFile(f"{config_path}: hooked_transformer_config is not a valid TransformerLens config "
                          f"({error_summary(e)})") from None


def _build(config_path: Path, cfg: HookedTransformerConfig, tokenizer) -> HookedTransformer:
    if tokenizer is not None and cfg.d_vocab > 0 and len(tokenizer) > cfg.d_vocab:
        raise DamagedFile(f"{config_path.parent / 'tokenizer.json'} has {len(tokenizer)} tokens but {config_path} "
                          f"gives the model d_vocab {cfg.d_vocab}: token ids would fall outside the embedding")
    try:
        return HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    except Exception as e:  # values HookedTransformerConfig accepts but no model can be built from
        raise DamagedFile(f"{config_path}: TransformerLens cannot build the model this config describes "
                          f"({error_summary(e)})") from None
