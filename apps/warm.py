"""Serve the explorer from this process, its pages rendered once before the first visitor comes.

A cold first visit pays for what every later one reuses: importing TransformerLens and transformers (about 7 s on
2 cores), loading the landing page's organism, and its claims reference (probes and interventions on held-out
problems, kept on disk once built). ``streamlit run`` starts a server that does all of that inside the first
visitor's page load, and each page's first computation (the probe sweep, the first attribution graph) inside the
first visit of that page. :func:`serve` does it before the server listens: it runs the landing page and then every
other page once with Streamlit's ``AppTest`` in this process, which fills the same process-wide ``st.cache_resource`` /
``st.cache_data`` caches a browser session then reads, and starts the server with Streamlit's own bootstrap
(what ``streamlit run`` calls).
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

EXPLORER = Path(__file__).resolve().parent / "explorer.py"
WARM_TIMEOUT = 600  # seconds: a first-ever reference on a slow machine


def pages(explorer: Path = EXPLORER) -> list[str]:
    """The router's pages in the sidebar's order (``st.Page("pages/x.py", ...)``), the landing page first."""
    return re.findall(r'st\.Page\(\s*"([^"]+)"', explorer.read_text())


def warm(explorer: Path = EXPLORER, every_page: bool = True) -> tuple[float, list[str]]:
    """Render the explorer's landing page once with its default widgets, then (``every_page``) each other page as
    a visitor clicking down the sidebar would see it (the shared model and prompt carried over); returns (seconds,
    the error or exception messages shown, which do not stop the server: a visitor would see them too)."""
    from streamlit.testing.v1 import AppTest

    t0 = time.perf_counter()
    at = AppTest.from_file(str(explorer), default_timeout=WARM_TIMEOUT)
    at.run()
    problems = [str(e.value) for e in at.exception] + [str(e.value) for e in at.error]
    for page in pages(explorer)[1:] if every_page else []:
        at.switch_page(page)
        at.run()
        problems += [f"{page}: {e.value}" for e in list(at.exception) + list(at.error)]
    return time.perf_counter() - t0, problems


def serve(port: int, address: str | None = None, warm_first: bool = True, explorer: Path = EXPLORER) -> None:
    """Start the explorer's server on ``port`` (blocks until it stops)."""
    from streamlit import config
    from streamlit.web import bootstrap

    flags = {"server.port": port, "server.headless": True, "browser.gatherUsageStats": False,
             "server.fileWatcherType": "none"}
    if address:
        flags["server.address"] = address
    config._main_script_path = str(explorer)  # as `streamlit run` sets it, before the options are read
    bootstrap.load_config_options(flag_options=flags)
    if warm_first:
        print("rendering every page once (imports, the organism, its claims reference, each page's default "
              "view)...", file=sys.stderr)
        seconds, problems = warm(explorer)
        note = f"; it showed: {problems[0][:200]}" if problems else ""
        print(f"ready after {seconds:.1f} s{note}", file=sys.stderr)
    bootstrap.run(str(explorer), False, [], flags)


if __name__ == "__main__":  # python -m apps.warm PORT [ADDRESS]
    serve(int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else None)
