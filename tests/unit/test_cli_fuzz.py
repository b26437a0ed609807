"""Every subcommand, driven with generated bad arguments and bad output paths: exit 2, one line on stderr naming
the argument, no traceback, and no file that existed before is changed.

The cases are generated from the parser itself, so a new subcommand or option is covered without editing this
file: each typed option gets values its own type refuses, each option with choices gets a value outside them,
each command with ``--out`` gets every kind of output path the workbench must refuse.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import os
from pathlib import Path

import pytest

from workbench.cli import FILE_OUTPUTS, _add_overwrite_flags, _subparsers, build_parser, main

BAD_VALUES = ["", " ", "-1", "0", "-0.5", "inf", "-inf", "nan", "1e400", "abc", "4.5", "99999999999999999999999",
              "1,x", "\0", "€"]
MAX_VALUES_PER_OPTION = 8  # the first refused ones, in the order above: empty, sign, non-finite, overflow, text


@functools.lru_cache(maxsize=1)
def _leaves() -> list[argparse.ArgumentParser]:
    parser = build_parser()
    _add_overwrite_flags(parser)
    return [p for p in _subparsers(parser)
            if not any(isinstance(a, argparse._SubParsersAction) for a in p._actions)]


def _base_argv(leaf: argparse.ArgumentParser, out: Path) -> list[str]:
    """The command words and a valid value for every required argument (parsing must reach the bad one)."""
    argv = leaf.prog.split()[1:]
    for action in leaf._actions:
        if action.option_strings or action.dest in ("help",):
            continue
        argv.append(str(next(iter(action.choices))) if action.choices else "adder-direct")
    for action in leaf._actions:
        if action.option_strings and action.required:
            argv += [action.option_strings[0], _valid_for(action, out)]
    for group in leaf._mutually_exclusive_groups:
        if group.required:
            action = group._group_actions[0]
            argv += [action.option_strings[0], _valid_for(action, out)]
    return argv


def _valid_for(action: argparse.Action, out: Path) -> str:
    if action.dest == "out":
        return str(out / "o")
    if action.choices:
        return str(next(iter(action.choices)))
    return {"values": "4", "hook": "blocks.0.hook_resid_post", "hooks": "blocks.*.hook_resid_post"}.get(
        action.dest, str(out / "input"))


def _typed_cases():
    for leaf in _leaves():
        for action in leaf._actions:
            if not action.option_strings or action.nargs == 0:
                continue
            if action.choices:
                yield pytest.param(leaf.prog, action.option_strings[0], "no-such-choice",
                                   id=f"{leaf.prog}:{action.option_strings[0]}=no-such-choice")
                continue
            if action.type is None or action.type is str:
                continue
            refused = []
            for value in BAD_VALUES:
                try:
                    action.type(value)
                except (argparse.ArgumentTypeError, ValueError, TypeError):
                    refused.append(value)
            for value in refused[:MAX_VALUES_PER_OPTION]:
                yield pytest.param(leaf.prog, action.option_strings[0], value,
                                   id=f"{leaf.prog}:{action.option_strings[0]}={value!r}")


def _snapshot(root: Path) -> dict[str, str]:
    files = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = Path(dirpath) / name
            if path.is_file() and not path.is_symlink():
                files[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return files


def _assert_one_line(capsys, *needles: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("workbench: error:"), err
    assert "Traceback" not in err[0]
    for needle in needles:
        assert needle in err[0], err[0]
    return err[0]


@pytest.mark.parametrize("prog, option, value", list(_typed_cases()))
def test_a_refused_value_is_one_line_and_exit_2(tmp_path, capsys, prog, option, value):
    leaf = next(p for p in _leaves() if p.prog == prog)
    argv = _base_argv(leaf, tmp_path) + [f"{option}={value}"]
    before = _snapshot(tmp_path)
    assert main(argv) == 2
    _assert_one_line(capsys, option.lstrip("-").split("-")[0])
    assert _snapshot(tmp_path) == before


def test_the_generator_covers_every_command():
    progs = {case.values[0] for case in _typed_cases()}
    leaves = {p.prog for p in _leaves()}
    typed = {p.prog for p in _leaves() if any(a.option_strings and (a.choices or a.type not in (None, str))
                                              for a in p._actions)}
    assert progs == typed and len(leaves) >= 20


def _out_cases(tmp_path: Path) -> dict[str, Path]:
    """Output paths the workbench must refuse, each with the user's data around it."""
    user_file = tmp_path / "notes.txt"
    user_file.write_text("a user's notes\n")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("\\documentclass{article}\n")
    link = tmp_path / "link"
    link.symlink_to(foreign)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    return {"a file": user_file, "under a file": user_file / "out", "a symlink": link, "a fifo": fifo,
            "under /proc": Path("/proc/self/wb-out"), "a device": Path("/dev/null"), "foreign non-empty dir": foreign}


def _out_commands() -> list[str]:
    return [p.prog for p in _leaves() if any(a.dest == "out" for a in p._actions)]


@pytest.mark.parametrize("prog", _out_commands())
def test_bad_out_paths_are_refused_before_any_work(tmp_path, capsys, prog):
    leaf = next(p for p in _leaves() if p.prog == prog)
    cases = _out_cases(tmp_path)
    before = _snapshot(tmp_path)
    for what, out in cases.items():
        if prog in FILE_OUTPUTS and what == "foreign non-empty dir":
            continue  # writing one file into a directory of the user's is fine; the file names are the user's
        argv = [a for a in _base_argv(leaf, tmp_path)]
        i = argv.index("--out") if "--out" in argv else None
        if i is None:
            argv += ["--out", str(out)]
        else:
            argv[i + 1] = str(out)
        assert main(argv) == 2, (what, argv)
        _assert_one_line(capsys, "--out" if what != "under a file" else "")
        assert _snapshot(tmp_path) == before, what
    assert (tmp_path / "fifo").exists() and not (tmp_path / "fifo").is_file()
    assert sorted(p.name for p in (tmp_path / "foreign").iterdir()) == ["thesis.tex"]


# ---- damaged inputs: every command that reads a model, an SAE, a cache or a data file ------------------------------

def _damaged_inputs(root: Path) -> dict[str, Path]:
    """A damaged copy of each kind of input file, each the way a real accident leaves it."""
    import shutil

    from tests.helpers import truncate
    from workbench.models.zoo import organism_dir

    model = root / "model"
    shutil.copytree(organism_dir("adder-direct"), model, ignore=shutil.ignore_patterns("transcoders"))
    truncate(model / "model.safetensors")
    sae = root / "sae"
    sae.mkdir()
    (sae / "cfg.json").write_text("[]")
    (sae / "sae_weights.safetensors").write_bytes(b"\0" * 64)
    cache = root / "cache"
    cache.mkdir()
    (cache / "manifest.json").write_text("[]")
    data = root / "data.jsonl"
    data.write_bytes(bytes(range(256)) * 8)
    transcoders = root / "transcoders"
    shutil.copytree(organism_dir("adder-direct") / "transcoders", transcoders)
    truncate(next(transcoders.glob("layer_0/*.safetensors")))
    return {"model": model, "sae": sae, "cache": cache, "data": data, "transcoders": transcoders}


DAMAGED_CASES = [
    (["generate", "{model}", "1+1="], "model.safetensors"),
    (["lens", "{model}", "1+1=", "--out", "{out}"], "model.safetensors"),
    (["probe", "{model}", "--n", "20", "--out", "{out}"], "model.safetensors"),
    (["patch", "{model}", "--n", "2", "--out", "{out}"], "model.safetensors"),
    (["faithfulness", "{model}", "--n", "20", "--out", "{out}"], "model.safetensors"),
    (["cache", "{model}", "--task", "cot", "--n", "4", "--hooks", "blocks.0.hook_resid_post", "--out", "{out}"],
     "model.safetensors"),
    (["diff", "adder-direct", "{model}", "--out", "{out}"], "model.safetensors"),
    (["export", "{model}", "--out", "{out}"], "model.safetensors"),
    (["organisms", "eval", "{model}", "--organism", "adder-direct", "--n", "5"], "model.safetensors"),
    (["train", "sft", "--model", "{model}", "--data", "{data}", "--out", "{out}"], "model.safetensors"),
    (["sae", "eval", "{sae}", "--model", "adder-direct"], "cfg.json"),
    (["sae", "dashboard", "{sae}", "--model", "adder-direct", "--out", "{out}"], "cfg.json"),
    (["tuned-lens", "adder-direct", "--cache", "{cache}", "--out", "{out}"], "manifest.json"),
    (["sae", "train", "adder-direct", "--hook", "blocks.0.hook_resid_post", "--cache", "{cache}", "--out", "{out}"],
     "manifest.json"),
    (["train", "sft", "--model", "adder-direct", "--data", "{data}", "--out", "{out}"], "data.jsonl"),
    (["train", "dpo", "--model", "adder-direct", "--data", "{data}", "--out", "{out}"], "data.jsonl"),
    (["cache", "adder-direct", "--dataset", "{data}", "--hooks", "blocks.0.hook_resid_post", "--out", "{out}"],
     "data.jsonl"),
    (["circuit", "adder-direct", "1+1=", "--transcoders", "{transcoders}", "--out", "{out}"], "layer_0"),
    (["probe", "adder-direct", "--dataset", "{data}", "--out", "{out}"], "data.jsonl"),
    (["patch", "adder-direct", "--dataset", "{data}", "--out", "{out}"], "data.jsonl"),
]


@pytest.mark.parametrize("argv, names", DAMAGED_CASES, ids=[" ".join(c[0][:2]) + f" <{c[1]}>"
                                                            for c in DAMAGED_CASES])
def test_a_damaged_input_is_named_and_nothing_is_changed(tmp_path, capsys, argv, names):
    inputs = _damaged_inputs(tmp_path / "in")
    before = _snapshot(tmp_path)
    argv = [a.format(out=tmp_path / "out", **inputs) for a in argv]
    assert main(argv) == 2, argv
    _assert_one_line(capsys, names)
    assert all(_snapshot(tmp_path).get(path) == digest for path, digest in before.items())


def test_a_long_prompt_gets_a_graph_name_that_fits():
    from workbench.circuits import check_slug
    from workbench.cli_sae import _slug

    story = "Tom has 52 apples. He buys 7 more. Then he gives away 3. How many apples does he have?" * 3
    a, b = _slug("m-" + story), _slug("m-" + story + " He")
    assert len(a) <= 128 and a != b and a.startswith("m-Tom_has_52")
    check_slug(a)
    assert _slug("adder-direct-36+59=") == "adder-direct-36_59"
