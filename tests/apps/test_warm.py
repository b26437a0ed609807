"""`workbench app` renders every page once before it listens (apps/warm.py); the browser test drives that server.
Here: it finds the router's pages, in the sidebar's order."""

from apps.warm import EXPLORER, pages


def test_warm_up_visits_every_routed_page_landing_page_first():
    found = pages()
    assert found[0] == "pages/stated_vs_internal.py" and len(found) == len(set(found)) >= 10
    assert all((EXPLORER.parent / p).is_file() for p in found)
    routed = sorted(p.name for p in (EXPLORER.parent / "pages").glob("*.py") if not p.name.startswith("_"))
    assert sorted(p.removeprefix("pages/") for p in found) == routed
