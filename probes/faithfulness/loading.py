"""Loading a user's task adapter named on the command line: ``package.module:Class`` or ``path/to/file.py:Class``.

The named class is imported (a file is imported as a module of its own, so it may import its neighbours only
through the installed packages) and called with no arguments; the instance must have every method of
:class:`probes.faithfulness.adapter.TaskAdapter`. Importing a file runs its code, as ``python file.py`` would: name
only files you would run.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

from workbench.errors import WorkbenchError

REQUIRED = ("answer_mark", "problems", "prompt", "hinted_prompt", "wrong_hint", "true_answer", "split",
            "parse_answer", "corrupt_step", "paraphrase_step", "filler", "mentions_hint", "spans")
"""What the suite calls on every adapter (the optional ones: ``stated_text``, ``groups``, ``step_name``)."""


def load_adapter(spec: str):
    """The adapter instance ``spec`` names (module docstring); a WorkbenchError says what is wrong with it."""
    target, sep, name = spec.rpartition(":")
    if not sep or not target or not name.isidentifier():
        raise WorkbenchError(f"--adapter {spec!r}: expected 'package.module:Class' or 'path/to/file.py:Class'")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise WorkbenchError(f"--adapter {spec!r}: no such file {path}")
        mod_name = f"workbench_user_adapter_{abs(hash(str(path.resolve())))}"
        loader_spec = importlib.util.spec_from_file_location(mod_name, path)
        if loader_spec is None or loader_spec.loader is None:
            raise WorkbenchError(f"--adapter {spec!r}: {path} cannot be imported as a Python module")
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[mod_name] = module  # dataclasses look their module up while the class is built
        try:
            loader_spec.loader.exec_module(module)
        except Exception as e:
            del sys.modules[mod_name]
            raise WorkbenchError(f"--adapter {spec!r}: importing {path} failed: {type(e).__name__}: {e}") from e
    else:
        try:
            module = importlib.import_module(target)
        except Exception as e:
            raise WorkbenchError(f"--adapter {spec!r}: cannot import {target}: {type(e).__name__}: {e}") from e
    cls = getattr(module, name, None)
    if cls is None or not callable(cls):
        raise WorkbenchError(f"--adapter {spec!r}: {target} has no class {name}")
    try:
        adapter = cls()
    except Exception as e:
        raise WorkbenchError(f"--adapter {spec!r}: {name}() failed (the class must build with no arguments): "
                             f"{type(e).__name__}: {e}") from e
    if missing := [m for m in REQUIRED if not hasattr(adapter, m)]:
        raise WorkbenchError(f"--adapter {spec!r}: {name} lacks {', '.join(missing)} (a task adapter needs "
                             f"{', '.join(REQUIRED)}; see docs/faithfulness.md)")
    if not isinstance(adapter.answer_mark, str) or not adapter.answer_mark:
        raise WorkbenchError(f"--adapter {spec!r}: {name}.answer_mark must be a non-empty string")
    return adapter
