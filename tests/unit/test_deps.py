"""The pinned circuit-tracer is checked by version and by its files' recorded hashes."""

from importlib import metadata

import pytest

from workbench import deps
from workbench.errors import WorkbenchError


def test_the_installed_circuit_tracer_is_the_tested_one():
    deps.check_tested("circuit-tracer")


class _FakeDist:
    def __init__(self, version: str, record: str):
        self.version, self._record = version, record

    def read_text(self, name: str):
        return self._record if name == "RECORD" else None


def _installed(monkeypatch, dist):
    monkeypatch.setattr(deps.metadata, "distribution", lambda name: dist)


def test_another_version_is_refused(monkeypatch):
    real = metadata.distribution("circuit-tracer")
    _installed(monkeypatch, _FakeDist("0.5.1", real.read_text("RECORD")))
    with pytest.raises(WorkbenchError, match="0.5.1 is installed.*circuit-tracer==0.5.0"):
        deps.check_tested("circuit-tracer")


def test_same_version_other_code_is_refused(monkeypatch):
    _installed(monkeypatch, _FakeDist("0.5.0", "circuit_tracer/graph.py,sha256=AAAA,10\n"))
    with pytest.raises(WorkbenchError, match="not the build"):
        deps.check_tested("circuit-tracer")


def test_override_warns_instead(monkeypatch):
    _installed(monkeypatch, _FakeDist("0.4.1", ""))
    monkeypatch.setenv(deps.ALLOW_ENV, "1")
    with pytest.warns(UserWarning, match="proceeding"):
        deps.check_tested("circuit-tracer")


def test_missing_package_says_how_to_install(monkeypatch):
    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(deps.metadata, "distribution", missing)
    with pytest.raises(WorkbenchError, match="pip install circuit-tracer==0.5.0"):
        deps.check_tested("circuit-tracer")


def test_record_digest_ignores_non_python_and_order():
    a = _FakeDist("1", "p/a.py,sha256=x,1\np/b.py,sha256=y,2\np/data.json,sha256=z,3\np/__pycache__/a.pyc,,\n")
    b = _FakeDist("1", "p/b.py,sha256=y,2\np/a.py,sha256=x,1\n")
    assert deps.record_digest(a) == deps.record_digest(b)
