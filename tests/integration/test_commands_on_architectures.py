"""Every command on GPT-2, Llama (RoPE, RMSNorm, SwiGLU, grouped-query attention) and Qwen2 (q/k/v biases, no BOS)
models with random weights and a byte-level BPE tokenizer, built in a temp dir: what a user with their own model
and their own prompts runs, end to end through the CLI."""

import json
import random
from pathlib import Path

import pytest

from tests.unit.models.test_real_architectures import gpt2_dir, llama_dir, qwen2_dir
from workbench.cli import main

BUILDERS = {"gpt2": gpt2_dir, "llama": llama_dir, "qwen2": qwen2_dir}
ROOT = Path(__file__).resolve().parents[2]
WORDS = ["apples", "pears", "Tom", "Ann", "has", "buys", "eats", "and", "then", "so", "the", "answer", "is"]


def _sentences(n: int, seed: int, words: int = 6) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(words)) for _ in range(n)]


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _pairs(model_dir: Path, texts: list[str], n: int = 4) -> list[dict]:
    """Clean/corrupted prompts of one token length (patching aligns positions): two texts of the tokenizer's most
    common length each."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    by_len: dict[int, list[str]] = {}
    for t in texts:
        by_len.setdefault(len(tok(t)["input_ids"]), []).append(t)
    same = max(by_len.values(), key=len)
    assert len(same) >= 2 * n
    return [{"clean": same[2 * i], "corrupt": same[2 * i + 1]} for i in range(n)]


@pytest.fixture(scope="module", params=list(BUILDERS))
def arch(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    BUILDERS[request.param](root / "model")
    texts = _sentences(120, 0)
    data = {
        "texts": _jsonl(root / "texts.jsonl", [{"prompt": t} for t in texts]),
        "labels": _jsonl(root / "labels.jsonl", [{"prompt": t, "labels": {"first": t.split()[0],
                                                                          "has_tom": "Tom" in t}} for t in texts]),
        "pairs": _jsonl(root / "pairs.jsonl", _pairs(root / "model", texts)),
        "sft": _jsonl(root / "sft.jsonl", [{"prompt": t, "completion": " so"} for t in texts[:32]]),
        "dpo": _jsonl(root / "dpo.jsonl", [{"prompt": t, "chosen": " yes", "rejected": " no"} for t in texts[:32]]),
    }
    return request.param, root, data


def _run(argv: list[str], capsys) -> dict | str:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 0, f"{argv[0]} exited {code}: {err.strip()[-600:]}"
    try:
        return json.loads(out)
    except ValueError:
        return out


def test_inspect_commands(arch, capsys):
    name, root, data = arch
    model = root / "model"
    assert _run(["generate", model, "Tom has two", "--max-new-tokens", "4"], capsys)
    cache = _run(["cache", model, "--dataset", data["texts"], "--hooks", "blocks.*.hook_resid_post",
                  "--positions=all", "--out", root / "cache"], capsys)
    assert cache["complete"] and cache["prompts"] == 120
    _run(["lens", model, "Tom has two apples", "--out", root / "lens"], capsys)
    assert (root / "lens" / "lens.parquet").is_file()
    lens_cache = root / "lens-cache"
    _run(["cache", model, "--dataset", data["texts"], "--hooks", "blocks.*.hook_resid_pre", "blocks.1.hook_resid_post",
          "--positions=all", "--out", lens_cache], capsys)
    _run(["tuned-lens", model, "--cache", lens_cache, "--steps", "5", "--out", root / "tuned"], capsys)
    _run(["lens", model, "Tom has two apples", "--tuned", root / "tuned", "--out", root / "lens-tuned"], capsys)
    probe = _run(["probe", model, "--dataset", data["labels"], "--out", root / "probe"], capsys)
    assert set(probe["best_sites"]) == {"first", "has_tom"}
    patch = _run(["patch", model, "--dataset", data["pairs"], "--sweeps", "resid", "heads", "--out", root / "patch"],
                 capsys)
    assert 1 <= patch["pairs"] <= 4  # pairs whose clean and corrupted runs predict one token are dropped


def test_faithfulness_with_a_user_adapter(arch, capsys):
    name, root, _ = arch
    adapter = f"{ROOT / 'docs' / 'examples' / 'column_adapter.py'}:ColumnAdapter"
    _run(["faithfulness", root / "model", "--adapter", adapter, "--n", "20", "--out", root / "faith"], capsys)
    verdict = json.loads((root / "faith" / "summary.json").read_text())["verdict"]
    # Random weights do not add: the verdict must say so, not read a mechanism into noise.
    assert (verdict["verdict"], verdict["rule"]) == ("undetermined", "competence")


def test_sae_and_transcoder_commands(arch, capsys):
    name, root, data = arch
    model = root / "model"
    _run(["sae", "train", model, "--hook", "blocks.0.hook_resid_post", "--dataset", data["texts"], "--d-sae", "64",
          "--tokens", "2000", "--batch-size", "256", "--out", root / "sae"], capsys)
    ev = _run(["sae", "eval", root / "sae", "--model", model, "--dataset", data["texts"]], capsys)
    assert "l0" in json.dumps(ev).lower()
    _run(["sae", "dashboard", root / "sae", "--model", model, "--dataset", data["texts"], "--out", root / "dash"],
         capsys)
    _run(["sae", "train", model, "--transcoder", "--dataset", data["texts"], "--d-sae", "64", "--tokens", "2000",
          "--batch-size", "256", "--out", root / "transcoders"], capsys)
    _run(["circuit", model, "Tom has two apples", "--transcoders", root / "transcoders", "--validate", "2",
          "--out", root / "graph"], capsys)
    graph = json.loads((root / "graph" / "model-Tom_has_two_apples.json").read_text())
    assert graph["nodes"] and graph["links"] and graph["metadata"]["prompt"].endswith("Tom has two apples")


def test_training_and_diff(arch, capsys):
    name, root, data = arch
    model = root / "model"
    _run(["train", "sft", "--model", model, "--data", data["sft"], "--steps", "3", "--batch-size", "8",
          "--out", root / "sft"], capsys)
    _run(["train", "dpo", "--model", root / "sft", "--data", data["dpo"], "--steps", "3", "--batch-size", "8",
          "--out", root / "dpo"], capsys)
    diff = _run(["diff", model, root / "dpo", "--n", "40", "--no-mechanisms", "--out", root / "diff"], capsys)
    assert diff["n_prompts"] == 40 and diff["kl_mean"] > 0  # three DPO steps moved the model
