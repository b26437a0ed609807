"""Dependencies the workbench trusts only at the exact release it was tested with.

circuit-tracer is not published on PyPI by its authors: the only distribution there (0.5.0) is a fork
(github.com/Caerii/circuit-tracer, of decoderesearch/circuit-tracer). The workbench pins that release, and before
using it checks the installed copy is that release *and* the same code: the hashes its wheel recorded for its
Python files (``RECORD``) are digested and compared with the digest of the tested wheel, so another build under
the same version number is caught too. Set ``WORKBENCH_ALLOW_UNTESTED_DEPS=1`` to proceed with a warning.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from importlib import metadata

from workbench.errors import WorkbenchError

# name -> (version, sha256 of the sorted "path,hash" RECORD lines of its .py files)
TESTED = {
    "circuit-tracer": ("0.5.0", "31ee0fa9360725c92f4038481e8d53b4a2763ab7ec836f1f6b51f986938345c7"),
}
ALLOW_ENV = "WORKBENCH_ALLOW_UNTESTED_DEPS"


def record_digest(dist: metadata.Distribution) -> str:
    """Digest of the wheel's own hashes of its Python files: stable across installs, different for other code."""
    text = dist.read_text("RECORD") or ""
    lines = sorted(line for line in text.splitlines() if line.split(",")[0].endswith(".py") and ",sha256=" in line)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def check_tested(name: str) -> None:
    """Raise :class:`WorkbenchError` if ``name`` is missing or is not the tested release and code."""
    version, digest = TESTED[name]
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        raise WorkbenchError(f"{name} is not installed; install the tested release: "
                             f"pip install {name}=={version}") from None
    problem = None
    if dist.version != version:
        problem = f"{name} {dist.version} is installed, but the workbench is tested with {name}=={version}"
    elif record_digest(dist) != digest:
        problem = (f"the installed {name} {version} is not the build the workbench was tested with (its files' "
                   "hashes differ)")
    if problem is None:
        return
    if os.environ.get(ALLOW_ENV) == "1":
        warnings.warn(f"{problem}; proceeding because {ALLOW_ENV}=1", stacklevel=2)
        return
    raise WorkbenchError(f"{problem}; reinstall it (pip install --force-reinstall {name}=={version}) or set "
                         f"{ALLOW_ENV}=1 to use it untested")
