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


@pytest.mark.parametrize("argv, msg", [
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
