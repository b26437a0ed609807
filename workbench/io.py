"""Atomic file writes: a reader (or a resumed run) never sees a half-written file or directory."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path


_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read the process umask once (os.umask can only read it by setting it)


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)``, then rename the temporary file onto ``path`` (atomic on one filesystem)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the result a normal file's mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | Path, obj) -> Path:
    return atomic_write(path, lambda p: p.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n"))


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> Path:
    def write(p: Path) -> None:
        with p.open("w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")

    return atomic_write(path, write)


def read_jsonl(path: str | Path) -> list[dict]:
    with Path(path).open() as f:
        return [json.loads(line) for line in f if line.strip()]


def atomic_dir(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Build a directory in a sibling temporary directory, then swap it in place of ``path``.

    The old directory (if any) is replaced only once the new one is complete, so a kill mid-way leaves either
    the old or the new directory, never a mix.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        write(tmp)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def write_parquet(path: str | Path, rows: list[dict]) -> Path:
    """A tidy table (one dict per row, same keys) as Parquet, atomically; pandas/polars/duckdb read it as is."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(rows)
    return atomic_write(path, lambda p: pq.write_table(table, p))


def read_parquet(path: str | Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()
