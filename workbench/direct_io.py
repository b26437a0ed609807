"""Writing a file of known size at scattered offsets, and reading it back for its digest, around the page cache.

Why: a buffered write copies every byte into a page-cache page, and on a virtual machine a page the guest has
not used before can cost a fault in the hypervisor on first touch. An activation cache of every position writes
many times the forward pass's own working set, so the write, not the model, set its speed: on a 2-core VM,
``bench/cache_writer.py`` wrote 88 MB into a new file in 0.648 s buffered and in 0.045 s with this module's
``O_DIRECT`` writes from reused aligned buffers (the disk's DMA does the copy), and measures what that does to
caching.

Direct I/O needs block-aligned offsets, lengths and buffers. :class:`BlockWriter` writes the whole blocks of each
range from an aligned staging buffer at once, and gathers the partial blocks at a range's ends in memory; they
are written when the file is complete, when every byte of them is known (bytes no range writes are zeros, as in
a file extended by ``ftruncate``). Where the filesystem refuses direct I/O (tmpfs on older kernels, some network
and FUSE filesystems, platforms without ``O_DIRECT``) it writes through the page cache, with the same bytes.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import mmap
import os
import queue
import threading
from pathlib import Path

from workbench.io import file_digest

BLOCK = 4096
"""Alignment for direct I/O: a multiple of every logical block size in use (512 and 4096 bytes)."""
_O_DIRECT = getattr(os, "O_DIRECT", 0)


def pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        n = os.pwrite(fd, data, offset)
        data, offset = data[n:], offset + n


_SPARE: list[mmap.mmap] = []
_SPARE_LOCK = threading.Lock()
SPARE_BYTES = 64 << 20
"""Staging buffers kept for later files: new anonymous memory costs a page fault per page on first touch (on a
virtual machine, one in the hypervisor too), so one cache's shards reuse the same few buffers."""


def _aligned(n: int) -> mmap.mmap:
    """A page-aligned buffer of at least ``n`` bytes, a whole number of blocks: a spare one if one fits."""
    with _SPARE_LOCK:
        fits = [b for b in _SPARE if len(b) >= n]
        if fits:
            buf = min(fits, key=len)
            _SPARE.remove(buf)
            return buf
    return mmap.mmap(-1, max(BLOCK, -(-n // BLOCK) * BLOCK))


def _release(buf: mmap.mmap) -> None:
    """Give a buffer from :func:`_aligned` back; the smallest are unmapped beyond :data:`SPARE_BYTES` in all."""
    with _SPARE_LOCK:
        _SPARE.append(buf)
        _SPARE.sort(key=len, reverse=True)
        while sum(map(len, _SPARE)) > SPARE_BYTES:
            _SPARE.pop().close()


class BlockWriter:
    """Writes byte ranges at any offsets of the existing file ``path``, which it makes ``size`` bytes long. Each
    byte must be written at most once; :meth:`close` completes the file.

    With direct I/O, the whole blocks of a range are copied into an aligned staging buffer and written by a
    thread while the caller goes on (the write waits on the disk, not on a core); a few buffers are in flight
    at most. An error of that thread is raised by the next :meth:`write` or by :meth:`close`."""

    IN_FLIGHT = 3

    def __init__(self, path: str | Path, size: int, direct: bool = True):
        self.size = size
        self.direct = bool(direct and _O_DIRECT)
        self.fd = -1
        if self.direct:
            try:
                self.fd = os.open(path, os.O_WRONLY | _O_DIRECT)
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
                self.direct = False
        if not self.direct:
            self.fd = os.open(path, os.O_WRONLY)
        try:
            os.ftruncate(self.fd, size)
        except BaseException:
            os.close(self.fd)
            raise
        # Blocks only partly written so far: block index -> (its bytes, the (start, stop) pieces written).
        self.edges: dict[int, tuple[bytearray, list[tuple[int, int]]]] = {}
        self.buffers: list[mmap.mmap] = []
        self.free: queue.Queue = queue.Queue()
        self.todo: queue.Queue = queue.Queue()
        self.error: BaseException | None = None
        self.thread: threading.Thread | None = None

    def write(self, data: memoryview | bytes, offset: int) -> None:
        data = memoryview(data).cast("B")
        if offset < 0 or offset + len(data) > self.size:
            raise ValueError(f"bytes {offset}..{offset + len(data)} are outside the file's {self.size}")
        self._raise()
        if not self.direct:
            pwrite_all(self.fd, data, offset)
            return
        end = offset + len(data)
        lo, hi = -(-offset // BLOCK) * BLOCK, end // BLOCK * BLOCK  # the whole blocks inside the range
        if lo >= hi:
            self._gather(data, offset)
            return
        self._gather(data[: lo - offset], offset)
        self._gather(data[hi - offset :], hi)
        self._submit(data[lo - offset : hi - offset], lo)

    def _gather(self, data: memoryview, offset: int) -> None:
        while len(data):
            b, at = divmod(offset, BLOCK)
            n = min(len(data), BLOCK - at)
            block, pieces = self.edges.setdefault(b, (bytearray(BLOCK), []))
            block[at : at + n] = data[:n]
            pieces.append((at, at + n))
            data, offset = data[n:], offset + n

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error

    def _buffer(self, n: int) -> mmap.mmap:
        """A free staging buffer of at least ``n`` bytes (waiting for one if all are in flight)."""
        if self.free.empty() and len(self.buffers) < self.IN_FLIGHT:
            buf = _aligned(n)
            self.buffers.append(buf)
            return buf
        while True:
            try:
                buf = self.free.get(timeout=0.05)
                break
            except queue.Empty:
                self._raise()
        if len(buf) < n:
            self.buffers.remove(buf)
            _release(buf)
            buf = _aligned(n)
            self.buffers.append(buf)
        return buf

    def _submit(self, data: memoryview, offset: int) -> None:
        """Whole blocks at a block-aligned ``offset``: copied into a staging buffer, written by the thread."""
        buf = self._buffer(len(data))
        with memoryview(buf) as view:
            view[: len(data)] = data
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name="block-writer", daemon=True)
            self.thread.start()
        self.todo.put((buf, len(data), offset))

    def _run(self) -> None:
        while (item := self.todo.get()) is not None:
            buf, n, offset = item
            try:
                if self.error is None:
                    with memoryview(buf) as view:
                        self._write_direct(view[:n], offset)
            except BaseException as e:
                self.error = e
            finally:
                self.free.put(buf)

    def _write_direct(self, data: memoryview, offset: int) -> None:
        try:
            pwrite_all(self.fd, data, offset)
        except OSError as e:  # opened with O_DIRECT, but this filesystem refuses the write itself
            if e.errno != errno.EINVAL or not self.direct:
                raise
            fcntl.fcntl(self.fd, fcntl.F_SETFL, fcntl.fcntl(self.fd, fcntl.F_GETFL) & ~_O_DIRECT)
            self.direct = False
            pwrite_all(self.fd, data, offset)

    def _drain(self) -> None:
        """Wait for the thread to write everything submitted, and stop it."""
        if self.thread is not None:
            self.todo.put(None)
            self.thread.join()
            self.thread = None

    def close(self) -> None:
        """Write the gathered partial blocks, cut the file to its size (a last block written whole may run past
        it) and close it."""
        try:
            self._drain()
            self._raise()
            for b in sorted(self.edges):
                block, pieces = self.edges[b]
                if self.direct:  # every byte of the block not in a piece is one nobody writes: a zero
                    buf = self._buffer(BLOCK)
                    with memoryview(buf) as view:
                        view[:BLOCK] = block
                        self._write_direct(view[:BLOCK], b * BLOCK)
                    self.free.put(buf)
                else:  # after a fall-back, other writes may have filled the rest of the block: only the pieces
                    for start, stop in pieces:
                        pwrite_all(self.fd, memoryview(block)[start:stop], b * BLOCK + start)
            self.edges.clear()
            os.ftruncate(self.fd, self.size)
        finally:
            self.abandon()

    def abandon(self) -> None:
        """Close the file without completing it (the caller removes it)."""
        self._drain()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        for buf in self.buffers:
            _release(buf)
        self.buffers.clear()


def read_digest(path: str | Path, direct: bool = True, chunk: int = 1 << 22) -> dict:
    """:func:`workbench.io.file_digest` (size and SHA-256 of the bytes on disk), read with direct I/O where the
    filesystem allows it, so a file just written by :class:`BlockWriter` is not pulled into the page cache. A
    thread reads the next chunk while this one hashes (the read waits on the disk, not on a core)."""
    if not (direct and _O_DIRECT):
        return file_digest(path)
    try:
        fd = os.open(path, os.O_RDONLY | _O_DIRECT)
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise
        return file_digest(path)
    try:
        return _hash_direct(fd, chunk)
    except _Refused:
        return file_digest(path)
    finally:
        os.close(fd)


class _Refused(Exception):
    """The filesystem opened the file for direct I/O but refuses to read it so."""


def _hash_direct(fd: int, chunk: int) -> dict:
    bufs = [_aligned(chunk), _aligned(chunk)]
    free: queue.Queue = queue.Queue()
    full: queue.Queue = queue.Queue()
    for b in bufs:
        free.put(b)

    def read() -> None:
        offset = 0
        try:
            while (buf := free.get()) is not None:
                n = os.preadv(fd, [buf], offset)
                full.put((buf, n, None))
                if n == 0:
                    return
                offset += n
        except OSError as e:
            full.put((None, 0, e))

    reader = threading.Thread(target=read, name="digest-reader", daemon=True)
    reader.start()
    h, size = hashlib.sha256(), 0
    try:
        while True:
            buf, n, err = full.get()
            if err is not None:
                if err.errno == errno.EINVAL and size == 0:
                    raise _Refused from err
                raise err
            if n == 0:
                break
            with memoryview(buf) as view:
                h.update(view[:n])
            size += n
            free.put(buf)
    finally:
        free.put(None)
        reader.join()
        for b in bufs:
            _release(b)
    return {"bytes": size, "sha256": h.hexdigest()}
