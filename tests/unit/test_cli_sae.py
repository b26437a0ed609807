import json

import pytest

from workbench.cli import main
from workbench.cli_sae import texts_for


def test_texts_default_to_the_organisms_own_mix_and_read_jsonl(tmp_path):
    texts = texts_for("adder-direct", 50, "train", 0)
    assert len(texts) == 50 and any("why?" in t for t in texts)  # adder-direct's mix includes explanations
    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps({"prompt": "1+2=", "completion": "3"}) + "\n" + json.dumps({"x": 1}) + "\n")
    with pytest.raises(Exception, match=r"lines \[2\]"):
        texts_for("adder-direct", 5, "train", 0, f)


def test_a_user_dataset_has_a_held_out_split_disjoint_from_training(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text("".join(json.dumps({"prompt": f"{i}+{i}=", "completion": str(2 * i)}) + "\n" for i in range(400)))
    train, test, everything = (texts_for("x", 1000, split, 0, f) for split in ("train", "test", "all"))
    assert not set(train) & set(test) and sorted(train + test) == sorted(everything) and len(everything) == 400
    assert 20 <= len(test) <= 70  # about one row in ten
    assert texts_for("x", 1000, "test", 5, f) == test  # the split is a property of the row, not of the seed


def test_a_model_that_is_not_an_organism_needs_a_dataset(tmp_path):
    with pytest.raises(Exception, match="not an organism.*--dataset"):
        texts_for(str(tmp_path), 10, "train", 0)


def test_a_garbage_card_is_named(tmp_path):
    (tmp_path / "card.json").write_bytes(b"\xff\xfe not json")
    with pytest.raises(Exception, match="card.json is not a JSON object"):
        texts_for(str(tmp_path), 10, "train", 0)


def test_binary_dataset_is_refused(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(Exception, match="not UTF-8 JSONL"):
        texts_for("adder-direct", 10, "train", 0, f)


@pytest.mark.parametrize("argv, msg", [
    (["sae", "sweep", "adder-direct", "--hook", "blocks.0.hook_resid_post", "--values", "4.5,8", "--out", "{tmp}/s"],
     "whole numbers, got 4.5"),
    (["sae", "sweep", "adder-direct", "--hook", "blocks.0.hook_resid_post", "--values", "4,2048", "--d-sae", "64",
      "--out", "{tmp}/s"], "cannot exceed --d-sae"),
    (["sae", "sweep", "adder-direct", "--hook", "hook_embed", "--transcoder", "--values", "1", "--out", "{tmp}/s"],
     "blocks.L.hook_resid_mid"),
    (["sae", "train", "adder-direct", "--hook", "blocks.0.hook_resid_post", "--k", "100", "--d-sae", "50",
      "--out", "{tmp}/s"], "cannot exceed d_sae"),
    (["sae", "train", "adder-direct", "--out", "{tmp}/s"], "--hook is required"),
    (["sae", "train", "adder-direct", "--hook", "blocks.9.hook_resid_post", "--out", "{tmp}/s"], "is not a hook"),
    (["sae", "train", "adder-direct", "--transcoder", "--arch", "topk", "--out", "{tmp}/s", "--n", "20"],
     "topk is not available"),
    (["sae", "eval", "{tmp}", "--model", "adder-direct"], "not an SAE directory"),
    (["sae", "train", "adder-direct", "--hook", "blocks.0.hook_resid_post", "--out", "{tmp}/s",
      "--dataset", "{tmp}/missing.jsonl"], "no dataset file"),
])
def test_bad_input_exits_2_with_a_message(argv, msg, tmp_path, capsys):
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    assert msg in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["sae", "sweep", "adder-direct", "--hook", "h", "--values", "4,x", "--out", "o"],
                                  ["sae", "train", "adder-direct", "--k", "0", "--out", "o"]])
def test_bad_numbers_are_argparse_errors(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("workbench: error: argument")
