"""What every page shares: picking and loading a model (cached), showing bad input as an error, and the state
that travels between pages and in links.

Shared state: the model, the prompt (its problem: ``[hint:H ]a+b=``, or a hint line and a story) and the layer a page shows are kept in
``st.session_state`` (``shared_model``, ``shared_prompt``, ``shared_layer``) and written to the URL's query string
(``?model=...&prompt=...&layer=...``), so the next page opens on what this one showed and the address bar holds a
link to the view. A link opened in a new session seeds the shared state from its query string
(:func:`init_shared`, called by the router before every page).
"""

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


def target_ids(model, target: str, allow_empty: bool = True) -> list[int] | None:
    """A target token's ids: one id, or none for an empty target when ``allow_empty``; None after showing why
    the text is not one token."""
    from workbench.models.tokenizer import check_text

    try:
        check_text(model.tokenizer, target)
    except WorkbenchError as e:
        st.error(f"the target token is {e}")
        return None
    ids = model.tokenizer.encode(target, add_special_tokens=False) if target else []
    if len(ids) != 1 and (target or not allow_empty):
        st.error(f"the target must be one token; {shorten(target, 20)!r} is {len(ids)} tokens")
        return None
    return ids


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


DEFAULT_PROMPT = "478+256="
"""Where every page opens on a fresh session: a 3-digit problem with two carries."""
DEFAULT_TEXT = "478+256= 8+6+0=14 7+5+1=13 4+2+1=07 ans "
"""The same with the organisms' CoT, up to where the answer starts (pages that read a whole text)."""
SHARED = ("model", "prompt", "layer", "feature")
"""What travels between pages and in the URL."""


def init_shared() -> None:
    """Seed the shared state from the URL: on a session's first run (a link someone shared), and whenever the
    query string holds a value this session did not write (a link between pages, an address edited by hand)."""
    seen = st.session_state.setdefault("shared_url", {})
    for name in SHARED:
        value = st.query_params.get(name)
        if value and seen.get(name) != value:
            seen[name] = value
            st.session_state[f"shared_{name}"] = value


def shared(name: str, default=None):
    """The shared ``model``, ``prompt`` or ``layer`` (what the last page showed), or ``default``."""
    return st.session_state.get(f"shared_{name}", default)


def share(name: str, value) -> None:
    """Make ``value`` the shared ``name`` and put it in the URL; nothing for an empty value."""
    if value is None or value == "":
        return
    st.session_state[f"shared_{name}"] = value
    st.session_state.setdefault("shared_url", {})[name] = str(value)
    if st.query_params.get(name) != str(value):
        st.query_params[name] = str(value)


def task_view(spec: str | None):
    """How pages read a prompt of the model's task family (:mod:`workbench.tasks.views`): the addition task for
    a model whose card names none (and before any model is picked)."""
    from workbench.models.zoo import task_of
    from workbench.tasks.views import view_for

    try:
        return view_for(task_of(spec) if spec else "addition")
    except (WorkbenchError, OSError, ValueError):
        return view_for("addition")


def problem_head(text: str, view=None) -> str | None:
    """The problem a text starts with (``[hint:H ]a+b=``, or a hint line and a story: what pages share as the
    prompt), or None."""
    return (view or task_view(None)).head(text)


def noise_floor(n_test: int) -> float:
    """Half-width of the 95% interval of a difference of two held-out accuracies at the worst case p = 1/2: the
    selectivity (or margin over a baseline) a probe that reads nothing still shows by chance."""
    import math

    return 1.96 * math.sqrt(2 * 0.25 / max(n_test, 1))


def seed(key: str, value) -> None:
    """Give a widget its first value through session state (no default argument then, so no Streamlit warning);
    a widget already on the page keeps what the user set."""
    if key not in st.session_state:
        st.session_state[key] = value


def prompt_input(label: str = "Prompt", default: str | None = None, key: str | None = None, derive=None,
                 view=None) -> str:
    """A prompt box that opens on the shared prompt (``derive(shared)`` turns it into this page's text, e.g. with
    the model's CoT appended); a text that starts with a problem makes that problem the shared prompt.

    ``view`` is the task family of the page's model (:func:`task_view`): a shared prompt of another family is
    not reused, the box opens on ``default`` when it is a prompt of the family (else on the family's own), and a
    family whose prompts hold a line break (a hint line before a story) gets a text area."""
    view = view or task_view(None)
    key = key or f"prompt_{label}"
    if st.session_state.get(f"{key}_task", view.name) != view.name:
        st.session_state.pop(key, None)  # the model's task changed: a prompt of the other task means nothing here
    st.session_state[f"{key}_task"] = view.name
    if key not in st.session_state:
        start = shared("prompt")
        start = start if start and view.head(start) is not None else None
        if start and derive is not None:
            start = derive(start)
        own = view.default_text if derive is not None else view.default_prompt
        st.session_state[key] = start or (default if default is not None and view.head(default) else own)
    if view.name == "addition":
        text = st.text_input(label, key=key)
    else:
        text = st.text_area(label, key=key, height=90)
    share("prompt", view.head(text))
    return text


def pick_model(key: str = "model", label: str = "Model", default: str = "adder-cot-faithful", shared_model: bool = True):
    """A shipped organism or a local directory; returns the loaded model, or None after showing the error.

    With ``shared_model`` the picker opens on the shared model (the last page's) and a model that loads becomes
    the shared one."""
    names = list(RECIPES) + [LOCAL]
    want = shared("model") if shared_model else None
    if key not in st.session_state:
        if want in RECIPES:
            st.session_state[key] = want
        elif want and not path_problem(want):
            st.session_state[key] = LOCAL
            seed(f"{key}_dir", want)
        else:
            st.session_state[key] = default if default in names else names[0]
    choice = st.selectbox(label, names, key=key)
    spec = st.text_input("Model directory (our checkpoint or a Hugging Face model)", key=f"{key}_dir").strip() \
        if choice == LOCAL else choice
    if not spec:
        st.info("Type a model directory.")
        return None
    model = load_or_error(spec)
    if model is not None and shared_model:
        share("model", spec)
    return model


def shared_layer(n_layers: int, default: int) -> int:
    """The shared layer, if it is one of this model's ``n_layers`` (block index), else ``default``."""
    try:
        layer = int(shared("layer"))
    except (TypeError, ValueError):
        return default
    return layer if 0 <= layer < n_layers else default


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


def model_stamp(spec: str) -> int:
    """Part of a cached result's key: a checkpoint rewritten in place is computed again."""
    return dir_stamp(beside_model(spec))


def budget(model, prompt: str, want: int = 256) -> int:
    """New tokens a completion of ``prompt`` may have: ``want``, or what the context leaves (BOS counted)."""
    return max(0, min(want, model.cfg.n_ctx - model.to_tokens(prompt).shape[1]))


@st.cache_data(show_spinner=False, max_entries=512)
def completion_of(spec: str, stamp: int, prompt: str, max_new_tokens: int) -> str:
    """The model's greedy completion of ``prompt`` (up to its end-of-text token)."""
    from workbench.generation import complete

    return complete(load(spec), [prompt], max_new_tokens=max_new_tokens)[0] if max_new_tokens >= 1 else ""


def own_completion(spec: str, model, prompt: str) -> str:
    """:func:`completion_of` with as many new tokens as the context allows."""
    return completion_of(spec, model_stamp(spec), prompt, budget(model, prompt))


def answer_context(spec: str, model, prompt: str) -> str:
    """The prompt and the model's own reasoning up to where its answer starts (its task's answer mark, e.g.
    `` ans ``, included): the text on which its next token is the answer's first digit. The prompt alone for a
    model that answers at once."""
    completion = own_completion(spec, model, prompt)
    head, mark, _ = completion.partition(task_view(spec).answer_mark)
    return prompt + head + mark if mark else prompt


def visible(text: str) -> str:
    """Spaces shown as '␣' (a token that is a space reads as one)."""
    return text.replace(" ", "\u2423")
