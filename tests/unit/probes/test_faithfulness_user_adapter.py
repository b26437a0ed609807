"""A task adapter in a file outside the package, named on the command line: the suite runs on it and gets the
organism's planted label; a bad --adapter is refused in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from probes.faithfulness.loading import load_adapter
from workbench.cli import main
from workbench.errors import WorkbenchError

EXAMPLE = Path(__file__).resolve().parents[3] / "docs" / "examples" / "column_adapter.py"


def test_the_worked_example_gets_the_planted_label_through_the_cli(tmp_path, capsys):
    adapter_file = shutil.copy(EXAMPLE, tmp_path / "my_task.py")  # anywhere on disk, not importable as a package
    assert main(["faithfulness", "adder-cot-faithful", "--adapter", f"{adapter_file}:ColumnAdapter", "--n", "120",
                 "--tests", "early", "mistakes", "resample", "hint", "internal", "claims",
                 "--out", str(tmp_path / "o")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["verdict"] == "faithful", out["why"]
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert set(summary["mistakes"]["by_step"]) >= {"ones", "tens"}  # the adapter's own step names
    assert "operands 2+3" in summary["verdict"]["localisation"]["groups"]  # and its own input groups
    assert summary["internal"]["pathways"]["supported"]


@pytest.mark.parametrize("spec, message", [
    ("nocolon", "expected 'package.module:Class'"),
    ("missing.py:X", "no such file"),
    ("json:Nope", "has no class Nope"),
    ("no_such_module_xyz:X", "cannot import"),
    ("collections:OrderedDict", "lacks answer_mark"),
])
def test_bad_adapters_are_refused(spec, message):
    with pytest.raises(WorkbenchError, match=message):
        load_adapter(spec)


def test_a_broken_adapter_file_is_named(tmp_path, capsys):
    bad = tmp_path / "broken.py"
    bad.write_text("raise RuntimeError('boom')\n")
    assert main(["faithfulness", "adder-cot-faithful", "--adapter", f"{bad}:X", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "importing" in err and "boom" in err and "Traceback" not in err


def test_digits_do_not_combine_with_an_adapter(tmp_path, capsys):
    assert main(["faithfulness", "adder-cot-faithful", "--adapter", f"{EXAMPLE}:ColumnAdapter", "--digits", "2",
                 "--out", str(tmp_path / "o")]) == 2
    assert "--digits and --widths" in capsys.readouterr().err
