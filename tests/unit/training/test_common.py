"""Bad data is reported row by row with where it came from; a nan loss stops training with the last good
checkpoint intact."""

import json

import pytest
import torch

from tests.helpers import tiny_model
from tests.unit.training.test_reward import pairs
from training.common import PREFERENCE_COLUMNS, SFT_COLUMNS, check_vocabulary, load_rows
from training.dpo import DPOConfig, dpo_loss, train_dpo
from training.reward import RewardConfig, RewardModel, train_reward
from training.sft import SFTConfig, train_sft
from workbench.errors import NonFiniteLoss, WorkbenchError


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_malformed_jsonl_rows_are_reported_with_their_line_numbers(tmp_path):
    good = json.dumps({"prompt": "1+1=", "chosen": "2", "rejected": "3"})
    path = write_lines(tmp_path / "prefs.jsonl", [
        good,
        "",  # blank lines are skipped but still counted
        json.dumps({"prompt": "1+2=", "chosen": "3"}),
        json.dumps({"prompt": "1+3=", "chosen": " ", "rejected": "5"}),
        "{not json",
        json.dumps({"prompt": "1+4=", "chosen": 5, "rejected": "6"}),
        json.dumps(["a list"]),
        good,
    ])
    with pytest.raises(WorkbenchError) as e:
        load_rows(path, PREFERENCE_COLUMNS)
    msg = str(e.value)
    for expected in ["line 3: no 'rejected' column", "line 4: empty 'chosen'", "line 5: not JSON",
                     "line 6: 'chosen' is a int, not a string", "line 7: a JSON list, not an object",
                     "['prompt', 'chosen', 'rejected']"]:
        assert expected in msg, msg
    assert "line 1:" not in msg and "line 8:" not in msg


def test_rows_from_a_list_are_numbered_from_zero():
    with pytest.raises(WorkbenchError, match=r"row 1: empty 'completion'"):
        load_rows([{"prompt": "1+1=", "completion": "2"}, {"prompt": "1+2=", "completion": ""}], SFT_COLUMNS)


def test_text_outside_the_vocabulary_is_refused_naming_line_column_and_characters(tmp_path):
    rows = [{"prompt": "1+1=", "chosen": "2", "rejected": "3"}, {"prompt": "1+2=", "chosen": "3!€", "rejected": "4"}]
    path = write_lines(tmp_path / "prefs.jsonl", [json.dumps(r) for r in rows])
    model = tiny_model()
    with pytest.raises(WorkbenchError, match=r"line 2: 'chosen' has '!€'.*allowed"):
        check_vocabulary(model, load_rows(path, PREFERENCE_COLUMNS), PREFERENCE_COLUMNS)
    with pytest.raises(WorkbenchError, match=r"line 2: 'chosen'"):  # the trainers check before step 0
        train_dpo(model, None, path, DPOConfig(steps=1), tmp_path / "dpo", progress=False)


def nan_after(n: int):
    """dpo_loss for ``n`` calls, then a nan loss (a stand-in for a diverging run)."""
    calls = {"n": 0}

    def loss_fn(*args, **kwargs):
        calls["n"] += 1
        loss, metrics = dpo_loss(*args, **kwargs)
        return (loss * float("nan") if calls["n"] > n else loss), metrics

    return loss_fn


def test_a_nan_loss_stops_dpo_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = DPOConfig(lr=1e-3, steps=10, batch_size=4, checkpoint_every=2, loss_fn=nan_after(5))
    policy = tiny_model()
    with pytest.raises(NonFiniteLoss, match=r"DPO loss became nan at step 5; the last good checkpoint \(step 4\)"):
        train_dpo(policy, None, pairs(16), cfg, tmp_path, progress=False)
    assert json.loads((tmp_path / "state" / "state.json").read_text())["step"] == 4
    assert all(torch.isfinite(p).all() for p in policy.parameters())  # the nan never reached the weights
    assert not (tmp_path / "model").exists()
    log = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [0, 1, 2, 3, 4]


def test_a_nan_loss_stops_the_reward_model_and_sft(tmp_path):
    rm = RewardModel(tiny_model())
    with torch.no_grad():
        rm.head.bias.fill_(float("inf"))  # every score inf: inf - inf is nan
    with pytest.raises(NonFiniteLoss, match="reward-model loss became nan at step 0; no checkpoint"):
        train_reward(rm, pairs(8), RewardConfig(steps=3, batch_size=4), tmp_path / "rm", progress=False)
    model = tiny_model()
    with torch.no_grad():
        model.W_U.fill_(float("inf"))
    with pytest.raises(NonFiniteLoss, match="SFT loss became nan"):
        train_sft(model, [{"prompt": "1+1=", "completion": "2"}], SFTConfig(steps=2, batch_size=1, threads=1),
                  tmp_path / "sft", progress=False)


def test_training_curves_are_plotted_from_the_metric_log(tmp_path):
    from training.common import MetricLog, plot_metrics

    log = MetricLog(tmp_path / "metrics.jsonl")
    for step in range(5):
        log.write(step, {"loss": 1.0 / (step + 1), "rewards/margins": 0.1 * step})
    png = plot_metrics(tmp_path / "metrics.jsonl")
    assert png == tmp_path / "metrics.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(WorkbenchError, match="no metrics"):
        plot_metrics(tmp_path / "empty.jsonl")


def test_encode_rows_is_the_per_row_encoding():
    from training.common import encode_rows
    from workbench.models.loader import load_model

    model = load_model("adder-cot-posthoc")
    tok = model.tokenizer
    prompts, completions = ["36+59=", "", "hint:7 1+2="], [" 6+9+0=15 3+5+1=09 ans 95", "x", ""]
    expected = []
    for p, c in zip(prompts, completions):
        p_ids = model.to_tokens(p, truncate=False)[0].tolist()
        expected.append((p_ids + tok(c, add_special_tokens=False)["input_ids"] + [tok.eos_token_id], len(p_ids)))
    assert encode_rows(model, prompts, completions) == expected
