"""workbench.direct_io: the bytes a BlockWriter leaves are those of plain writes, whichever way it writes them."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os

import numpy as np
import pytest

from workbench import direct_io
from workbench.direct_io import BLOCK, BlockWriter, read_digest


def _ranges(size: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """Disjoint ranges covering parts of [0, size), in shuffled order: short ones inside a block, ones across
    block edges, long aligned and unaligned ones, with gaps nobody writes."""
    cuts = np.sort(rng.choice(np.arange(1, size), size=40, replace=False))
    edges = [0, *cuts.tolist(), size]
    spans = [(a, b) for a, b in zip(edges, edges[1:]) if rng.random() < 0.8]  # the rest stay unwritten (zeros)
    spans += [(0, 0)]  # an empty write is allowed
    rng.shuffle(spans)
    return spans


def _expected(size: int, spans, data: bytes) -> bytes:
    out = bytearray(size)
    for a, b in spans:
        out[a:b] = data[a:b]
    return bytes(out)


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "buffered"])
@pytest.mark.parametrize("size", [1, BLOCK - 3, BLOCK, 5 * BLOCK + 17, 3 << 20])
def test_scattered_writes_give_the_bytes_plain_writes_give(tmp_path, direct, size):
    rng = np.random.default_rng(size)
    data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
    spans = _ranges(size, rng) if size > 50 else [(0, size)]
    path = tmp_path / "f"
    path.touch()
    w = BlockWriter(path, size, direct=direct)
    for a, b in spans:
        w.write(memoryview(data)[a:b], a)
    w.close()
    want = _expected(size, spans, data)
    assert path.read_bytes() == want
    assert read_digest(path, direct=direct) == {"bytes": size, "sha256": hashlib.sha256(want).hexdigest()}
    assert read_digest(path, direct=direct, chunk=BLOCK) == read_digest(path, direct=not direct)


def test_a_filesystem_that_refuses_direct_writes_gets_buffered_ones(tmp_path, monkeypatch):
    """O_DIRECT accepted at open but EINVAL on the write (as some FUSE and network filesystems do): the writer
    falls back to the page cache and still gets every byte right, those gathered before the fall-back included."""
    size = 9 * BLOCK + 5
    data = np.random.default_rng(1).integers(0, 256, size, dtype=np.uint8).tobytes()
    real, refused = direct_io.pwrite_all, []

    def refusing(fd, buf, offset):
        if os.O_DIRECT & fcntl.fcntl(fd, fcntl.F_GETFL):
            refused.append(offset)
            raise OSError(errno.EINVAL, "Invalid argument")
        real(fd, buf, offset)

    monkeypatch.setattr(direct_io, "pwrite_all", refusing)
    path = tmp_path / "f"
    path.touch()
    w = BlockWriter(path, size)
    assert w.direct
    w.write(data[10:BLOCK + 20], 10)  # gathers two partial blocks, writes none whole
    w.write(data[BLOCK + 20 : 6 * BLOCK + 1], BLOCK + 20)  # whole blocks: refused, then written buffered
    w.write(data[6 * BLOCK + 1 :], 6 * BLOCK + 1)
    w.write(data[:10], 0)
    w.close()
    assert refused and not w.direct
    assert path.read_bytes() == data


def test_an_error_in_the_writing_thread_is_raised_to_the_caller(tmp_path, monkeypatch):
    def full(fd, buf, offset):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(direct_io, "pwrite_all", full)
    path = tmp_path / "f"
    path.touch()
    w = BlockWriter(path, 64 * BLOCK)
    if not w.direct:
        pytest.skip("this filesystem has no direct I/O")
    with pytest.raises(OSError, match="No space left"):
        for i in range(64):  # the error surfaces at a later write or at close
            w.write(bytes(BLOCK), i * BLOCK)
        w.close()
    w.abandon()  # idempotent after an error: the file is closed, the thread stopped
    assert w.fd == -1 and w.thread is None


def test_writes_outside_the_file_are_refused(tmp_path):
    path = tmp_path / "f"
    path.touch()
    w = BlockWriter(path, 10)
    with pytest.raises(ValueError, match="outside the file"):
        w.write(b"x" * 11, 0)
    with pytest.raises(ValueError, match="outside the file"):
        w.write(b"x", -1)
    w.abandon()


def test_staging_buffers_are_reused_and_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(direct_io, "_SPARE", [])
    for k in range(3):
        path = tmp_path / f"f{k}"
        path.touch()
        w = BlockWriter(path, 40 * BLOCK)
        for i in range(0, 40, 8):
            w.write(bytes(8 * BLOCK), i * BLOCK)
        w.close()
    assert 0 < sum(map(len, direct_io._SPARE)) <= direct_io.SPARE_BYTES
    assert len(direct_io._SPARE) <= BlockWriter.IN_FLIGHT + 2  # kept, not one set per file
