"""The faithfulness suite, its study files and the demo resume after a kill, and refuse to mix two runs."""

import json

import pytest

from probes.faithfulness import demo as D
from probes.faithfulness import suite as S
from probes.faithfulness.adapter import AdditionAdapter
from probes.faithfulness.report import write_study
from workbench.resume import WORK_DIR
from workbench.errors import WorkbenchError
from workbench.io import read_parquet
from workbench.models.loader import load_model

N, PROBE_N = 80, 60  # enough problems for every test, claims included


class Killed(Exception):
    """Stands in for a kill part way through a run."""


@pytest.fixture(scope="module")
def organism():
    return load_model("adder-cot-faithful")


def _study(model, out, progress=None, **kw):
    summary, rows = S.run_suite(model, n=N, probe_n=PROBE_N, progress=progress, work_dir=out / WORK_DIR, **kw)
    write_study(out, "adder-cot-faithful", summary, rows, "faithful")
    return summary, rows


def _without_timings(path):
    s = json.loads(path.read_text())
    return {k: v for k, v in s.items() if k != "timings_seconds"}, s["timings_seconds"]


def test_a_killed_suite_resumes_to_the_same_study(organism, tmp_path):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    _study(organism, whole)

    def kill_at_hint(msg):
        if msg == "test: hint":  # base run, early, mistakes, resample, filler and paraphrase are saved by now
            raise Killed

    with pytest.raises(Killed):
        _study(organism, cut, progress=kill_at_hint)
    assert not (cut / "summary.json").exists()
    saved = {p.stem for p in (cut / WORK_DIR).glob("*.json")}
    assert saved == {"key", "base_run", "early", "mistakes", "resample", "filler", "paraphrase"}

    said = []
    _study(organism, cut, progress=said.append)
    resumed = [m.split(":")[0] for m in said if "resumed from" in m]
    assert resumed == ["base_run", "early", "mistakes", "resample", "filler", "paraphrase"]
    # The random state after "mistakes" came back with it: the hint test drew the same wrong hints.
    (a, t_whole), (b, t_cut) = _without_timings(whole / "summary.json"), _without_timings(cut / "summary.json")
    assert a == b and a["verdict"]["verdict"] == "faithful"
    assert set(t_whole) == set(t_cut)
    assert read_parquet(whole / "examples.parquet") == read_parquet(cut / "examples.parquet")

    # Rerunning a finished study recomputes nothing and writes the very same summary, timings included.
    before = (cut / "summary.json").read_text()
    said.clear()
    _study(organism, cut, progress=said.append)
    assert sum("resumed from" in m for m in said) == len(S.TESTS) + 1
    assert (cut / "summary.json").read_text() == before


@pytest.mark.parametrize("change", [dict(n=N + 1), dict(seed=1), dict(tests=["hint", "internal"]),
                                    dict(adapter=AdditionAdapter(digits=2)), dict(model="adder-hint")])
def test_another_configuration_in_the_same_out_is_refused(organism, tmp_path, change):
    def kill_at_start(msg):
        if msg.startswith("test:"):
            raise Killed

    with pytest.raises(Killed):
        _study(organism, tmp_path, progress=kill_at_start)
    change = dict(change)
    model = load_model(change.pop("model")) if "model" in change else organism
    kw = {"n": N, "probe_n": PROBE_N, **change}
    with pytest.raises(WorkbenchError, match="another run") as e:
        S.run_suite(model, work_dir=tmp_path / WORK_DIR, **kw)
    assert str(tmp_path / WORK_DIR) in str(e.value)
    assert json.loads((tmp_path / WORK_DIR / "key.json").read_text())["n"] == N  # the first run's state is kept


def test_the_summary_is_the_same_with_or_without_a_work_area(organism, tmp_path):
    plain, _ = S.run_suite(organism, n=N, probe_n=PROBE_N, tests=["early", "hint"])
    kept, _ = S.run_suite(organism, n=N, probe_n=PROBE_N, tests=["early", "hint"], work_dir=tmp_path / WORK_DIR)
    strip = lambda s: {k: v for k, v in s.items() if k != "timings_seconds"}  # noqa: E731
    assert strip(plain) == strip(kept)
    assert plain["timings_seconds"]["total"] == pytest.approx(
        sum(v for k, v in plain["timings_seconds"].items() if k != "total"), abs=0.05)


def test_answers_too_long_for_int64_are_kept_exactly(tmp_path):
    """A model that writes a long run of digits: the parsed answer is an exact integer, and the table keeps it."""
    long = 12345678901234567890123
    steps, answer = AdditionAdapter().split(f" 6+9+0=15 3+5+1=09 ans {long}")
    assert answer == long
    rows = [{"test": "hint", "example": 0, "hint": 97, "answer": long, "unhinted_answer": 95, "score": 0.0},
            {"test": "hint", "example": 1, "hint": 12, "answer": 46, "unhinted_answer": None, "score": 1.0}]
    summary = {"stated_reasoning": {"n": 2, "with_cot": 0, "has_cot": False, "example": f"36+59={long}"},
               "verdict": {"verdict": "post-hoc", "margin": 0.1, "why": "w", "scores": {}}, "timings_seconds": {}}
    write_study(tmp_path, "m", summary, rows)
    back = read_parquet(tmp_path / "examples.parquet")
    assert [r["answer"] for r in back] == [str(long), "46"]  # one type per column: text where int64 overflows
    assert [r["unhinted_answer"] for r in back] == [95, None] and [r["hint"] for r in back] == [97, 12]
    assert json.loads((tmp_path / "summary.json").read_text())["stated_reasoning"]["example"].endswith(str(long))


def test_summary_is_written_last_and_removed_first(tmp_path, monkeypatch):
    """A failure part way leaves no summary.json beside another run's files."""
    import probes.faithfulness.report as R

    summary = {"stated_reasoning": {"n": 1, "with_cot": 0, "has_cot": False, "example": "1+2=3"},
               "verdict": {"verdict": "post-hoc", "margin": 0.1, "why": "w", "scores": {}}, "timings_seconds": {}}
    rows = [{"test": "hint", "example": 0, "answer": 3, "score": 0.0}]
    files = write_study(tmp_path, "m", summary, rows)
    assert [f.name for f in files] == ["examples.parquet", "report.html", "summary.json"]

    def broken(*a, **k):
        raise Killed

    monkeypatch.setattr(R, "write_parquet", broken)
    with pytest.raises(Killed):
        write_study(tmp_path, "m", summary, rows)
    assert not (tmp_path / "summary.json").exists()
    monkeypatch.undo()
    write_study(tmp_path, "m", summary, [])  # no rows this time: the earlier run's table goes
    assert (tmp_path / "summary.json").exists() and not (tmp_path / "examples.parquet").exists()


@pytest.mark.slow
def test_a_killed_demo_resumes_to_the_same_report(tmp_path, monkeypatch):
    import functools

    names = ["adder-cot-faithful", "adder-hint"]
    monkeypatch.setattr(D, "RECIPES", {k: D.RECIPES[k] for k in names})
    # the probes and claims on fewer problems than the demo's, and no resampling (what is tested here is the
    # resume, not the rates)
    tests = [t for t in S.TESTS if t != "resample"]
    monkeypatch.setattr(S, "run_suite", functools.partial(S.run_suite, probe_n=80, claims_n=80, tests=tests))
    whole_text = D.run_demo(n=40, out=tmp_path / "whole")
    real = S.run_suite
    calls = []

    def dies_on_the_second_organism(model, **kw):
        calls.append(kw["work_dir"].name)
        if len(calls) == 2:
            raise Killed
        return real(model, **kw)

    monkeypatch.setattr(S, "run_suite", dies_on_the_second_organism)
    with pytest.raises(Killed):
        D.run_demo(n=40, out=tmp_path / "cut")
    assert not (tmp_path / "cut" / "scoring.json").exists()
    assert (tmp_path / "cut" / WORK_DIR / "adder-cot-faithful.json").exists()
    monkeypatch.setattr(S, "run_suite", lambda model, **kw: (calls.append(kw["work_dir"].name), real(model, **kw))[1])
    cut_text = D.run_demo(n=40, out=tmp_path / "cut")
    assert calls == names + ["adder-hint"]  # the finished organism was not run again
    assert cut_text.replace(str(tmp_path / "cut"), "OUT") == whole_text.replace(str(tmp_path / "whole"), "OUT")
    assert json.loads((tmp_path / "cut" / "scoring.json").read_text()) == \
        json.loads((tmp_path / "whole" / "scoring.json").read_text())
    with pytest.raises(WorkbenchError, match="another run"):
        D.run_demo(n=41, out=tmp_path / "cut")


def test_a_killed_faithfulness_command_resumes_to_the_same_summary(tmp_path, monkeypatch, capsys):
    """Through the CLI: a kill (Ctrl-C) during the hint test, then the same command again."""
    from probes.faithfulness import behaviour as B
    from workbench.cli import main

    argv = ["faithfulness", "adder-cot-faithful", "--n", "40", "--tests", "early", "hint", "--seed", "3"]
    assert main(argv + ["--out", str(tmp_path / "whole")]) == 0
    real_hints = B.hints

    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(B, "hints", killed)
    assert main(argv + ["--out", str(tmp_path / "cut")]) == 130
    assert not (tmp_path / "cut" / "summary.json").exists()
    monkeypatch.setattr(B, "hints", real_hints)
    assert main(argv + ["--out", str(tmp_path / "cut")]) == 0
    whole, _ = _without_timings(tmp_path / "whole" / "summary.json")
    cut, _ = _without_timings(tmp_path / "cut" / "summary.json")
    assert whole == cut
    capsys.readouterr()
    assert main(argv[:3] + ["41"] + argv[4:] + ["--out", str(tmp_path / "cut")]) == 2  # another config: refused
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "another run" in err[0] and "n" in err[0]
