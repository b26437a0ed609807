"""Resumable long runs: every finished unit of work is saved, so a killed run picks up where it stopped.

A run's state lives in one directory, by convention ``OUT/.work/`` beside the run's files:

* ``key.json``: the full configuration the state belongs to (the model's weight digest, n, seed, tests, ...),
  written before any unit;
* ``UNIT.json``: one finished unit of work (a test of the suite, an organism of the demo, a stage of the
  alignment study), written atomically once the unit is done.

A rerun with the same configuration reads the finished units back instead of recomputing them; one with another
configuration is refused (:class:`~workbench.errors.WorkbenchError`) rather than mixing two runs. Every unit's
value goes through a JSON round trip also when it was just computed, so a fresh run and a resumed run hold the
very same values (lists for tuples, floats as JSON writes them).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np

from workbench.errors import WorkbenchError
from workbench.io import write_json

log = logging.getLogger(__name__)
WORK_DIR = ".work"
"""The state's directory inside a run's output directory."""
_UNIT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if hasattr(obj, "tolist"):  # a torch tensor
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot save a {type(obj).__name__} in a run's state")


def jsonable(obj):
    """``obj`` as a JSON round trip gives it back: what a resumed run reads from disk."""
    return json.loads(json.dumps(obj, default=_default))


def _differ(old: dict, new: dict, prefix: str = "") -> list[str]:
    keys = sorted(old.keys() | new.keys())
    out = []
    for k in keys:
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differ(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k} ({a!r} there, {b!r} now)" if not isinstance(a, (dict, list)) and
                       not isinstance(b, (dict, list)) else f"{prefix}{k}")
    return out


class WorkArea:
    """The finished units of one run, under ``root`` (``OUT/.work`` or a folder inside it)."""

    def __init__(self, root: str | Path, key: dict, what: str):
        self.root = Path(root)
        self.key = jsonable(key)
        key_path = self.root / "key.json"
        if self.root.is_symlink() or (self.root.exists() and not self.root.is_dir()):
            raise WorkbenchError(f"{self.root} is not a directory; it holds the resumable state of {what}")
        if key_path.is_file():
            try:
                old = json.loads(key_path.read_text())
            except (OSError, ValueError) as e:
                raise WorkbenchError(f"{key_path} is unreadable ({e}); delete {self.root} to start over") from None
            if old != self.key:
                differ = _differ(old, self.key) if isinstance(old, dict) else ["everything"]
                raise WorkbenchError(
                    f"{self.root.parent} holds the state of another run than this {what} (differs in "
                    f"{'; '.join(differ)}); rerun with that run's options to resume it, pass another --out, or "
                    f"delete {self.root} to start over")
        else:
            for stale in self.root.glob("*.json") if self.root.is_dir() else ():
                stale.unlink()  # units without a key: nothing says which run they belong to
            write_json(key_path, self.key)

    def path(self, unit: str) -> Path:
        if not _UNIT.match(unit):
            raise ValueError(f"bad unit name {unit!r}")
        return self.root / f"{unit}.json"

    def load(self, unit: str):
        """The saved value of ``unit``, or None if it has not finished."""
        path = self.path(unit)
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())["value"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
            log.warning("recomputing %s: its saved state is unreadable (%s)", unit, e)
            return None

    def save(self, unit: str, value):
        """Save a finished unit (atomically) and return its value as read back."""
        value = jsonable(value)
        write_json(self.path(unit), {"unit": unit, "value": value})
        return value


class Units:
    """Run-or-resume for a sequence of units; without a work area every unit simply runs (values still go
    through the JSON round trip, so the results are the same with or without one)."""

    def __init__(self, work: WorkArea | None, say=None):
        self.work, self.say = work, say or (lambda msg: log.info(msg))
        self.resumed: list[str] = []

    def run(self, unit: str, compute):
        saved = self.work.load(unit) if self.work else None
        if saved is not None:
            self.resumed.append(unit)
            self.say(f"{unit}: resumed from {self.work.path(unit)}")
            return saved
        value = compute()
        return self.work.save(unit, value) if self.work else jsonable(value)


def check_same_run(marker: Path, config: dict, where: Path, restart: str) -> None:
    """Refuse to resume from ``where`` when the configuration saved in ``marker`` is not ``config``.

    A marker that is unreadable or not a JSON object is named as damaged; a different configuration is refused
    with the keys that differ. ``restart`` says how to start over instead (e.g. "pass --no-resume").
    """
    try:
        old = json.loads(marker.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise WorkbenchError(f"{marker} is unreadable ({e}); delete {where} or {restart}") from None
    if not isinstance(old, dict):
        raise WorkbenchError(f"{marker} is damaged (a JSON {type(old).__name__}, not an object); delete {where} "
                             f"or {restart}")
    if old != config:
        diff = sorted(k for k in config.keys() | old.keys() if old.get(k) != config.get(k))
        raise WorkbenchError(f"{where} holds the state of a different run (differs in {diff}); delete it, pass "
                             f"another directory, or {restart}")
