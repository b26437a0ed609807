"""Dataset-scale activation caches: sharded safetensors files plus a JSON manifest.

A cache can be larger than memory: prompts are processed a shard at a time, each shard is written to a temporary
file and renamed into place, and the manifest (rewritten atomically after every shard) lists only complete
shards. A killed run resumes at the first missing shard; any number of readers can open the directory.

Layout::

    DIR/manifest.json              model identity, hooks, shapes, dtype, positions, prompts digest, shards
    DIR/shard-00000.safetensors    one tensor per hook [count, n_positions, ...] + tokens + lengths

Reading gives random access (``reader[name, i]``) and an iterator of ``[batch, d]`` tensors over all cached
positions (``iter_batches``), the input SAE training consumes.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from workbench.caching import cache_tokens, resolve_hooks
from workbench.errors import WorkbenchError
from workbench.interventions import Positions
from workbench.io import atomic_write, write_json
from workbench.models.checkpoint import weights_sha256
from workbench.models.tokenizer import tokenize_prompts

log = logging.getLogger(__name__)
FORMAT = "workbench-activation-cache"


def _digest(strings: Sequence[str]) -> str:
    h = hashlib.sha256()
    for s in strings:
        h.update(s.encode())
        h.update(b"\0")
    return h.hexdigest()


def model_identity(model: HookedTransformer, name: str) -> dict:
    """What a cache records about its model: the name it was loaded by and a digest of its weights."""
    return {"name": name, "weights_sha256": weights_sha256(model), "n_layers": model.cfg.n_layers,
            "d_model": model.cfg.d_model, "d_vocab": model.cfg.d_vocab}


def write_cache(
    model: HookedTransformer,
    model_name: str,
    prompts: Sequence[str],
    hooks: str | Sequence[str],
    out_dir: str | Path,
    positions: Positions = -1,
    shard_size: int = 4096,
    batch_size: int = 256,
    progress: bool = True,
) -> Path:
    """Cache ``hooks`` at ``positions`` for every prompt into ``out_dir``, resuming a partial cache.

    ``positions`` are positions counted from the end (default: the last token), or ``None``: every position of
    every prompt (what SAE training reads). Prompts of different lengths are then right-padded with zeros to the
    longest prompt; the shard's ``lengths`` say which rows are real, and :meth:`CacheReader.iter_batches` drops
    the padding.
    """
    out_dir = Path(out_dir)
    if isinstance(positions, slice):
        raise WorkbenchError("positions must be an int, a list of ints counted from the end, or None; not a slice")
    if out_dir.exists() and not out_dir.is_dir():
        raise WorkbenchError(f"--out {out_dir} is a file; a cache is a directory")
    toks = tokenize_prompts(model, list(prompts))  # validates every prompt before anything is written
    pad_to = max(len(t) for t in toks) if positions is None and toks else None
    names = resolve_hooks(model, hooks)
    pos_json = positions if positions is None or isinstance(positions, int) else list(positions)
    identity = model_identity(model, model_name)
    key = {"model": identity, "hooks": names, "positions": pos_json, "prompts_sha256": _digest(prompts),
           "n_prompts": len(prompts), "shard_size": shard_size}
    manifest_path = out_dir / "manifest.json"
    manifest = {"format": FORMAT, "version": 1, **key, "shapes": {}, "dtype": None, "shards": [], "complete": False}
    if manifest_path.exists():
        try:
            old = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as e:
            raise WorkbenchError(f"{manifest_path} is not valid JSON ({e}); delete the directory to start over") from None
        # The model is identified by its weights, not by the path it was loaded from ("./m" and "m" are one model).
        differ = [k for k in key if k != "model" and old.get(k) != key[k]]
        if old.get("model", {}).get("weights_sha256") != identity["weights_sha256"]:
            differ.insert(0, "model weights")
        if differ:
            raise WorkbenchError(f"{out_dir} holds a cache with other {', '.join(differ)}; choose another --out "
                                 "or delete it")
        manifest = old
    done = {s["start"] for s in manifest["shards"]}
    starts = list(range(0, len(prompts), shard_size))
    bar = tqdm(total=len(prompts), initial=sum(s["count"] for s in manifest["shards"]), unit="prompt",
               desc="cache", disable=not progress)
    for start in starts:
        if start in done:
            continue
        chunk_toks = toks[start : start + shard_size]
        # The user's patterns, not the expanded names: hooks a glob matched that never fire are dropped.
        acts = cache_tokens(model, chunk_toks, hooks, positions, batch_size, pad_to=pad_to)
        lengths = torch.tensor([len(t) for t in chunk_toks])
        padded = torch.full((len(chunk_toks), int(lengths.max())), model.tokenizer.pad_token_id or 0, dtype=torch.long)
        for i, t in enumerate(chunk_toks):
            padded[i, : len(t)] = t
        tensors = {name: a.contiguous() for name, a in acts.items()} | {"tokens": padded, "lengths": lengths}
        file = f"shard-{start // shard_size:05d}.safetensors"
        atomic_write(out_dir / file, lambda p: save_file(tensors, str(p)))
        manifest["shapes"] = {name: list(a.shape[1:]) for name, a in acts.items()}
        manifest["dtype"] = str(next(iter(acts.values())).dtype).removeprefix("torch.")
        manifest["shards"].append({"file": file, "start": start, "count": len(chunk_toks)})
        manifest["shards"].sort(key=lambda s: s["start"])
        manifest["complete"] = len(manifest["shards"]) == len(starts)
        write_json(manifest_path, manifest)
        bar.update(len(chunk_toks))
    bar.close()
    if not starts:
        raise WorkbenchError("no prompts to cache")
    return out_dir


class CacheReader:
    """Read a cache written by :func:`write_cache`; shards are opened lazily (memory-mapped by safetensors)."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        path = self.dir / "manifest.json"
        if not path.is_file():
            raise WorkbenchError(f"{self.dir} has no manifest.json: not an activation cache")
        self.manifest = json.loads(path.read_text())
        if self.manifest.get("format") != FORMAT:
            raise WorkbenchError(f"{path} is not a {FORMAT} manifest")
        self.shards = self.manifest["shards"]
        # Hooks actually cached: a glob may match hooks that never fire in this model, which are dropped.
        self.hooks: list[str] = list(self.manifest["shapes"]) or self.manifest["hooks"]

    def __len__(self) -> int:
        return sum(s["count"] for s in self.shards)

    @property
    def complete(self) -> bool:
        return bool(self.manifest["complete"])

    def _check(self, name: str) -> None:
        if name not in self.hooks:
            raise WorkbenchError(f"hook {name!r} is not in this cache; cached: {', '.join(self.hooks)}")

    def __getitem__(self, key: tuple[str, int]) -> Tensor:
        """``reader[name, i]``: the cached activation of prompt ``i`` (random access, one shard read)."""
        name, i = key
        self._check(name)
        for s in self.shards:
            if s["start"] <= i < s["start"] + s["count"]:
                with safe_open(str(self.dir / s["file"]), "pt") as f:
                    return f.get_slice(name)[i - s["start"]]
        raise IndexError(f"prompt {i} is not in the cache (cached prompts: {len(self)})")

    def shard_tensors(self, name: str) -> Iterator[Tensor]:
        self._check(name)
        for s in self.shards:
            with safe_open(str(self.dir / s["file"]), "pt") as f:
                yield f.get_tensor(name)

    def shard_rows(self, name: str, k: int, skip_first: int = 0) -> Tensor:
        """Shard ``k``'s activations of ``name`` as ``[rows, d]``: every cached position of every prompt (heads
        joined into ``d``), without the padding of an all-positions cache and, there, without each prompt's first
        ``skip_first`` positions (1 drops the BOS, whose activations are outliers an SAE should not spend on)."""
        self._check(name)
        with safe_open(str(self.dir / self.shards[k]["file"]), "pt") as f:
            acts = f.get_tensor(name)
            if self.manifest["positions"] is not None:
                return acts.flatten(0, 1).flatten(1)
            lengths = f.get_tensor("lengths")
        pos = torch.arange(acts.shape[1])
        keep = (pos[None, :] < lengths[:, None]) & (pos[None, :] >= skip_first)
        return acts[keep].flatten(1)

    def iter_batches(
        self, name: str, batch_size: int, shuffle: bool = False, seed: int = 0, drop_last: bool = False,
        skip_first: int = 0,
    ) -> Iterator[Tensor]:
        """``[batch, d]`` rows of hook ``name`` (see :meth:`shard_rows`), one shard in memory at a time.

        With ``shuffle``, shard order and rows within a shard are permuted by ``seed`` (a shard-local shuffle:
        memory stays bounded by one shard).
        """
        self._check(name)
        g = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(self.shards), generator=g).tolist() if shuffle else range(len(self.shards))
        carry: Tensor | None = None
        for k in order:
            rows = self.shard_rows(name, k, skip_first)
            if shuffle:
                rows = rows[torch.randperm(len(rows), generator=g)]
            if carry is not None:
                rows = torch.cat([carry, rows])
            n_full = len(rows) // batch_size * batch_size
            yield from rows[:n_full].split(batch_size)
            carry = rows[n_full:] if n_full < len(rows) else None
        if carry is not None and not drop_last:
            yield carry
