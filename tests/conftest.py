"""Suite-wide settings.

The suite runs on ``pytest -n 2`` (pytest-xdist, one process per core; see the Makefile). Each worker then uses
one torch thread: two workers of two threads each would contend for the same two cores. Tests that need a set
thread count (bit-for-bit training) set it themselves and restore it.
"""

import os
import shutil
import tempfile

import torch

# What the explorer stores on disk (claims references) goes to a directory of this run, not the checkout's runs/;
# set before any test starts a server, so the subprocesses inherit it.
_MADE_CACHE = None
if "WORKBENCH_EXPLORER_CACHE" not in os.environ:
    _MADE_CACHE = os.environ["WORKBENCH_EXPLORER_CACHE"] = tempfile.mkdtemp(prefix="workbench-explorer-")

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))


def pytest_collection_modifyitems(config, items):
    """Tests marked ``slow`` first, the longest (the demo, the browser) at the head: with one process per core,
    a long test that starts last holds the run open alone on one core while the other sits idle."""
    first = ("test_demo_classifies_every_organism", "test_every_page_renders_in_a_real_browser")
    items.sort(key=lambda it: (not any(it.name.startswith(f) for f in first), it.get_closest_marker("slow") is None))


def pytest_unconfigure(config):
    """The run's explorer store goes with the process that made it (the xdist workers inherit its path)."""
    if _MADE_CACHE is not None:
        shutil.rmtree(_MADE_CACHE, ignore_errors=True)
