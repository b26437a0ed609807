"""Every input widget of every explorer page, fed bad values: no exception reaches Streamlit, invalid input shows an
error, and a valid value afterwards renders the page again (the next page runs too).

The cases are generated from the widgets each page shows, so a new widget is swept without listing it here. A
choice (selectbox, radio, checkbox) or a good path that reveals more widgets is explored one level down (two in
all): e.g. "a local directory..." in a model picker reveals the directory input, which gets the damaged model
directories built below (copies of adder-direct, each with one thing broken).
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from apps.common import LOCAL

ROOT = Path(__file__).resolve().parents[2]
EXPLORER = str(ROOT / "apps" / "explorer.py")
PAGES = re.findall(r'st\.Page\("([^"]+)"', (ROOT / "apps" / "explorer.py").read_text())
ORGANISMS = ROOT / "workbench" / "models" / "organisms"
KINDS = ("text_input", "text_area", "number_input", "slider", "selectbox", "radio", "select_slider", "multiselect",
         "checkbox", "toggle")
CHOICES = ("selectbox", "radio", "select_slider", "checkbox", "toggle")
FREE_TEXT = ("Label contains",)  # a filter: any text is valid
DEPTH = 2

# (name, value, invalid): invalid text must be answered by an error on a prompt-like input.
TEXTS = [
    ("empty", "", False),
    ("spaces", "   ", False),  # ' ' is in the organisms' vocabulary
    ("tab and newline", "\t\n", True),
    ("Z", "Z", True),
    ("euro", "\u20ac", True),
    ("valid then Z", "36+59=Z", True),
    ("NUL", "\x00", True),
    ("longer than the context", "1+1=" * 200, True),
    ("very long, in the vocabulary", "9" * 20000, True),
    ("very long, outside it", "\u20ac" * 20000, True),
]


def _size(organism: str) -> float:
    """The size of an organism's shipped weights (infinite for a recipe not trained yet)."""
    from workbench.models.zoo import organism_dir

    weights = organism_dir(organism) / "model.safetensors"
    return weights.stat().st_size if weights.is_file() else float("inf")


def _smallest_organism() -> str:
    from workbench.models.zoo import RECIPES

    return min(RECIPES, key=_size)


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> dict[str, str]:
    """Named paths: "model: ..." damaged model directories (for model inputs), "path: ..." bad for any path input,
    "good ..." the valid values (a model, an SAE with a dashboard, a tuned lens)."""
    root = tmp_path_factory.mktemp("bad_inputs")
    skip = shutil.ignore_patterns("transcoders", "card.json")

    def damaged(name: str) -> Path:
        d = root / name
        shutil.copytree(ORGANISMS / "adder-direct", d, ignore=skip)
        return d

    out = {}

    def truncate(path: Path) -> None:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    good = root / "good_model"  # the smallest organism: it also pairs with adder-hint on the Alignment-diff page
    shutil.copytree(ORGANISMS / _smallest_organism(), good, ignore=skip)
    out["good model"] = str(good)

    d = damaged("truncated_weights")
    truncate(d / "model.safetensors")
    out["path: a model with a truncated model.safetensors"] = str(d)
    d = damaged("garbage_weights")
    (d / "model.safetensors").write_bytes(b"\x00\x01 not safetensors")
    out["model: garbage model.safetensors"] = str(d)
    d = damaged("other_weights")  # adder-hint's 2 layers under adder-direct's 3-layer config
    shutil.copy(ORGANISMS / "adder-hint" / "model.safetensors", d / "model.safetensors")
    out["model: weights of another architecture"] = str(d)
    d = damaged("no_weights")
    (d / "model.safetensors").rename(d / "pytorch_model.bin")
    out["model: a pickle instead of safetensors"] = str(d)
    for name, text in [("config_list", "[1, 2, 3]"), ("config_string", '"workbench-checkpoint"'),
                       ("config_truncated", '{"format": "workbench-checkpoint", "hooked'),
                       ("config_inner_list", json.dumps({"format": "workbench-checkpoint", "format_version": 1,
                                                         "hooked_transformer_config": [1, 2]})),
                       ("config_no_inner", json.dumps({"format": "workbench-checkpoint"})),
                       ("config_hf_unknown", json.dumps({"model_type": "no-such-architecture"}))]:
        d = damaged(name)
        (d / "config.json").write_text(text)
        out[f"model: config.json {name}"] = str(d)
    d = damaged("tokenizer_bytes")
    (d / "tokenizer.json").write_bytes(b"\xff\xfe\x00garbage\x80")
    out["model: tokenizer.json of bytes"] = str(d)
    d = damaged("tokenizer_json")
    (d / "tokenizer.json").write_text('{"version": "1.0", "model": 3}')
    out["model: tokenizer.json not a tokenizer"] = str(d)
    (root / "empty").mkdir()
    out["path: an empty directory"] = str(root / "empty")
    (root / "file.txt").write_text("not a directory\n")
    out["path: a text file"] = str(root / "file.txt")
    (root / "garbage.json").write_bytes(b"\xff\xfe\x00garbage\x80")
    out["path: a file of bytes"] = str(root / "garbage.json")
    (root / "list.json").write_text("[1, 2]")
    out["path: a JSON list"] = str(root / "list.json")
    out["path: a missing directory"] = str(root / "no" / "such" / "dir")
    out["path: a name too long for the file system"] = "a" * 5000
    out["path: a relative name outside the vocabulary"] = "\u20acZ"
    out["path: a NUL byte"] = "\x00"

    # A good SAE for the Features page: the default model's shipped layer_0 transcoder, with a dashboard.
    from workbench.cli_sae import labelled_texts
    from workbench.dashboards import build_dashboards
    from workbench.models.loader import load_model
    from workbench.saes import load_sae

    from workbench.tuned_lens import TunedLens, save_tuned_lens

    shipped = ORGANISMS / "adder-cot-faithful" / "transcoders"
    sae = root / "sae"
    shutil.copytree(shipped / "layer_0", sae)
    model = load_model("adder-cot-faithful")
    texts, problems = labelled_texts("adder-cot-faithful", 40, "test", 1)
    build_dashboards(model, load_sae(str(sae), model).sae, texts, problems, sae / "dashboard", progress=False)
    out["good sae"] = str(sae)
    shutil.copytree(shipped, root / "bad_transcoders")
    truncate(next((root / "bad_transcoders" / "layer_1").glob("*.safetensors")))
    out["path: transcoders with a truncated layer"] = str(root / "bad_transcoders")
    out["path: a truncated SAE"] = str(root / "bad_transcoders" / "layer_1")
    save_tuned_lens(TunedLens.identity(model), root / "tuned_lens")
    out["good tuned lens"] = str(root / "tuned_lens")
    shutil.copytree(root / "tuned_lens", root / "bad_tuned_lens")
    truncate(next((root / "bad_tuned_lens").glob("*.safetensors")))
    out["path: a truncated tuned lens"] = str(root / "bad_tuned_lens")
    return out


def _kind_of_text(w) -> str:
    """What a text input takes, from its label: a model directory, another path, free text, or text for a model."""
    label = w.label.lower()
    if "model directory" in label:
        return "model"
    if w.label.startswith(FREE_TEXT):
        return "free"
    if "prompt" in label or "token" in label:
        return "text"
    return "path" if "directory" in label or ".json" in label else "text"


class Sweep:
    """Walks one page's widgets, setting each bad value and then a valid one, recording every failure."""

    def __init__(self, page: str, paths: dict[str, str]):
        self.page, self.paths = page, paths
        self.swept: set[tuple] = set()
        self.failures: list[str] = []
        self.cases = 0
        self.at = AppTest.from_file(EXPLORER, default_timeout=300)
        self.at.run()
        if page != PAGES[0]:
            self.at.switch_page(page)
            self.at.run()
        self.check("default", "", require=None, baseline=[])
        smallest = _smallest_organism()
        for w in self.at.selectbox:  # the cheapest model where a page picks a bigger one
            if LOCAL in w.options and w.value != LOCAL and _size(w.value) > _size(smallest):
                w.set_value(smallest).run()
                self.check(f"{w.key or w.label!r} set to the smallest organism", smallest, "clean", [])

    # -- finding widgets again after a rerun: (kind, key or label, n-th of that name) ---------------------------

    def idents(self) -> list[tuple]:
        out, seen = [], {}
        for kind in KINDS:
            for w in getattr(self.at, kind):
                name = w.key or w.label
                n = seen.get((kind, name), 0)
                seen[(kind, name)] = n + 1
                out.append((kind, name, n))
        return out

    def find(self, ident: tuple):
        kind, name, n = ident
        same = [w for w in getattr(self.at, kind) if (w.key or w.label) == name]
        return same[n] if n < len(same) else None

    def errors(self) -> list[str]:
        return [e.value for e in self.at.error]

    def shown(self) -> list[str]:
        """The errors and infos on the page now: what a bad value must add to."""
        return self.errors() + [i.value for i in self.at.info]

    def check(self, where: str, value, require: str | None, baseline: list[str]) -> bool:
        """No exception, the title shown, and what ``require`` asks beyond the messages in ``baseline``: "error"
        (a new error), "message" (a new error or info), "any message" (an error or info, new or not), "clean" (no new
        error)."""
        at, shown = self.at, repr(value)[:60]
        problems = []
        if at.exception:
            problems.append("exception: " + at.exception[0].value.splitlines()[0][:300])
        if not at.title or not at.title[0].value:
            problems.append("no title")
        for e in self.errors():
            if "Traceback" in e or "\n  File " in e:
                problems.append(f"a traceback in an error: {e[:200]}")
        if require == "error" and not [e for e in self.errors() if e not in baseline]:
            problems.append("no error shown")
        if require == "any message" and not self.shown():
            problems.append("neither an error nor an info shown")
        if require == "message" and not [m for m in self.shown() if m not in baseline]:
            problems.append("neither an error nor an info shown")
        if require == "clean":
            extra = [e for e in self.errors() if e not in baseline]
            if extra:
                problems.append(f"an error after a valid value: {extra[0][:200]}")
        for p in problems:
            self.failures.append(f"{self.page} {where} = {shown}: {p}")
        return not problems

    def set(self, ident: tuple, value) -> bool:
        w = self.find(ident)
        if w is None:
            self.failures.append(f"{self.page} {ident}: the widget is gone")
            return False
        w.set_value(value).run()
        return True

    # -- the values for each kind of widget ------------------------------------------------------------------------

    def bad_values(self, ident: tuple, w) -> list[tuple]:
        """(name, value, require) for each value tried."""
        kind = ident[0]
        if kind in ("text_input", "text_area"):
            what = _kind_of_text(w)
            if what == "model":  # every damaged model and every bad path: an error (empty: an info will do)
                return ([("empty", "", "any message"), ("spaces", "   ", "any message")]
                        + [(k, v, "error") for k, v in self.paths.items() if k.startswith(("model:", "path:"))])
            if what == "path":  # a wrong path: an error or an info saying what is expected (empty may be valid)
                return ([("empty", "", None), ("spaces", "   ", None), ("a model", self.paths["good model"], "message")]
                        + [(k, v, "message") for k, v in self.paths.items() if k.startswith("path:")])
            return [(name, v, "error" if invalid and what == "text" else None) for name, v, invalid in TEXTS]
        if kind in ("number_input", "slider"):
            lo = w.min if w.min is not None else -(10**9)
            hi = w.max if w.max is not None else 10**9
            return [("min", lo, None), ("max", hi, None)]
        if kind == "multiselect":
            return [("none", [], None), ("all", list(w.options), None)]
        return []

    def options(self, ident: tuple, w) -> list:
        """The other values of a choice widget (for a model picker only a local directory: organisms are valid)."""
        kind = ident[0]
        if kind in ("checkbox", "toggle"):
            return [not w.value]
        opts = [LOCAL] if LOCAL in w.options else list(w.options)
        return [o for o in opts if o != w.value]

    def good_values(self, ident: tuple, w) -> list[str]:
        if ident[0] not in ("text_input", "text_area"):
            return []
        what, label = _kind_of_text(w), w.label
        if what == "model":
            return [self.paths["good model"]]
        if label.startswith("SAE directory"):
            return [self.paths["good sae"]]
        if label.startswith("Tuned lens directory"):
            return [self.paths["good tuned lens"]]
        return []

    # -- the walk -----------------------------------------------------------------------------------------------------

    def explore(self, depth: int, parents: frozenset = frozenset()) -> None:
        """Sweep the widgets shown now, except those the level above shows too (``parents``: it sweeps them in its
        own state); a choice that reveals new widgets is walked into, ``depth`` levels in all."""
        baseline = self.shown()
        here = self.idents()
        for ident in here:
            if ident in self.swept or ident in parents:
                continue
            self.swept.add(ident)
            w = self.find(ident)
            if w is None:
                continue
            original = w.value
            good = self.good_values(ident, w)
            restore = good[0] if good else original
            for name, value, require in self.bad_values(ident, w):
                self.cases += 1
                if not self.set(ident, value):
                    break
                self.check(f"{ident[1]!r} ({name})", value, require, baseline)
                if not self.set(ident, restore):
                    break
                self.check(f"{ident[1]!r} back to a valid value", restore, "clean", baseline)
            if ident[0] in CHOICES:
                tried = self.options(ident, w)
            else:
                tried = good
            for value in tried:
                self.cases += 1
                if not self.set(ident, value):
                    break
                kept = self.shown()
                self.check(f"{ident[1]!r}", value, None, baseline)
                if depth > 1 and any(i not in self.swept and i not in here for i in self.idents()):
                    self.explore(depth - 1, frozenset(here))  # it restores the widgets it set
                    self.check(f"{ident[1]!r} after its nested widgets", value, "clean", kept)
            if self.find(ident) is not None and self.find(ident).value != original:
                self.set(ident, original)
                self.check(f"{ident[1]!r} back to its first value", original, "clean", baseline)


TALLY: dict[str, tuple[int, int, float]] = {}


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES)
def test_every_widget_survives_bad_input(page, paths, capsys):
    start = time.perf_counter()
    sweep = Sweep(page, paths)
    sweep.explore(DEPTH)
    TALLY[page] = (len(sweep.swept), sweep.cases, time.perf_counter() - start)
    with capsys.disabled():
        print(f" [{Path(page).stem}: {TALLY[page][1]} cases on {TALLY[page][0]} widgets, {TALLY[page][2]:.1f} s]",
              end="")
    assert sweep.cases > 0, f"no input widget found on {page}"
    # Another page still works after the bad input.
    other = PAGES[(PAGES.index(page) + 1) % len(PAGES)]
    sweep.at.switch_page(other)
    sweep.at.run()
    sweep.page = other
    sweep.check("opened after the sweep", "", "clean", [])
    assert not sweep.failures, "\n".join(sweep.failures)


# --- The two refusals the sweep only sees as "an error": their wording -------------------------------------------


def _open(page: str) -> AppTest:
    at = AppTest.from_file(EXPLORER, default_timeout=300)
    at.run()
    if page != PAGES[0]:
        at.switch_page(page)
        at.run()
    return at


@pytest.mark.parametrize("page", ["pages/lens.py", "pages/attention.py"])
def test_a_prompt_longer_than_the_context_is_refused_with_both_lengths(page):
    from workbench.models.loader import load_model

    at = _open(page)
    n_ctx = load_model(at.selectbox[0].value).cfg.n_ctx  # the page's model; its tokenizer adds one BOS
    prompt = next(w for w in at.text_input if w.label == "Prompt")
    prompt.set_value("1" * (n_ctx - 1)).run()  # with its BOS exactly the context: shown
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.get("plotly_chart")
    next(w for w in at.text_input if w.label == "Prompt").set_value("1" * n_ctx).run()
    assert not at.exception
    assert any(f"{n_ctx + 1} tokens" in e.value and f"context is {n_ctx}" in e.value for e in at.error), \
        [e.value for e in at.error]
    assert not at.get("plotly_chart")  # nothing drawn from a cut prompt


class _Unparsed(Exception):
    """Stands for what a third-party reader raises on a damaged file (SafetensorError and the like)."""


RAISED = [_Unparsed("Error while deserializing header: incomplete metadata\nmore"),
          TypeError("HookedTransformerConfig.__init__() got an unexpected keyword argument 'x'"),
          AssertionError("d_model must be divisible by n_heads"),
          UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")]


@pytest.mark.parametrize("page, picker", [("pages/prompt_lab.py", "lab_model_0"),
                                          ("pages/alignment_diff.py", "diff_base"),
                                          ("pages/alignment_diff.py", "diff_tuned")])
def test_any_exception_from_loading_a_model_is_an_error(monkeypatch, tmp_path, page, picker):
    """Whatever a loader raises on a damaged directory (here injected), the page shows one line and keeps running."""
    from workbench.models import loader

    real = loader.load_model
    damaged = {}
    for i, e in enumerate(RAISED):
        (tmp_path / f"damaged_{i}").mkdir()
        damaged[str(tmp_path / f"damaged_{i}")] = e

    def load_model(spec, device=None):
        if str(spec) in damaged:
            raise damaged[str(spec)]
        return real(spec, device)

    monkeypatch.setattr(loader, "load_model", load_model)
    at = _open(page)
    at.selectbox(key=picker).set_value(LOCAL).run()
    for path, raised in damaged.items():
        at.text_input(key=f"{picker}_dir").set_value(path).run()
        assert not at.exception, [e.value for e in at.exception]
        expected = f"{type(raised).__name__}: {str(raised).splitlines()[0]}"
        assert any(expected in e.value and "this directory is not a loadable model" in e.value and "\n" not in e.value
                   for e in at.error), [e.value for e in at.error]
    at.selectbox(key=picker).set_value(_smallest_organism()).run()  # the page is usable again
    assert not at.exception and at.title[0].value
    assert not [e.value for e in at.error if "not a loadable model" in e.value]
