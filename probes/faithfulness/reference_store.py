"""The per-prompt claims reference (:class:`probes.faithfulness.per_prompt.Reference`) kept on disk.

Building a reference runs the claims test on its held-out problems and fits a probe per variable (about 9 s for
an organism on 2 CPU cores); the explorer needs one per (model, prompt shape, source) and used to rebuild it on
every start. A stored reference is read back in milliseconds. Its directory name is a digest of everything the
reference is a function of: the model's weights, the source of the ``probes`` and ``workbench`` packages (a
changed claims test or probe never reads an old result), and the arguments. Files are safetensors (the probes,
the class means) and JSON (the rest), written atomically; nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from probes.faithfulness.per_prompt import REFERENCE_N, Reference, build_reference
from probes.linear import ProbeFit
from workbench.errors import WorkbenchError
from workbench.io import atomic_dir
from workbench.models.checkpoint import weights_sha256
from workbench.tasks.addition import Problem

FORMAT = 1
ROOT_ENV = "WORKBENCH_EXPLORER_CACHE"
"""Environment variable naming where the explorer keeps what it computed (default ``runs/explorer``)."""
_PROBE_FIELDS = ("weight", "bias", "mean", "std", "train_accuracy", "test_accuracy")


def reference_root() -> Path:
    """Where the explorer stores references: ``$WORKBENCH_EXPLORER_CACHE/references`` (``runs/explorer`` under
    the working directory when unset)."""
    return Path(os.environ.get(ROOT_ENV) or "runs/explorer") / "references"


@lru_cache(maxsize=1)
def code_digest() -> str:
    """SHA-256 of every ``.py`` file of the ``probes`` and ``workbench`` packages (relative path and bytes)."""
    import probes
    import workbench

    h = hashlib.sha256()
    for pkg in (probes, workbench):
        root = Path(pkg.__file__).resolve().parent
        for f in sorted(root.rglob("*.py")):
            h.update(f.relative_to(root.parent).as_posix().encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def reference_key(model, shape: tuple[int, int], source: str, exclude: Problem | None, n: int) -> str:
    args = {"format": FORMAT, "weights": weights_sha256(model), "code": code_digest(), "shape": list(shape),
            "source": source, "exclude": None if exclude is None else [exclude.a, exclude.b], "n": n}
    return hashlib.sha256(json.dumps(args, sort_keys=True).encode()).hexdigest()[:32]


def save_reference(ref: Reference, path: str | Path) -> Path:
    tensors = {f"probes.{var}.{f}": getattr(fit, f).contiguous() for var, fit in ref.probes.items()
               for f in _PROBE_FIELDS}
    for var, m in ref.means.items():
        tensors[f"means.{var}.mean"] = m["mean"].contiguous()
        tensors[f"means.{var}.counts"] = m["counts"].contiguous()
    meta = {"format": FORMAT, "shape": list(ref.shape), "source": ref.source,
            "problems": [[p.a, p.b] for p in ref.problems], "claims": ref.claims,
            "sites": {v: list(s) for v, s in ref.sites.items()}, "probes": list(ref.probes),
            "means": {v: {k: m[k] for k in ("layer", "position", "site")} for v, m in ref.means.items()},
            "hooks": list(ref.hooks), "labels": list(ref.labels)}

    def write(tmp: Path) -> None:
        save_file(tensors, str(tmp / "reference.safetensors"))
        (tmp / "reference.json").write_text(json.dumps(meta))

    return atomic_dir(path, write)


def load_reference(path: str | Path) -> Reference | None:
    """The stored reference, or None where there is none (or it is damaged: then it is rebuilt)."""
    path = Path(path)
    try:
        meta = json.loads((path / "reference.json").read_text())
        tensors = load_file(str(path / "reference.safetensors"))
        if meta.get("format") != FORMAT:
            return None
        probes = {v: ProbeFit(**{f: tensors[f"probes.{v}.{f}"] for f in _PROBE_FIELDS}) for v in meta["probes"]}
        means = {v: {**m, "mean": tensors[f"means.{v}.mean"], "counts": tensors[f"means.{v}.counts"]}
                 for v, m in meta["means"].items()}
        return Reference(tuple(meta["shape"]), meta["source"], [Problem(a, b) for a, b in meta["problems"]],
                         meta["claims"], {v: (int(s[0]), int(s[1]), str(s[2])) for v, s in meta["sites"].items()},
                         probes, means, list(meta["hooks"]), list(meta["labels"]))
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError):  # JSONDecodeError is a ValueError
        return None


def stored_reference(model, shape: tuple[int, int], source: str, exclude: Problem | None, root: str | Path,
                     n: int = REFERENCE_N) -> Reference:
    """:func:`build_reference`, read from ``root/<key>`` when built before and stored there otherwise. A
    directory that cannot be written (read-only checkout) only costs the rebuild next time."""
    where = Path(root) / reference_key(model, shape, source, exclude, n)
    ref = load_reference(where)
    if ref is None:
        ref = build_reference(model, shape, source, exclude, n)
        try:
            save_reference(ref, where)
        except (OSError, WorkbenchError):
            pass
    return ref
