import json
import subprocess
import sys

import pytest

from tests.helpers import tiny_model
from workbench.cli import main
from workbench.models.checkpoint import save_checkpoint


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_checkpoint(tiny_model(), path)
    return path


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("workbench: error:")
    return err[0]


def test_generate(ckpt, capsys):
    assert main(["generate", str(ckpt), "36+59=", "--n", "3", "--max-new-tokens", "5", "--temperature", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and all(line.startswith("36+59=") for line in lines)


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["generate", "no-such-model", "1+1="], "cannot load 'no-such-model'"),
        (["generate", "{ckpt}", "36*59="], "'*' at position 2"),
        (["generate", "{ckpt}", "1" * 70], "context is 64"),
        (["organisms", "eval", "{ckpt}"], "--organism"),
        (["organisms", "train", "adder-nothing"], "unknown organism"),
        (["tasks", "export", "--digits", "7", "--out", "{ckpt}/x.jsonl"], "1..5"),
        (["demo", "--prompt", "36*59="], "a+b="),
    ],
)
def test_bad_input_is_one_line_and_exit_2(ckpt, capsys, argv, expected):
    argv = [a.replace("{ckpt}", str(ckpt)) for a in argv]
    assert main(argv) == 2
    assert expected in _error_line(capsys)


@pytest.mark.parametrize("argv", [["generate", "x", "1+1=", "--n", "0"], ["generate", "x", "1+1=", "--temperature", "-1"],
                                  ["frobnicate"]])
def test_bad_arguments_exit_2(argv, capsys):
    assert main(argv) == 2
    assert "--help" in _error_line(capsys)  # one line, no usage block, pointing at the help


def test_real_process_exit_code_and_no_traceback():
    proc = subprocess.run([sys.executable, "-m", "workbench.cli", "generate", "no-such-model", "1+1="],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1


def test_tasks_export(tmp_path, capsys):
    assert main(["tasks", "export", "--format", "hint", "--n", "5", "--out", str(tmp_path / "h.jsonl")]) == 0
    assert len((tmp_path / "h.jsonl").read_text().splitlines()) == 5


def test_organisms_list(capsys):
    assert main(["organisms", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("adder-direct", "adder-cot-faithful", "adder-cot-posthoc", "adder-hint"):
        assert name in out


def test_cache_command_writes_a_readable_cache(ckpt, tmp_path, capsys):
    from workbench.cache_store import CacheReader

    out = tmp_path / "cache"
    argv = ["cache", str(ckpt), "--task", "cot", "--n", "20", "--hooks", "blocks.*.hook_resid_post",
            "--positions=-2,-1", "--out", str(out), "--shard-size", "8"]
    assert main(argv) == 0
    reader = CacheReader(out)
    assert reader.complete and len(reader) == 20 and len(reader.shards) == 3
    assert reader.manifest["shapes"]["blocks.0.hook_resid_post"] == [2, 32]
    assert main(argv) == 0  # a complete cache: nothing to redo


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--dataset", "{tmp}/missing.jsonl"], "no dataset file"),
        (["--task", "cot", "--hooks", "blocks.9.hook_resid_post"], "no hook matches"),
    ],
)
def test_cache_command_bad_input(ckpt, tmp_path, capsys, extra, expected):
    extra = [e.replace("{tmp}", str(tmp_path)) for e in extra]
    argv = ["cache", str(ckpt), "--out", str(tmp_path / "c")] + extra
    if "--hooks" not in argv:
        argv += ["--hooks", "blocks.0.hook_resid_post"]
    assert main(argv) == 2
    assert expected in _error_line(capsys)


def test_lens_probe_and_patch_commands(ckpt, tmp_path, capsys):
    assert main(["lens", str(ckpt), "12+34=", "--target", "4", "--out", str(tmp_path / "lens")]) == 0
    assert (tmp_path / "lens" / "lens.parquet").exists() and (tmp_path / "lens" / "logit_lens.png").exists()
    assert main(["probe", str(ckpt), "--digits", "2", "--n", "60", "--variables", "carry0", "ans1",
                 "--causal", "ans1", "--out", str(tmp_path / "probe")]) == 0
    assert (tmp_path / "probe" / "probes.parquet").exists() and (tmp_path / "probe" / "figures" / "probe_ans1.html").exists()
    assert main(["patch", str(ckpt), "--clean", "12+34", "--corrupt", "12+39", "--clean", "51+22",
                 "--corrupt", "51+27", "--sweeps", "resid", "--out", str(tmp_path / "patch")]) == 0
    capsys.readouterr()


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["lens", "{ckpt}", "12+34=", "--target", "12", "--out", "{tmp}/l"], "one token"),
        (["lens", "{ckpt}", "12*34=", "--out", "{tmp}/l"], "'*' at position 2"),
        (["probe", "{ckpt}", "--digits", "2", "--n", "40", "--variables", "carry9", "--out", "{tmp}/p"], "unknown variables"),
        (["probe", "{ckpt}", "--digits", "2", "--n", "40", "--causal", "answer", "--out", "{tmp}/p"], "column variable"),
        (["probe", "{ckpt}", "--digits", "2", "--n", "40", "--causal", "ans1", "--site", "9:0", "--out", "{tmp}/p"], "outside layers"),
        (["patch", "{ckpt}", "--clean", "12+34=", "--out", "{tmp}/q"], "go together"),
        (["patch", "{ckpt}", "--clean", "12+34=", "--corrupt", "12+345=", "--out", "{tmp}/q"], "one token length"),
        (["tuned-lens", "{ckpt}", "--cache", "{tmp}", "--out", "{tmp}/t"], "manifest"),
        (["circuit-study", "adder-direct", "--planted", "--out", "{tmp}/c"], "planted mechanism (adder-direct-carry"),
    ],
)
def test_toolkit_commands_bad_input(ckpt, tmp_path, capsys, argv, expected):
    argv = [a.replace("{ckpt}", str(ckpt)).replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    assert expected in _error_line(capsys)


def test_diff_command_on_identical_models(ckpt, tmp_path, capsys):
    assert main(["diff", str(ckpt), str(ckpt), "--task", "cot", "--n", "8", "--digits", "2", "--out", str(tmp_path)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["kl_mean"] == pytest.approx(0, abs=1e-6) and out["next_token_changed"] == 0


def test_train_runs_a_method_on_users_jsonl_and_refuses_bad_rows(tmp_path, capsys):
    from workbench.cli import main

    rows = [{"prompt": f"{a}+{b}=", "chosen": f" {a + b}", "rejected": f" {a + b + 1}"} for a in range(4) for b in range(4)]
    data = tmp_path / "prefs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["train", "dpo", "--model", "adder-direct", "--data", str(data), "--out", str(tmp_path / "dpo"),
                 "--steps", "2", "--batch-size", "4"]) == 0
    assert json.loads(capsys.readouterr().out)["processes"] == 1
    assert (tmp_path / "dpo" / "model" / "model.safetensors").exists() and (tmp_path / "dpo" / "metrics.png").exists()
    data.write_text(data.read_text() + '{"prompt": "1+1=", "chosen": "", "rejected": " 3"}\n')
    assert main(["train", "dpo", "--model", "adder-direct", "--data", str(data), "--out", str(tmp_path / "x")]) == 2
    assert "line 17: empty 'chosen'" in capsys.readouterr().err
    assert main(["train", "ppo", "--model", "adder-direct", "--data", str(data), "--out", str(tmp_path / "p")]) == 2
    assert "--reward-model" in capsys.readouterr().err


def test_export_writes_a_transformers_directory(tmp_path, capsys):
    assert main(["export", "adder-direct", "--out", str(tmp_path / "hf")]) == 0
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert cfg["model_type"] == "gpt2" and (tmp_path / "hf" / "tokenizer.json").is_file()


def test_app_on_a_taken_port_says_so_before_warming_up(capsys):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["app", "--port", str(port), "--address", "127.0.0.1"]) == 2
    line = _error_line(capsys)
    assert f"port {port}" in line and "--port" in line
