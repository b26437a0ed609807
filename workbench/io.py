"""Atomic file writes: a reader (or a resumed run) never sees a half-written file or directory."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from workbench.errors import WorkbenchError


_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read the process umask once (os.umask can only read it by setting it)


def check_writable_target(path: str | Path) -> Path:
    """Refuse to write over anything but a regular file (or nothing): a symlink, FIFO, device or directory at
    ``path`` is the user's, and renaming a new file onto it would replace it (as root, even ``/dev/full``)."""
    path = Path(path)
    if path.is_symlink():
        raise WorkbenchError(f"{path} is a symbolic link; give the real path of a regular file to write")
    if path.exists() and not path.is_file():
        kind = "a directory" if path.is_dir() else "a special file (FIFO, socket or device)"
        raise WorkbenchError(f"{path} is {kind}; the workbench only writes regular files there")
    return path


class PendingFile:
    """A temporary file beside ``path`` that becomes ``path`` only by :meth:`commit` (an atomic rename on one
    filesystem): :func:`atomic_write` for writers that write a file in steps. :meth:`discard` removes it."""

    def __init__(self, path: str | Path):
        self.path = check_writable_target(path)
        _make_parent(self.path)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        os.close(fd)
        self.tmp = Path(tmp)

    def commit(self) -> Path:
        os.chmod(self.tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the result a normal file's mode
        os.replace(self.tmp, self.path)
        return self.path

    def discard(self) -> None:
        self.tmp.unlink(missing_ok=True)


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)``, then rename the temporary file onto ``path`` (atomic on one filesystem)."""
    pending = PendingFile(path)
    try:
        write(pending.tmp)
        return pending.commit()
    except BaseException:
        pending.discard()
        raise


def _make_parent(path: Path) -> None:
    """Create ``path``'s parent directories; a file in the way is a user error, not a traceback."""
    for ancestor in [path.parent, *path.parent.parents]:
        if ancestor.exists() or ancestor.is_symlink():
            if not ancestor.is_dir():
                raise WorkbenchError(f"cannot write {path}: {ancestor} is a file, not a directory")
            break
    path.parent.mkdir(parents=True, exist_ok=True)


def write_json(path: str | Path, obj) -> Path:
    return atomic_write(path, lambda p: p.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n"))


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> Path:
    def write(p: Path) -> None:
        with p.open("w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")

    return atomic_write(path, write)


def read_jsonl(path: str | Path) -> list[dict]:
    with Path(path).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _jsonl_line_numbers(path: Path) -> list[int]:
    """The file's line number of each row :func:`read_jsonl` returns (blank lines are skipped)."""
    with path.open(encoding="utf-8") as f:
        return [i + 1 for i, line in enumerate(f) if line.strip()]


def read_dataset(path: Path, fields: tuple[str, ...] = ("prompt",)) -> list[dict]:
    """A user's JSONL file whose every line is an object with a string in each of ``fields``: its rows, or a
    WorkbenchError that names the file, the first bad lines and what a line must hold."""
    if not path.is_file():
        raise WorkbenchError(f"no dataset file {path}")
    try:
        rows = read_jsonl(path)
    except (ValueError, UnicodeDecodeError) as e:
        raise WorkbenchError(f"{path} is not UTF-8 JSONL: {str(e).splitlines()[0][:160]}") from None
    bad = [i for i, r in enumerate(rows) if not isinstance(r, dict) or
           not all(isinstance(r.get(f), str) for f in fields)]
    if bad:
        lines = _jsonl_line_numbers(path)
        bad = [lines[i] for i in bad]
        need = " and ".join(f"a string {f!r} field" for f in fields)
        raise WorkbenchError(f"{path}: lines {bad[:5]} are not objects with {need}")
    if not rows:
        raise WorkbenchError(f"{path} has no rows")
    return rows


# Files moved into place last by atomic_dir: readers take them as "this directory is complete".
_MOVED_LAST = ("config.json", "cfg.json", "card.json", "workbench.json", "manifest.json", "state.json",
               "summary.json")


def atomic_dir(path: str | Path, write: Callable[[Path], None], whole: bool = False) -> Path:
    """Build a directory's files in a sibling temporary directory, then move each one into ``path``.

    Only the entries ``write`` produced are replaced (each by one rename); anything else already in ``path``
    (a user's notes, a transcoder set beside a checkpoint) is kept. Config and manifest files move last, so a
    kill mid-way leaves the old complete marker beside at most some new files, never a new marker over old data.

    ``whole=True`` swaps the whole directory in one rename instead: only for directories that are the
    workbench's alone (a resumable training state), where old and new files must never mix.
    """
    path = Path(path)
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise WorkbenchError(f"{path} exists and is not a directory; give a directory (new or written by the "
                             "workbench) to write into")
    if whole:
        return _swap_dir(path, write)
    _make_parent(path)
    path.mkdir(exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        write(tmp)
        os.chmod(tmp, 0o777 & ~_UMASK)
        entries = sorted(tmp.iterdir(), key=lambda e: (e.name in _MOVED_LAST, e.name))
        for entry in entries:
            target = path / entry.name
            if target.is_symlink() or (target.exists() and not target.is_dir() and not target.is_file()):
                raise WorkbenchError(f"{target} is a link or special file; the workbench will not replace it")
            if entry.is_dir() and target.is_dir():
                old = path / f".{entry.name}.old"
                shutil.rmtree(old, ignore_errors=True)
                os.replace(target, old)  # a directory cannot be renamed onto a non-empty one
                os.replace(entry, target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(entry, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _swap_dir(path: Path, write: Callable[[Path], None]) -> Path:
    _make_parent(path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        write(tmp)
        os.chmod(tmp, 0o777 & ~_UMASK)
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


def file_digest(path: str | Path) -> dict:
    """A file's size and SHA-256, read in 1 MiB chunks into one reused buffer: what manifests record to catch
    truncation and damage. (Read, not memory-mapped: a file cut short by someone else while it is hashed must
    give a short read, not a SIGBUS.)"""
    path = Path(path)
    h = hashlib.sha256()
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    size = 0
    with path.open("rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
            size += n
    return {"bytes": size, "sha256": h.hexdigest()}


MARKER = ".workbench"


def prepare_out_dir(path: str | Path, command: str, overwrite: bool = False) -> Path:
    """Check that ``path`` may receive a command's output directory, and mark it as the workbench's.

    Allowed: a new path, an empty directory, or a directory the workbench wrote before (it holds ``MARKER``).
    A non-empty directory of someone else's is refused unless ``overwrite``; even then only same-named files are
    replaced and nothing else is deleted. Files, links and special files at ``path`` are always refused.
    """
    path = Path(path)
    if not str(path).strip():
        raise WorkbenchError("--out is empty; give an output directory, e.g. --out runs/mine")
    if path.is_symlink():
        raise WorkbenchError(f"--out {path} is a symbolic link; give the real directory path")
    if path.exists() and not path.is_dir():
        kind = "a file" if path.is_file() else "a special file (FIFO, socket or device)"
        raise WorkbenchError(f"--out {path} is {kind}; give a directory (new, empty, or written by the workbench)")
    resolved = path.resolve()
    for system in ("/proc", "/sys", "/dev"):
        if resolved == Path(system) or Path(system) in resolved.parents:
            raise WorkbenchError(f"--out {path} is under {system}; give a directory on a normal filesystem")
    if path.is_dir() and not (path / MARKER).is_file() and any(path.iterdir()) and not overwrite:
        raise WorkbenchError(f"--out {path} is a non-empty directory the workbench did not write; give a new or "
                             "empty directory, or pass --overwrite to write into it (files of the same names are "
                             "replaced, nothing else is touched)")
    marker = path / MARKER
    try:
        _make_parent(marker)
        path.mkdir(exist_ok=True)
        if not marker.is_file():
            marker.write_text(json.dumps({"written_by": "workbench", "command": command}) + "\n")
    except OSError as e:
        raise WorkbenchError(f"cannot write into --out {path}: {e.strerror or e}") from None
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
