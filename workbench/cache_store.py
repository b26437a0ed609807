"""Dataset-scale activation caches: sharded safetensors files plus a JSON manifest.

A cache can be larger than memory: prompts are processed a shard at a time, each shard is written to a temporary
file and renamed into place, and the manifest (rewritten atomically after every shard) lists only complete
shards. A killed run resumes at the first missing shard; any number of readers can open the directory. A shard's
file is written a batch at a time (the bytes are those ``safetensors.torch.save_file`` writes for the whole shard):
by a writer thread while the model runs the next batch where torch's threads leave a core free, otherwise between
forward passes, which is faster where the forward uses every core. The writes, and the read-back of each shard for
its digest, go around the page cache where the filesystem allows it (:mod:`workbench.direct_io`): filling new
page-cache pages, not the model, was what an all-position cache's time went to.

Layout::

    DIR/manifest.json              model identity, hooks, shapes, dtype, positions, prompts digest, shards
    DIR/shard-00000.safetensors    one tensor per hook [count, n_positions, ...] + tokens + lengths

The manifest records each shard's byte size and SHA-256; opening a cache (and resuming one) checks every
listed shard against them once, so a deleted, truncated or altered shard is refused by name rather than read.
Caches written before digests were recorded (manifest version 1) are checked by their safetensors headers
(shapes, and that each file is exactly as long as its header says), and gain digests when resumed.

Reading gives random access (``reader[name, i]``) and an iterator of ``[batch, d]`` tensors over all cached
positions (``iter_batches``), the input SAE training consumes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import queue
import re
import struct
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from workbench.caching import cached_batches, cached_row_shape, resolve_hooks
from workbench.direct_io import BlockWriter, read_digest
from workbench.errors import WorkbenchError
from workbench.interventions import Positions
from workbench.io import PendingFile, file_digest, write_json
from workbench.models.checkpoint import weights_sha256
from workbench.models.tokenizer import tokenize_prompts

log = logging.getLogger(__name__)
FORMAT = "workbench-activation-cache"
VERSION = 2
"""Version 2 records each shard's ``bytes`` and ``sha256``; version 1 caches (without them) are still read."""
_REBUILD = "delete the directory and write the cache again"


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
    overlap: bool | None = None,
    direct_io: bool = True,
) -> Path:
    """Cache ``hooks`` at ``positions`` for every prompt into ``out_dir``, resuming a partial cache.

    ``positions`` are positions counted from the end (default: the last token), or ``None``: every position of
    every prompt (what SAE training reads). Prompts of different lengths are then right-padded with zeros to the
    longest prompt; the shard's ``lengths`` say which rows are real, and :meth:`CacheReader.iter_batches` drops
    the padding.

    ``overlap``: write each batch from a thread while the model runs the next one (True), or between forward
    passes (False). By default a thread is used only when torch's threads leave a core free for it.

    ``direct_io``: write the shards around the page cache where the filesystem allows it
    (:mod:`workbench.direct_io` says why); False writes through it. The bytes are the same.
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
    manifest = {"format": FORMAT, "version": VERSION, **key, "shapes": {}, "dtype": None, "shards": [],
                "complete": False}
    if manifest_path.exists():
        old = read_manifest(manifest_path)
        # The model is identified by its weights, not by the path it was loaded from ("./m" and "m" are one model).
        differ = [k for k in key if k != "model" and old.get(k) != key[k]]
        if old.get("model", {}).get("weights_sha256") != identity["weights_sha256"]:
            differ.insert(0, "model weights")
        if differ:
            raise WorkbenchError(f"{out_dir} holds a cache with other {', '.join(differ)}; choose another --out "
                                 "or delete it")
        # Resume only on shards that are what the manifest says: a damaged one is refused, never built upon.
        names = list(old["shapes"]) or old["hooks"]
        upgraded = False
        for shard in old["shards"]:
            if "sha256" in shard:
                verify_shard(out_dir, shard)
            else:  # a version-1 cache: check the file's structure, then record its digest from now on
                check_shard_structure(out_dir, shard, names, old["shapes"])
                shard.update(file_digest(out_dir / shard["file"]))
                upgraded = True
        manifest = old
        if upgraded:
            manifest["version"] = VERSION
            write_json(manifest_path, manifest)
    done = {s["start"] for s in manifest["shards"]}
    starts = list(range(0, len(prompts), shard_size))
    bar = tqdm(total=len(prompts), initial=sum(s["count"] for s in manifest["shards"]), unit="prompt",
               desc="cache", disable=not progress)

    def listed(shard: _Shard, written: dict) -> None:  # by the writer (its thread or in line), once the shard is in place
        manifest["shapes"] = {name: list(shape[1:]) for name, (_, shape) in shard.specs.items()}
        manifest["dtype"] = str(shard.specs[shard.hooks[0]][0]).removeprefix("torch.")
        manifest["shards"].append({"file": shard.path.name, "start": shard.start, "count": shard.count, **written})
        manifest["shards"].sort(key=lambda s: s["start"])
        manifest["complete"] = len(manifest["shards"]) == len(starts)
        write_json(manifest_path, manifest)
        bar.update(shard.count)

    # No shard is assembled in memory: each batch is written as it comes, from a writer thread while the model
    # runs the next batch (its writes release the GIL) when a core is free for it, otherwise in line.
    free = free_core_for_writer(model.cfg.device or "cpu") if overlap is None else overlap
    writer = (_ShardWriter if free else _InlineWriter)(listed, direct_io)
    try:
        for start in starts:
            if start in done:
                continue
            chunk_toks = toks[start : start + shard_size]
            lengths = torch.tensor([len(t) for t in chunk_toks])
            padded = pad_sequence(chunk_toks, batch_first=True, padding_value=model.tokenizer.pad_token_id or 0)
            path = out_dir / f"shard-{start // shard_size:05d}.safetensors"
            shard = None
            # The user's patterns, not the expanded names: hooks a glob matched that never fire are dropped.
            for rows, acts in cached_batches(model, chunk_toks, hooks, positions, batch_size, pad_to=pad_to):
                if shard is None:  # the first batch has run: every tensor's shape is known, the file can start
                    specs = {name: (a.dtype, (len(chunk_toks), *cached_row_shape(name, a, pad_to)))
                             for name, a in acts.items()}
                    shard = writer.open(path, start, specs, {"tokens": padded.cpu(), "lengths": lengths})
                writer.batch(shard, rows, acts)
                del acts
            writer.close(shard)
        writer.finish()
    finally:
        writer.stop()  # after an error: the shard being written is discarded, complete ones are kept
    bar.close()
    if not starts:
        raise WorkbenchError("no prompts to cache")
    return out_dir


_SAFETENSORS_DTYPES = {
    torch.bool: "BOOL", torch.uint8: "U8", torch.int8: "I8", torch.float8_e5m2: "F8_E5M2",
    torch.float8_e4m3fn: "F8_E4M3", torch.int16: "I16", torch.uint16: "U16", torch.float16: "F16",
    torch.bfloat16: "BF16", torch.int32: "I32", torch.uint32: "U32", torch.float32: "F32", torch.float64: "F64",
    torch.int64: "I64", torch.uint64: "U64",
}
"""safetensors' names of the dtypes it stores, in its order: ``save_file`` writes tensors by this order, last
first, then by name."""


def _safetensors_layout(
    specs: dict[str, tuple[torch.dtype, tuple[int, ...]]]
) -> tuple[bytes, dict[str, int], int] | None:
    """The header ``safetensors.torch.save_file`` writes for tensors of these dtypes and shapes (8-byte length,
    then the JSON padded with spaces to 8 bytes), each tensor's byte offset in the file and the file's size; None
    where this module does not lay the file out itself (a dtype outside the table, a big-endian machine)."""
    if sys.byteorder != "little" or any(dtype not in _SAFETENSORS_DTYPES for dtype, _ in specs.values()):
        return None
    rank = {dtype: i for i, dtype in enumerate(_SAFETENSORS_DTYPES)}
    header, offsets, at = {}, {}, 0
    for k in sorted(specs, key=lambda k: (-rank[specs[k][0]], k)):
        dtype, shape = specs[k]
        size = math.prod(shape) * dtype.itemsize
        header[k] = {"dtype": _SAFETENSORS_DTYPES[dtype], "shape": list(shape), "data_offsets": [at, at + size]}
        offsets[k] = at
        at += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    head = struct.pack("<Q", len(text)) + text
    return head, {k: len(head) + off for k, off in offsets.items()}, len(head) + at


def _bytes(t: Tensor) -> memoryview:
    """A contiguous CPU tensor's bytes, without a copy."""
    return memoryview(t.reshape(-1).view(torch.uint8).numpy())


class _Aborted(Exception):
    pass


class _Shard:
    """One shard written from batches of activations: its file (temporary until :meth:`commit`), the layout of
    its tensors, and (for the writer thread) the batches waiting to be written. The bytes are those
    ``save_file`` writes for the same tensors."""

    def __init__(self, path: Path, start: int, specs: dict[str, tuple[torch.dtype, tuple[int, ...]]],
                 extra: dict[str, Tensor], direct_io: bool = True):
        self.path, self.start, self.specs, self.extra, self.direct_io = path, start, specs, extra, direct_io
        self.hooks = list(specs)
        self.count = len(extra["lengths"])
        self.pending: queue.Queue = queue.Queue(maxsize=4)  # (rows, acts) per batch; then None, or _Aborted
        self.file: PendingFile | None = None
        self.out: BlockWriter | None = None

    def begin(self) -> None:
        """Create the temporary file: its header and the ``extra`` tensors, the rest left for the batches."""
        self.file = PendingFile(self.path)
        layout = _safetensors_layout(self.specs | {k: (t.dtype, tuple(t.shape)) for k, t in self.extra.items()})
        if layout is None:  # safetensors writes this one: gather the shard, save it once complete
            self.full = {name: torch.zeros(shape, dtype=dtype) for name, (dtype, shape) in self.specs.items()}
            return
        head, self.at, size = layout
        self.row_bytes = {name: math.prod(shape[1:]) * dtype.itemsize for name, (dtype, shape) in self.specs.items()}
        # The whole file at once (what no batch writes, the padding, reads as zeros), written around the page
        # cache where the filesystem allows it (workbench.direct_io says why).
        self.out = BlockWriter(self.file.tmp, size, direct=self.direct_io)
        self.out.write(head, 0)
        for name, t in self.extra.items():
            self.out.write(_bytes(t.contiguous()), self.at[name])

    def add(self, rows: list[int], acts: dict[str, Tensor]) -> None:
        """Write rows ``rows`` (ascending) of every hook."""
        if self.out is None:
            for name, act in acts.items():
                self.full[name][rows, : act.shape[1]] = act
            return
        for name, act in acts.items():
            data, n = _bytes(act.contiguous()), self.row_bytes[name]
            if act.shape[1:] == self.specs[name][1][1:]:  # whole rows: one write per run of consecutive rows
                first = 0
                for i in range(1, len(rows) + 1):
                    if i == len(rows) or rows[i] != rows[i - 1] + 1:
                        self.out.write(data[first * n : i * n], self.at[name] + rows[first] * n)
                        first = i
            else:  # shorter prompts than the shard's longest: each row's positions, then padding
                m = len(data) // len(rows)
                for i, row in enumerate(rows):
                    self.out.write(data[i * m : (i + 1) * m], self.at[name] + row * n)
            del data

    def commit(self) -> dict:
        """Complete the file and rename it into place; its size and SHA-256 (read back, as :func:`file_digest`
        does)."""
        if self.out is None:
            save_file(self.full | self.extra, str(self.file.tmp))
            written = file_digest(self.file.tmp)
        else:
            direct = self.out.direct
            self.out.close()
            self.out = None
            written = read_digest(self.file.tmp, direct=direct)
        self.file.commit()
        return written

    def discard(self) -> None:
        if self.out is not None:
            self.out.abandon()
            self.out = None
        if self.file is not None:
            self.file.discard()


class _InlineWriter:
    """Writes each batch as it comes, between forward passes. For when the forward pass already uses every core:
    a writer thread would then take a core from one of the model's threads, and every operation waits for the
    slowest thread (``bench/cache_writer.py`` measures the two). :class:`_ShardWriter` has the same methods."""

    def __init__(self, listed: Callable[[_Shard, dict], None], direct_io: bool = True):
        self.listed, self.direct_io = listed, direct_io
        self.current: _Shard | None = None

    def open(self, path: Path, start: int, specs: dict[str, tuple[torch.dtype, tuple[int, ...]]],
             extra: dict[str, Tensor]) -> _Shard:
        """Start a shard of hooks of these dtypes and shapes (``[count, ...]``), plus the ``extra`` tensors."""
        shard = _Shard(path, start, specs, extra, self.direct_io)
        self.current = shard
        shard.begin()
        return shard

    def batch(self, shard: _Shard, rows: list[int], acts: dict[str, Tensor]) -> None:
        """Rows ``rows`` (ascending) of every hook of ``shard``: ``acts[name]`` is ``[len(rows), ...]``, with
        fewer positions than the shard's rows where they are padded."""
        shard.add(list(rows), acts)

    def close(self, shard: _Shard) -> None:
        """Every row of ``shard`` has been given: complete the file and list it."""
        written = shard.commit()
        self.current = None
        self.listed(shard, written)

    def finish(self) -> None:
        pass

    def stop(self) -> None:
        """After an error: a shard still open is discarded (its temporary file removed)."""
        if self.current is not None:
            self.current.discard()
            self.current = None


class _ShardWriter:
    """Writes shards from a thread while the caller runs the model, for when a core is free for it: a shard's
    file is started when its first batch has run (every shape is known then), each batch is written while the
    next one runs, and the file is renamed into place (then ``listed(shard, {"bytes", "sha256"})`` is called, in
    this thread) once its last batch is written. Shards complete in the order they were opened. An error in the
    writer is raised by the caller's next call; the queues are bounded, so the caller runs at most a few batches
    ahead of the disk."""

    def __init__(self, listed: Callable[[_Shard, dict], None], direct_io: bool = True):
        self.listed, self.direct_io = listed, direct_io
        self.current: _Shard | None = None  # opened by the caller, not yet closed
        self.shards: queue.Queue = queue.Queue(maxsize=1)
        self.error: BaseException | None = None
        # Written batches' buffers, reused for later batches of the same shape: the model's own activations are
        # freed as soon as they are copied (as in a plain forward), and no batch faults in fresh memory.
        self.spare: list[Tensor] = []
        self.spare_lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name="cache-writer", daemon=True)
        self.thread.start()

    def _staged(self, act: Tensor) -> Tensor:
        """A copy of ``act`` in a spare buffer of its shape (a new one if none is free)."""
        with self.spare_lock:
            i = next((i for i, b in enumerate(self.spare) if b.shape == act.shape and b.dtype == act.dtype), None)
            buf = self.spare.pop(i) if i is not None else torch.empty(act.shape, dtype=act.dtype)
        return buf.copy_(act)

    def release(self, bufs: Iterable[Tensor]) -> None:
        """Buffers whose batch is written (called by the writer thread); a few are kept for reuse."""
        bufs = list(bufs)
        with self.spare_lock:  # enough for the next batch and the one after it
            self.spare.extend(bufs)
            del self.spare[: max(0, len(self.spare) - 2 * len(bufs))]

    def _write(self, shard: _Shard) -> None:
        try:
            shard.begin()
            while (item := shard.pending.get()) is not None:
                if item is _Aborted:
                    raise _Aborted
                rows, acts = item
                shard.add(rows, acts)
                self.release(acts.values())  # written: the buffers can take a later batch
            written = shard.commit()
        except BaseException:
            shard.discard()
            raise
        self.listed(shard, written)

    def _run(self) -> None:
        try:
            while (shard := self.shards.get()) is not None:
                self._write(shard)
        except _Aborted:
            pass
        except BaseException as e:  # raised in the caller by its next call
            self.error = e

    def _put(self, q: queue.Queue, item) -> None:
        while True:
            if self.error is not None:
                raise self.error
            if not self.thread.is_alive():
                return  # stopped after an abort: nothing more is written
            try:
                q.put(item, timeout=0.05)
                return
            except queue.Full:
                pass

    def open(self, path: Path, start: int, specs: dict[str, tuple[torch.dtype, tuple[int, ...]]],
             extra: dict[str, Tensor]) -> _Shard:
        shard = _Shard(path, start, specs, extra, self.direct_io)
        self._put(self.shards, shard)
        self.current = shard
        return shard

    def batch(self, shard: _Shard, rows: list[int], acts: dict[str, Tensor]) -> None:
        self._put(shard.pending, (list(rows), {name: self._staged(a) for name, a in acts.items()}))

    def close(self, shard: _Shard) -> None:
        self._put(shard.pending, None)
        self.current = None

    def finish(self) -> None:
        """Wait for every shard to be written; raise the writer's error if it had one."""
        self._put(self.shards, None)
        self.thread.join()
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        """End the writer whatever happened: a shard still open is discarded (its temporary file removed)."""
        if not self.thread.is_alive():
            return
        try:
            if self.current is not None:
                self._put(self.current.pending, _Aborted)
            self._put(self.shards, None)
        except BaseException:
            pass
        self.thread.join()


def free_core_for_writer(device: str | torch.device = "cpu") -> bool:
    """Whether a writer thread can overlap the forward: always for a model on an accelerator (the CPU waits for
    it), else when torch's threads leave a CPU core free."""
    if torch.device(device).type != "cpu":
        return True
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return torch.get_num_threads() < cores


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def read_manifest(path: Path) -> dict:
    """A cache manifest, checked: a JSON object of the right format and version, with every key, and shards that
    tile the prompts as the writer lays them out (consecutive ``shard_size`` blocks, named by their index, all of
    them when it says ``complete``). Anything else is a :class:`WorkbenchError` naming the file."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise WorkbenchError(f"{path} is unreadable ({e}); {_REBUILD}") from None
    try:
        m = json.loads(text)
    except ValueError as e:
        raise WorkbenchError(f"{path} is not valid JSON ({e}); delete the directory to start over") from None
    if not isinstance(m, dict):
        raise WorkbenchError(f"{path} is not a {FORMAT} manifest (a JSON {type(m).__name__}, expected an object); "
                             f"{_REBUILD}")
    if m.get("format") != FORMAT:
        raise WorkbenchError(f"{path} is not a {FORMAT} manifest")
    keys = {"version": _is_int, "model": lambda v: isinstance(v, dict) and isinstance(v.get("weights_sha256"), str),
            "hooks": lambda v: isinstance(v, list) and all(isinstance(h, str) for h in v),
            "positions": lambda v: v is None or _is_int(v) or (isinstance(v, list) and all(map(_is_int, v))),
            "prompts_sha256": lambda v: isinstance(v, str), "n_prompts": lambda v: _is_int(v) and v >= 0,
            "shard_size": lambda v: _is_int(v) and v >= 1,
            "shapes": lambda v: isinstance(v, dict) and all(isinstance(d, list) and all(map(_is_int, d))
                                                            for d in v.values()),
            "dtype": lambda v: v is None or isinstance(v, str), "shards": lambda v: isinstance(v, list),
            "complete": lambda v: isinstance(v, bool)}
    missing = [k for k in keys if k not in m]
    if missing:
        raise WorkbenchError(f"{path} lacks the keys {missing}; {_REBUILD}")
    bad = [k for k, ok in keys.items() if not ok(m[k])]
    if bad:
        raise WorkbenchError(f"{path} has malformed {', '.join(repr(k) for k in bad)}; {_REBUILD}")
    if not 1 <= m["version"] <= VERSION:
        raise WorkbenchError(f"{path} is manifest version {m['version']}; this workbench reads versions 1 to "
                             f"{VERSION}")
    n, size = m["n_prompts"], m["shard_size"]
    expected = {start: min(size, n - start) for start in range(0, n, size)}
    seen = set()
    for i, shard in enumerate(m["shards"]):
        ok = (isinstance(shard, dict) and _is_int(shard.get("start")) and _is_int(shard.get("count"))
              and shard["start"] in expected and shard["count"] == expected[shard["start"]]
              and shard.get("file") == f"shard-{shard['start'] // size:05d}.safetensors"
              and shard["start"] not in seen)
        if ok and (m["version"] >= 2 or "sha256" in shard):
            ok = (_is_int(shard.get("bytes")) and isinstance(shard.get("sha256"), str)
                  and re.fullmatch(r"[0-9a-f]{64}", shard["sha256"]) is not None)
        if not ok:
            raise WorkbenchError(f"{path}: shard entry {i} ({json.dumps(shard)[:120]}) is not one this cache's "
                                 f"layout allows (file shard-NNNNN.safetensors, start a multiple of {size} below "
                                 f"{n}, its count, once each{', bytes and sha256' if m['version'] >= 2 else ''}); "
                                 f"{_REBUILD}")
        seen.add(shard["start"])
    m["shards"].sort(key=lambda s: s["start"])
    if m["complete"] != (len(seen) == len(expected)):
        raise WorkbenchError(f"{path} says complete={str(m['complete']).lower()} but lists {len(seen)} of the "
                             f"{len(expected)} shards of its {n} prompts; {_REBUILD}")
    if m["shards"] and (not m["shapes"] and not m["hooks"] or m["dtype"] is None):
        raise WorkbenchError(f"{path} lists shards but no shapes or dtype; {_REBUILD}")
    return m


def verify_shard(directory: Path, shard: dict) -> None:
    """Refuse a shard whose file is missing or whose size or SHA-256 differs from its manifest entry."""
    file = directory / shard["file"]
    if not file.is_file():
        raise WorkbenchError(f"{file} is missing (manifest.json lists it); {_REBUILD}")
    size = file.stat().st_size
    if size != shard["bytes"]:
        raise WorkbenchError(f"{file} is damaged: {size} bytes, manifest.json records {shard['bytes']} (truncated "
                             f"or overwritten); {_REBUILD}")
    if file_digest(file)["sha256"] != shard["sha256"]:
        raise WorkbenchError(f"{file} is damaged: its SHA-256 differs from the one manifest.json records; "
                             f"{_REBUILD}")


def check_shard_structure(directory: Path, shard: dict, hooks: Sequence[str], shapes: dict) -> None:
    """For a shard without a recorded digest: the file exists, its safetensors header parses and covers the file
    exactly (a truncated file fails), and it holds every hook, ``tokens`` and ``lengths`` with ``count`` rows and
    the manifest's shapes."""
    file = directory / shard["file"]
    if not file.is_file():
        raise WorkbenchError(f"{file} is missing (manifest.json lists it); {_REBUILD}")
    try:
        with safe_open(str(file), "pt") as f:
            got = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
    except (OSError, SafetensorError) as e:
        raise WorkbenchError(f"{file} is damaged ({e}); {_REBUILD}") from None
    want = {h: [shard["count"], *shapes[h]] for h in hooks if h in shapes}
    wrong = [k for k, v in want.items() if got.get(k) != v]
    wrong += [k for k in ("tokens", "lengths") if k not in got or not got[k] or got[k][0] != shard["count"]]
    if wrong:
        raise WorkbenchError(f"{file} does not hold what manifest.json says ({', '.join(wrong)}: expected "
                             f"{shard['count']} rows of the recorded shapes); {_REBUILD}")


class CacheReader:
    """Read a cache written by :func:`write_cache`; shards are opened lazily (memory-mapped by safetensors)."""

    def __init__(self, directory: str | Path, verify: bool = True):
        """Open a cache, checking every listed shard once: its size, and with ``verify`` (the default) its SHA-256
        against the manifest (one read of each file; batches read afterwards are not hashed again). A cache
        written before digests were recorded is checked by its shards' safetensors headers instead."""
        self.dir = Path(directory)
        path = self.dir / "manifest.json"
        if not path.is_file():
            raise WorkbenchError(f"{self.dir} has no manifest.json: not an activation cache")
        self.manifest = read_manifest(path)
        self.shards = self.manifest["shards"]
        # Hooks actually cached: a glob may match hooks that never fire in this model, which are dropped.
        self.hooks: list[str] = list(self.manifest["shapes"]) or self.manifest["hooks"]
        legacy = [s for s in self.shards if "sha256" not in s]
        for s in self.shards:  # sizes first: a missing or truncated shard is reported before any hashing
            if "sha256" in s and (not (self.dir / s["file"]).is_file()
                                  or (self.dir / s["file"]).stat().st_size != s["bytes"]):
                verify_shard(self.dir, s)
        for s in self.shards:
            if "sha256" not in s:
                check_shard_structure(self.dir, s, self.hooks, self.manifest["shapes"])
            elif verify:
                verify_shard(self.dir, s)
        if legacy:
            log.warning("%s records no shard digests (written by an older workbench): shards were checked by their "
                        "headers only; resume or rebuild the cache to record digests", self.dir)

    @contextmanager
    def _open(self, shard: dict):
        """A shard opened for reading; a file changed or removed since the cache was opened is a user error."""
        file = self.dir / shard["file"]
        try:
            with safe_open(str(file), "pt") as f:
                yield f
        except (OSError, SafetensorError) as e:
            raise WorkbenchError(f"{file} cannot be read ({e}); {_REBUILD}") from None

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
                with self._open(s) as f:
                    return f.get_slice(name)[i - s["start"]]
        raise IndexError(f"prompt {i} is not in the cache (cached prompts: {len(self)})")

    def shard_tensors(self, name: str) -> Iterator[Tensor]:
        self._check(name)
        for s in self.shards:
            with self._open(s) as f:
                tensor = f.get_tensor(name)
            yield tensor

    def shard_rows(self, name: str, k: int, skip_first: int = 0) -> Tensor:
        """Shard ``k``'s activations of ``name`` as ``[rows, d]``: every cached position of every prompt (heads
        joined into ``d``), without the padding of an all-positions cache and, there, without each prompt's first
        ``skip_first`` positions (1 drops the BOS, whose activations are outliers an SAE should not spend on)."""
        self._check(name)
        with self._open(self.shards[k]) as f:
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
