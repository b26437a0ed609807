"""Every page of the explorer runs with its defaults and shows an error (and keeps running) on bad input."""

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

EXPLORER = str(Path(__file__).resolve().parents[2] / "apps" / "explorer.py")

PAGES = ["pages/prompt_lab.py", "pages/lens.py", "pages/attention.py", "pages/probes.py", "pages/patching.py",
         "pages/faithfulness.py"]


def _app(page: str) -> AppTest:
    at = AppTest.from_file(EXPLORER, default_timeout=180)
    at.run()
    if page != PAGES[0]:
        at.switch_page(page)
        at.run()
    return at


@pytest.mark.parametrize("page", PAGES)
def test_page_runs_with_defaults(page):
    at = _app(page)
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    assert at.title[0].value


def test_prompt_lab_shows_the_organisms_reasoning():
    at = _app(PAGES[0])
    assert at.code[0].value == "36+59= 6+9+0=15 3+5+1=09 ans 95"
    assert len(at.dataframe) == 1


@pytest.mark.parametrize("page, field, bad, expected", [
    ("pages/prompt_lab.py", 0, "36*59=", "'*' at position 2"),
    ("pages/lens.py", 0, "36*59=", "not in the vocabulary"),
    ("pages/lens.py", 1, "95", "one token"),
    ("pages/attention.py", 0, "hello!", "not in the vocabulary"),
    ("pages/patching.py", 1, "36+59= 6+9+0=16 3+5+1=09 ans 95", "one token length"),
])
def test_bad_input_shows_an_error_and_the_page_keeps_running(page, field, bad, expected):
    at = _app(page)
    at.text_input[field].set_value(bad).run()
    assert not at.exception, [e.value for e in at.exception]
    assert any(expected in e.value for e in at.error), [e.value for e in at.error]
    assert at.title[0].value  # still rendered


def test_faithfulness_page_opens_a_missing_study_with_an_error():
    at = _app("pages/faithfulness.py")
    at.radio[0].set_value("Open a saved study").run()
    at.text_input[0].set_value("no/such/summary.json").run()
    assert any("no file" in e.value for e in at.error)


def test_faithfulness_page_runs_the_suite():
    at = _app("pages/faithfulness.py")
    at.number_input[0].set_value(40).run()
    at.multiselect[0].set_value(["early", "mistakes", "hint"]).run()
    at.button[0].click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert "Verdict: faithful" in at.subheader[0].value
