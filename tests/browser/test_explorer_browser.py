"""The explorer in a real browser: headless chromium (Debian's ``chromium`` + ``chromium-driver``) driven by Selenium.

Starts the explorer with ``workbench app`` (the landing page rendered once in the server's process before it
listens) on a free localhost port, opens it, visits every page listed in the
sidebar navigation (so new pages are covered without editing this file), waits for each to finish running,
checks that no exception or error is shown on the default inputs, and saves a screenshot per page. Then it checks
what a researcher reads off the pages: on "Stated vs internal" (the first page) a stated-vs-internal mark and a
verdict (a saved study's, or a quick one run from the page); on Probes a sentence computed from the numbers; on
Patching the post-hoc CoT stated as the finding; on the Prompt lab, opened by a link to adder-cot-faithful and
``478+256=``, the answer 734 marked right; and a new prompt typed there. Timings go to ``timings.json`` beside the
screenshots; the directory is ``$WORKBENCH_SCREENSHOTS`` (default: the test's tmp_path).

``.ci/run`` installs chromium and chromedriver; without them (or without selenium) the test is skipped.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
EXPLORER = ROOT / "apps" / "explorer.py"
WINDOW = (1400, 1000)
SERVER_TIMEOUT = 240  # seconds for `workbench app` to answer (it renders the landing page first)
PAGE_TIMEOUT = 180  # seconds for one page (the first loads the organism; Probes runs a sweep)
QUIET = 1.5  # seconds the page must stay idle (see BUSY) to count as finished
MAX_SHOT_HEIGHT = 3000  # screenshots show the whole page up to this many pixels
NEW_PROMPT = "47+85="
LINK = "prompt_lab?model=adder-cot-faithful&prompt=478%2B256%3D"  # the Prompt lab on a shared view

MISSING = "chromium and chromedriver are needed (.ci/run installs them: apt-get install chromium chromium-driver)"


def _browser_paths() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver") or next((p for p in ["/usr/bin/chromedriver"] if Path(p).exists()), None)
    if not chromium or not driver:
        pytest.skip(MISSING)
    return chromium, driver


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory) -> Path:
    d = Path(os.environ["WORKBENCH_SCREENSHOTS"]) if os.environ.get("WORKBENCH_SCREENSHOTS") \
        else tmp_path_factory.mktemp("explorer-screenshots")
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The explorer served on a free localhost port; yields (url, seconds until it answered)."""
    _browser_paths()  # skip before starting anything
    port = _free_port()
    log = tmp_path_factory.mktemp("streamlit") / "server.log"
    # as a user starts it: `workbench app`, which renders the landing page once before it listens
    cmd = [sys.executable, "-m", "workbench.cli", "app", "--port", str(port), "--address", "127.0.0.1"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = t0 + SERVER_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"streamlit exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.perf_counter() > deadline:
                pytest.fail(f"streamlit did not answer in {SERVER_TIMEOUT} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.25)
        yield url, time.perf_counter() - t0
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def browser():
    """Headless chromium at a fixed window size; yields (driver, seconds it took to start)."""
    chromium, driver_path = _browser_paths()
    webdriver = pytest.importorskip("selenium.webdriver", reason=f"selenium is needed (the dev extra); {MISSING}")
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager look for a driver online
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={WINDOW[0]},{WINDOW[1]}", "--hide-scrollbars", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    t0 = time.perf_counter()
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    started = time.perf_counter() - t0
    driver.set_page_load_timeout(PAGE_TIMEOUT)
    try:
        yield driver, started
    finally:
        driver.quit()


# --- waiting for Streamlit to finish a run ----------------------------------------------------------------------

# Running: the status widget ("Running...", shown about 0.5 s into a run, hence QUIET well above that; not while it
# fades out), spinners, elements left from the previous run, and skeletons of elements whose code is still loading
# (plotly, the first time).
BUSY = ('[data-testid="stStatusWidget"]:not([class*="exit"]), [data-testid="stSpinner"], '
        '[data-testid="stElementContainer"][data-stale="true"], '
        '[data-testid="stSkeleton"], [data-testid="stSkeletonElement"], [data-testid="stAppSkeleton"]')


STATE_JS = """
const busy = document.querySelectorAll(arguments[0]).length > 0;
const title = [...document.querySelectorAll('h1')].map(h => h.textContent.trim()).find(t => t) || null;
const main = document.querySelector('[data-testid="stMain"]') || document.body;
const shape = [document.querySelectorAll('[data-testid="stElementContainer"]').length,
               document.querySelectorAll('.js-plotly-plot, canvas, svg').length, main.textContent.length].join(',');
return [busy, title, shape];
"""


def _state(driver) -> tuple[bool, str | None, str]:
    """(busy, the page's title, a summary of what is shown) as the browser has them now."""
    from selenium.common.exceptions import WebDriverException

    try:
        busy, title, shape = driver.execute_script(STATE_JS, BUSY)
        return bool(busy), title, shape
    except WebDriverException:  # the page changed while reading it
        return True, None, ""


def wait_rendered(driver, t0: float, *, not_title: str | None = None, until=None) -> tuple[float, str]:
    """Wait until the page has a title (other than ``not_title``), nothing runs, nothing shown changes and
    ``until(driver)`` holds, for QUIET seconds in a row; returns (seconds from ``t0`` to the start of that stretch,
    i.e. the last change, and the title)."""
    idle_since, last_shape = None, None
    while True:
        now = time.perf_counter()
        busy, title, shape = _state(driver)
        ok = not busy and title is not None and title != not_title and (until is None or until(driver))
        if ok and shape == last_shape and idle_since is not None:
            if now - idle_since >= QUIET:
                return idle_since - t0, title
        else:
            idle_since = now if ok else None
        last_shape = shape
        if now - t0 > PAGE_TIMEOUT:
            raise TimeoutError(f"page not rendered in {PAGE_TIMEOUT} s (busy={busy}, title={title!r}, "
                               f"url={driver.current_url})")
        time.sleep(0.05)


def problems_shown(driver) -> list[str]:
    """The texts of exceptions and error alerts on the page."""
    found = driver.find_elements("css selector", '[data-testid="stException"], [data-testid="stAlertContentError"]')
    return [e.text.strip()[:500] for e in found]


def save_page(driver, path: Path) -> None:
    """A screenshot of the whole page (its scrolling main area), at most MAX_SHOT_HEIGHT pixels tall."""
    height = driver.execute_script(
        "return Math.max(...['[data-testid=\"stMain\"]', '[data-testid=\"stAppViewContainer\"]']"
        ".map(s => document.querySelector(s)).filter(Boolean).map(e => e.scrollHeight), document.body.scrollHeight)")
    tall = min(max(int(height or 0), WINDOW[1]), MAX_SHOT_HEIGHT)
    if tall > WINDOW[1]:
        driver.set_window_size(WINDOW[0], tall)
        time.sleep(0.5)  # let charts re-lay out
    try:
        driver.save_screenshot(str(path))
    finally:
        if tall > WINDOW[1]:
            driver.set_window_size(*WINDOW)


def main_text(driver) -> str:
    """What the main area shows, as text."""
    from selenium.common.exceptions import WebDriverException

    try:
        return driver.find_element("css selector", '[data-testid="stMain"]').text
    except WebDriverException:
        return ""


def click_button(driver, label: str) -> bool:
    """Click the first button whose text starts with ``label``; False when there is none."""
    for b in driver.find_elements("css selector", '[data-testid="stButton"] button'):
        if b.text.strip().startswith(label):
            driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", b)
            b.click()
            return True
    return False


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "page"


# --- the test ---------------------------------------------------------------------------------------------------


def test_every_page_renders_in_a_real_browser(server, browser, out_dir, capsys):
    url, server_s = server
    driver, browser_s = browser
    problems: dict[str, list[str]] = {}
    timings: dict = {"url": "explorer on localhost", "window": list(WINDOW), "quiet_s": QUIET,
                     "server_start_s": round(server_s, 2), "browser_start_s": round(browser_s, 2),
                     "machine": {"cpus": os.cpu_count(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                                 "python": platform.python_version()},
                     "pages": [], "interactions": []}
    try:
        # First render: the default page, cold (the organism is loaded here).
        t0 = time.perf_counter()
        driver.get(url + "/")
        first_s, title = wait_rendered(driver, t0)
        timings["first_render_s"] = round(first_s, 2)
        timings["first_render_page"] = title
        links = [(a.text.strip(), a.get_attribute("href"))
                 for a in driver.find_elements("css selector", '[data-testid="stSidebarNavLink"]')]
        assert len(links) >= 2, f"no sidebar navigation found: {links}"
        default = next((name for name, href in links if href.rstrip("/") == url), links[0][0])

        def record(name: str, seconds: float, shown_title: str) -> None:
            shot = out_dir / f"{slug(name)}.png"
            save_page(driver, shot)
            timings["pages"].append({"page": name, "title": shown_title, "render_s": round(seconds, 2),
                                     "screenshot": shot.name})
            if found := problems_shown(driver):
                problems[name] = found

        record(default, first_s, title)

        # Every other page, by clicking its link in the sidebar.
        for name, href in links:
            if name == default:
                continue
            link = next(a for a in driver.find_elements("css selector", '[data-testid="stSidebarNavLink"]')
                        if a.text.strip() == name)
            previous = title
            t0 = time.perf_counter()
            link.click()
            try:
                seconds, title = wait_rendered(driver, t0, not_title=previous)
            except TimeoutError as e:
                problems[name] = [str(e)]
                save_page(driver, out_dir / f"{slug(name)}.png")
                continue
            here = driver.current_url.split("?")[0].rstrip("/")
            assert here == href.split("?")[0].rstrip("/"), (name, driver.current_url, href)
            record(name, seconds, title)
            if name != "Alignment diff":  # every page that shows the shared model keeps it in its link
                timings.setdefault("links", {})[name] = driver.current_url.split("?", 1)[-1] if "?" in \
                    driver.current_url else ""
                if "model=" not in driver.current_url:
                    problems.setdefault(f"{name} (link)", []).append(f"no model in the URL {driver.current_url}")

        def check(page: str, what: str, ok: bool, shown: str) -> None:
            timings.setdefault("checks", []).append({"page": page, "check": what, "ok": ok})
            if not ok:
                problems.setdefault(f"{page} (check)", []).append(f"{what}; shown: {shown[:800]}")

        # What a researcher checks on the first page: a mark per stated value and the verdict.
        stated_page = next((name for name, _ in links if name == "Stated vs internal"), None)
        if stated_page is not None:
            t0 = time.perf_counter()
            driver.get(url + "/")  # a new session on the landing page, the frontend now in the browser's cache
            again_s, _ = wait_rendered(driver, t0)
            timings["first_page_reloaded_s"] = round(again_s, 2)
            text = main_text(driver)
            check(stated_page, "a stated value marked (used when intervened on, ✓ or ✗)",
                  "Used when intervened on" in text and ("✗" in text or "✓" in text), text)
            if "Verdict:" not in text and click_button(driver, "Run a quick study"):
                t0 = time.perf_counter()
                seconds, _ = wait_rendered(driver, t0, until=lambda d: "Verdict:" in main_text(d))
                timings["interactions"].append({"page": stated_page, "action": "run a quick study",
                                                "render_s": round(seconds, 2)})
                save_page(driver, out_dir / f"{slug(stated_page)}.png")
                text = main_text(driver)
            check(stated_page, "a verdict with its evidence", "Verdict:" in text and "[" in text, text)

        # Probes: the result in a sentence; Patching: the post-hoc CoT as the finding.
        posthoc = "?model=adder-cot-posthoc&prompt=478%2B256%3D"  # a fresh session opened by a link
        for name, expected in (("Probes", ("is decodable at", "noise floor")),
                               ("Patching", ("The CoT is ignored: patching it restores nothing",))):
            href = next((h for n, h in links if n == name), None)
            if href is None:
                continue
            driver.get(href.split("?")[0] + posthoc)
            wait_rendered(driver, time.perf_counter())
            text = main_text(driver)
            check(name, "the finding in words: " + " ... ".join(expected), all(e in text for e in expected), text)

        # A link to the Prompt lab on adder-cot-faithful and 478+256=: the answer 734, marked right.
        t0 = time.perf_counter()
        driver.get(f"{url}/{LINK}")
        seconds, _ = wait_rendered(driver, t0, until=lambda d: "Answer: 734" in main_text(d))
        text = main_text(driver)
        check(default if default == "Prompt lab" else "Prompt lab", "478+256= on adder-cot-faithful: Answer 734, right",
              "Answer: 734" in text and "✓ right" in text and "ans 734" in text, text)
        shot = out_dir / "prompt-lab-478.png"
        save_page(driver, shot)
        timings["interactions"].append({"page": "Prompt lab", "action": f"open the link /{LINK}",
                                        "render_s": round(seconds, 2), "screenshot": shot.name})
        from selenium.webdriver.common.keys import Keys

        box = next(i for i in driver.find_elements("css selector", '[data-testid="stTextInput"] input')
                   if i.get_attribute("aria-label") == "Prompt")
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(Keys.BACKSPACE)
        box.send_keys(NEW_PROMPT)
        t0 = time.perf_counter()
        box.send_keys(Keys.ENTER)

        def new_completion(d) -> bool:
            codes = d.find_elements("css selector", '[data-testid="stCode"]')
            return bool(codes) and codes[0].text.strip().startswith(NEW_PROMPT)

        seconds, _ = wait_rendered(driver, t0, until=new_completion)
        shot = out_dir / "prompt-lab-new-prompt.png"
        save_page(driver, shot)
        timings["interactions"].append({"page": "Prompt lab", "action": f"type the prompt {NEW_PROMPT!r} and press "
                                        "Enter", "render_s": round(seconds, 2), "screenshot": shot.name})
        if found := problems_shown(driver):
            problems["Prompt lab (new prompt)"] = found
    finally:
        (out_dir / "timings.json").write_text(json.dumps(timings, indent=2) + "\n")
        with capsys.disabled():
            print(f"\nexplorer in headless chromium (screenshots and timings.json in {out_dir})")
            print(f"  {'server start':<40} {timings['server_start_s']:>7.2f} s")
            if "first_render_s" in timings:
                first = f"first render ({timings['first_render_page']})"
                print(f"  {first:<40} {timings['first_render_s']:>7.2f} s")
            if "first_page_reloaded_s" in timings:
                print(f"  {'the same page reloaded (new session)':<40} {timings['first_page_reloaded_s']:>7.2f} s")
            for p in timings["pages"][1:]:
                print(f"  {'page: ' + p['page']:<40} {p['render_s']:>7.2f} s")
            for i in timings["interactions"]:
                print(f"  {i['page'] + ': ' + i['action'][:30]:<40} {i['render_s']:>7.2f} s")
            for c in timings.get("checks", []):
                print(f"  check {c['page']}: {c['check'][:60]:<60} {'ok' if c['ok'] else 'FAILED'}")
    assert not problems, problems
