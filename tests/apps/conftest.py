"""Settings for the AppTest-based tests of the explorer.

Streamlit's server compiles a page once and keeps its bytecode (``ScriptCache``); ``AppTest`` builds a fresh cache
on every ``run()``, so each rerun of a page in a test recompiled it, magic AST rewrite included (about a fifth of a
page test's time). The bytecode is kept here per (path, modification time, magic setting), as the server does, so
a test's reruns cost what a user's reruns cost.
"""

from __future__ import annotations

import os

import pytest
from streamlit import config
from streamlit.runtime.scriptrunner.script_cache import ScriptCache

_BYTECODE: dict[tuple, object] = {}
_compile = ScriptCache.get_bytecode


def _cached_bytecode(self: ScriptCache, script_path: str):
    path = os.path.abspath(script_path)
    key = (path, os.stat(path).st_mtime_ns, bool(config.get_option("runner.magicEnabled")))
    if key not in _BYTECODE:
        _BYTECODE[key] = _compile(self, script_path)
    return _BYTECODE[key]


@pytest.fixture(autouse=True, scope="session")
def _keep_page_bytecode():
    ScriptCache.get_bytecode = _cached_bytecode
    yield
    ScriptCache.get_bytecode = _compile
