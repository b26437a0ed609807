"""What every page shares: picking and loading a model (cached), and showing bad input as an error."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from workbench.errors import WorkbenchError
from workbench.models.zoo import RECIPES


LOCAL = "a local directory..."
NOT_LOADABLE = ("this directory is not a loadable model (a workbench checkpoint: config.json, model.safetensors and "
                "tokenizer.json; or a Hugging Face model directory)")


@st.cache_resource(show_spinner="loading the model")
def load(spec: str):
    from workbench.models.loader import load_model

    return load_model(spec)


def shorten(text: str, n: int = 80) -> str:
    """``text`` as typed, cut to ``n`` characters for a message."""
    return text if len(text) <= n else f"{text[:n]}... ({len(text)} characters)"


def first_line(e: BaseException, n: int = 200) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return shorten(lines[0], n) if lines else ""


def load_or_error(spec: str):
    """:func:`load`, or None after ``st.error``: the one place a page loads a model the user named.

    A :class:`WorkbenchError` shows its own message; any other exception from loading (a file the loader could
    not parse) shows its type and first line, and that the directory is not a loadable model.
    """
    problem = path_problem(spec)
    if problem:
        st.error(f"{shorten(spec)} cannot be looked up ({problem}); give an organism name or a model directory.")
        return None
    try:
        return load(spec)
    except WorkbenchError as e:
        st.error(str(e))
    except Exception as e:  # noqa: BLE001 - whatever a damaged file makes a loader raise, the page keeps running
        st.error(f"{shorten(spec)}: {type(e).__name__}: {first_line(e)}; {NOT_LOADABLE}.")
    return None


def pick_model(key: str = "model", label: str = "Model", default: str = "adder-cot-faithful"):
    """A shipped organism or a local directory; returns the loaded model, or None after showing the error."""
    names = list(RECIPES) + [LOCAL]
    choice = st.selectbox(label, names, index=names.index(default), key=key)
    spec = st.text_input("Model directory (our checkpoint or a Hugging Face model)", key=f"{key}_dir").strip() \
        if choice == LOCAL else choice
    if not spec:
        st.info("Type a model directory.")
        return None
    return load_or_error(spec)


def guarded(fn, *args, **kwargs):
    """Run a library call; bad input shows ``st.error`` with the library's message and returns None."""
    try:
        return fn(*args, **kwargs)
    except (WorkbenchError, ValueError) as e:
        st.error(str(e))
        return None


def guarded_load(fn, *args, what: str):
    """:func:`guarded` for a call that reads a directory the user typed (an SAE, a tuned lens, a saved diff): any
    other exception (a file the reader could not parse) shows its type and first line, and that the directory is
    not ``what``; returns None after the error."""
    try:
        return fn(*args)
    except (WorkbenchError, ValueError) as e:
        st.error(str(e))
    except Exception as e:  # noqa: BLE001 - a damaged file is bad input, not a crash of the page
        st.error(f"{type(e).__name__}: {first_line(e)}; this directory is not {what}.")
    return None


def valid_text(model, text: str) -> bool:
    """Whether ``text`` fits the model's vocabulary and context (its tokens, BOS included as the tokenizer adds
    it, at most ``n_ctx``); if not, the error (the allowed characters, or both lengths) is shown."""
    from workbench.models.tokenizer import tokenize_prompts

    try:
        tokenize_prompts(model, [text])
        return True
    except WorkbenchError as e:
        st.error(str(e))
        return False


def picked_spec(key: str = "model") -> str | None:
    """The spec (organism name or directory) that :func:`pick_model` with this ``key`` loaded: a string that keys
    cached results."""
    spec = st.session_state.get(key)
    return (st.session_state.get(f"{key}_dir") or "").strip() if spec == LOCAL else spec


def beside_model(spec: str, *parts: str) -> str:
    """A path under the model's own directory: the shipped organism's, or the local directory given."""
    from workbench.models.zoo import organism_dir

    base = organism_dir(spec) if spec in RECIPES else Path(spec)
    return str(base.joinpath(*parts))


def dir_stamp(path: str) -> int:
    """Latest modification time (ns) of the files in ``path`` and its subdirectories, two levels deep: part of a
    cache key, so a directory rewritten in place is read again."""
    p = Path(path)
    files = [p] + list(p.glob("*")) + list(p.glob("*/*")) if exists(path) else []
    return max((f.stat().st_mtime_ns for f in files if f.is_file()), default=0)


def path_problem(path: str) -> str | None:
    """Why the file system cannot even look ``path`` up (a NUL byte, a name too long), or None."""
    try:
        Path(path).exists()
    except (OSError, ValueError) as e:
        return getattr(e, "strerror", None) or first_line(e)
    return None


def is_dir(path: str) -> bool:
    """``Path(path).is_dir()``, False (not an exception) for a path the file system cannot look up."""
    return not path_problem(path) and Path(path).is_dir()


def is_file(path: str) -> bool:
    """``Path(path).is_file()``, False (not an exception) for a path the file system cannot look up."""
    return not path_problem(path) and Path(path).is_file()


def exists(path: str) -> bool:
    """``Path(path).exists()``, False (not an exception) for a path the file system cannot look up."""
    return not path_problem(path) and Path(path).exists()
