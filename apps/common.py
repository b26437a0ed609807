"""What every page shares: picking and loading a model (cached), and showing bad input as an error."""

from __future__ import annotations

import streamlit as st

from workbench.errors import WorkbenchError
from workbench.models.zoo import RECIPES


@st.cache_resource(show_spinner="loading the model")
def load(spec: str):
    from workbench.models.loader import load_model

    return load_model(spec)


def pick_model(key: str = "model", label: str = "Model", default: str = "adder-cot-faithful"):
    """A shipped organism or a local directory; returns the loaded model, or None after showing the error."""
    names = list(RECIPES) + ["a local directory..."]
    choice = st.selectbox(label, names, index=names.index(default), key=key)
    spec = st.text_input("Model directory (our checkpoint or a Hugging Face model)", key=f"{key}_dir") \
        if choice == names[-1] else choice
    if not spec:
        st.info("Type a model directory.")
        return None
    try:
        return load(spec)
    except WorkbenchError as e:
        st.error(str(e))
        return None


def guarded(fn, *args, **kwargs):
    """Run a library call; bad input shows ``st.error`` with the library's message and returns None."""
    try:
        return fn(*args, **kwargs)
    except (WorkbenchError, ValueError) as e:
        st.error(str(e))
        return None


def valid_text(model, text: str) -> bool:
    """Whether ``text`` fits the model's vocabulary; if not, the error (with the allowed characters) is shown."""
    from workbench.models.tokenizer import check_text

    try:
        check_text(model.tokenizer, text)
        return True
    except WorkbenchError as e:
        st.error(str(e))
        return False


def picked_spec(key: str = "model") -> str | None:
    """The spec (organism name or directory) that :func:`pick_model` with this ``key`` loaded: a string that keys
    cached results."""
    spec = st.session_state.get(key)
    return st.session_state.get(f"{key}_dir") if spec == "a local directory..." else spec


def beside_model(spec: str, *parts: str) -> str:
    """A path under the model's own directory: the shipped organism's, or the local directory given."""
    from pathlib import Path

    from workbench.models.zoo import organism_dir

    base = organism_dir(spec) if spec in RECIPES else Path(spec)
    return str(base.joinpath(*parts))


def dir_stamp(path: str) -> int:
    """Latest modification time (ns) of the files in ``path`` and its subdirectories, two levels deep: part of a
    cache key, so a directory rewritten in place is read again."""
    from pathlib import Path

    p = Path(path)
    files = [p] + list(p.glob("*")) + list(p.glob("*/*")) if p.exists() else []
    return max((f.stat().st_mtime_ns for f in files if f.is_file()), default=0)
