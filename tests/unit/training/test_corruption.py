"""Trainers refuse what would make them train on, or save, corrupted numbers: bad configs, non-finite weights,
binary or signal-free data, and damaged resumable state."""

import json
import math

import pytest
import torch

from tests.helpers import tiny_model
from tests.unit.training.test_reward import pairs
from training.common import MetricLog, load_rows
from training.dpo import DPOConfig, dpo_loss, train_dpo
from training.ppo import PPOConfig
from training.reward import RewardConfig
from training.sft import SFTConfig, train_sft
from workbench.errors import NonFiniteLoss, WorkbenchError
from workbench.models.checkpoint import save_checkpoint, weights_sha256

SFT_ROWS = [{"prompt": f"{a}+{b}=", "completion": str(a + b)} for a in range(1, 5) for b in range(1, 5)]


# ---- configs ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", [SFTConfig, DPOConfig, RewardConfig, PPOConfig])
@pytest.mark.parametrize("field, value, match", [
    ("lr", math.inf, r"lr must be a finite number > 0, got inf"),
    ("lr", math.nan, r"lr must be a finite number > 0, got nan"),
    ("lr", 0.0, r"lr must be a finite number > 0"),
    ("lr", -1e-3, r"lr must be a finite number > 0"),
    ("steps", 0, r"steps must be an integer >= 1, got 0"),
    ("batch_size", 0, r"batch_size must be an integer >= 1, got 0"),
    ("checkpoint_every", 0, r"checkpoint_every must be an integer >= 1"),
])
def test_bad_configs_are_refused_at_construction(config, field, value, match):
    with pytest.raises(WorkbenchError, match=match):
        config(**{field: value})


# ---- non-finite weights ----------------------------------------------------------------------------------------


def test_a_learning_rate_too_large_for_the_weights_stops_sft_and_dpo_without_saving(tmp_path):
    # 1e38 is finite, but Adam's first step size (lr / (1 - beta1)) does not fit in float32.
    with pytest.raises(NonFiniteLoss, match=r"SFT optimizer step overflowed at step 0.*no checkpoint"):
        train_sft(tiny_model(), SFT_ROWS, SFTConfig(lr=1e38, steps=1, batch_size=4, threads=1), tmp_path / "sft",
                  progress=False)
    assert not (tmp_path / "sft" / "model").exists() and not (tmp_path / "sft" / "state").exists()
    with pytest.raises(NonFiniteLoss, match=r"DPO optimizer step overflowed at step 0"):
        train_dpo(tiny_model(), None, pairs(8), DPOConfig(lr=1e38, steps=1, batch_size=4), tmp_path / "dpo",
                  progress=False)
    assert not (tmp_path / "dpo" / "model").exists()


def test_a_learning_rate_too_large_stops_the_reward_model_and_ppo_without_saving(tmp_path):
    from training.ppo import train_ppo
    from training.reward import train_reward

    with pytest.raises(NonFiniteLoss, match=r"reward-model optimizer step overflowed at step 0"):
        train_reward(tiny_model(), pairs(8), RewardConfig(lr=1e38, steps=1, batch_size=4), tmp_path / "rm",
                     progress=False)
    assert not (tmp_path / "rm" / "model").exists()
    cfg = PPOConfig(lr=1e38, steps=1, batch_size=4, minibatch_size=4, ppo_epochs=1, max_new_tokens=3, num_threads=1)
    with pytest.raises(NonFiniteLoss, match=r"PPO optimizer step overflowed at step 0"):
        train_ppo(tiny_model(), None, lambda p, c: torch.zeros(len(c)), ["1+1=", "2+2="], cfg, tmp_path / "ppo",
                  progress=False)
    assert not (tmp_path / "ppo" / "policy").exists()


def nan_gradient_after(n: int):
    """dpo_loss whose value stays finite but whose gradient is nan from call ``n + 1`` on (sqrt at 0)."""
    calls = {"n": 0}

    def loss_fn(policy_chosen, *args, **kwargs):
        calls["n"] += 1
        loss, metrics = dpo_loss(policy_chosen, *args, **kwargs)
        if calls["n"] > n:
            loss = loss + torch.sqrt((policy_chosen - policy_chosen.detach()).abs().sum())  # + 0, d/dx = nan
        return loss, metrics

    return loss_fn


def test_nan_weights_after_a_finite_loss_stop_dpo_and_keep_the_last_good_checkpoint(tmp_path):
    cfg = DPOConfig(lr=1e-3, steps=8, batch_size=4, checkpoint_every=2, loss_fn=nan_gradient_after(3))
    with pytest.raises(NonFiniteLoss, match=r"DPO weights became nan/inf in the optimizer step at step 3 .*"
                                            r"the last good checkpoint \(step 2\)"):
        train_dpo(tiny_model(), None, pairs(16), cfg, tmp_path, progress=False)
    assert json.loads((tmp_path / "state" / "state.json").read_text())["step"] == 2
    assert not (tmp_path / "model").exists()
    # The kept checkpoint is finite and resumable (with a healthy loss the run completes).
    cfg = DPOConfig(lr=1e-3, steps=8, batch_size=4, checkpoint_every=2, loss_fn=nan_gradient_after(10**6))
    policy = train_dpo(tiny_model(), None, pairs(16), cfg, tmp_path, progress=False)
    assert all(torch.isfinite(p).all() for p in policy.parameters()) and (tmp_path / "model").is_dir()


def test_the_cli_reports_a_diverging_run_in_one_line_and_exits_2(tmp_path, capsys):
    from workbench.cli import main

    save_checkpoint(tiny_model(), tmp_path / "m")
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in SFT_ROWS))
    rc = main(["train", "sft", "--model", str(tmp_path / "m"), "--data", str(data), "--out", str(tmp_path / "o"),
               "--steps", "1", "--batch-size", "4", "--lr", "1e38"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "1e38" in err.replace("1e+38", "1e38")  # argparse or trainer
    assert not (tmp_path / "o" / "model").exists()


# ---- data ------------------------------------------------------------------------------------------------------


def test_a_binary_data_file_is_refused_naming_file_and_line(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_bytes(json.dumps(SFT_ROWS[0]).encode() + b"\n\x89PNG\r\n\x1a\n\x00\xff\xfe\n")
    with pytest.raises(WorkbenchError, match=r"bad rows in .*data\.jsonl: line 2: not UTF-8 text \(byte 0x89"):
        load_rows(path, ("prompt", "completion"))
    with pytest.raises(WorkbenchError, match=r"data\.jsonl: .*line 2: not UTF-8"):
        train_sft(tiny_model(), path, SFTConfig(steps=1, threads=1), tmp_path / "o", progress=False)


def test_lines_end_at_newlines_only_and_a_bom_is_allowed(tmp_path):
    path = tmp_path / "data.jsonl"
    row = {"prompt": "a\u2028b=", "completion": "c\x0cd"}  # a line separator and a form feed inside strings
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(row, ensure_ascii=False).encode() + b"\n\n" + b"[1]\n")
    with pytest.raises(WorkbenchError, match=r"line 3: a JSON list") as e:
        load_rows(path, ("prompt", "completion"))
    assert "line 1" not in str(e.value)


def test_preference_pairs_without_a_preference_are_refused_with_their_lines(tmp_path):
    rows = [{"prompt": "1+1=", "chosen": "2", "rejected": "3"}, {"prompt": "1+2=", "chosen": "3", "rejected": "3"},
            {"prompt": "2+2=", "chosen": "4", "rejected": "5"}, {"prompt": "2+3=", "chosen": "5", "rejected": "5"}]
    path = tmp_path / "prefs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(WorkbenchError, match=r"line 2: 'chosen' and 'rejected' are the same text.*line 4: "):
        load_rows(path, ("prompt", "chosen", "rejected"))
    with pytest.raises(WorkbenchError, match=r"row 1: 'chosen' and 'rejected' are the same"):
        train_dpo(tiny_model(), None, rows, DPOConfig(steps=1), tmp_path / "dpo", progress=False)
    assert len(load_rows(rows, ("prompt", "chosen"))) == 4  # SFT on chosen: no pair, no check


# ---- damaged resumable state -------------------------------------------------------------------------------------


CFG = DPOConfig(lr=1e-3, steps=6, batch_size=4, checkpoint_every=2)


@pytest.fixture
def killed_run(tmp_path):
    """A DPO run killed after its step-4 checkpoint."""
    train_dpo(tiny_model(), None, pairs(16), CFG, tmp_path, progress=False, stop_after=4)
    return tmp_path


def resume(path, **kw):
    return train_dpo(tiny_model(), None, pairs(16), CFG, path, progress=False, **kw)


def truncate(file):
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


def flip_last_byte(file):
    data = bytearray(file.read_bytes())
    data[-1] ^= 0x01
    file.write_bytes(bytes(data))


@pytest.mark.parametrize("damage, name, match", [
    (truncate, "model.safetensors", r"model\.safetensors is damaged: \d+ bytes"),
    (flip_last_byte, "optimizer.safetensors", r"optimizer\.safetensors is damaged"),
    (lambda f: f.unlink(), "optimizer.safetensors", r"optimizer\.safetensors is missing"),
    (lambda f: f.write_bytes(b"\x00garbage"), "state.json", r"state\.json is unreadable"),
    (lambda f: f.write_text("[]"), "state.json", r"state\.json is damaged: expected a JSON object"),
    (lambda f: f.write_text(json.dumps({**json.loads(f.read_text()), "step": 10**9})), "state.json",
     r"state\.json is damaged: expected a JSON object with a step \(an integer from 0 to 6\)"),
])
def test_a_damaged_state_is_refused_naming_the_file(killed_run, damage, name, match):
    damage(killed_run / "state" / name)
    with pytest.raises(WorkbenchError, match=match) as e:
        resume(killed_run)
    assert "--no-resume" in str(e.value) and str(killed_run / "state") in str(e.value)
    assert not (killed_run / "model").exists()
    resume(killed_run, resume=False)  # starting afresh needs nothing deleted by hand
    assert (killed_run / "model").is_dir()


def test_a_state_without_recorded_digests_still_resumes_bit_identically(killed_run, tmp_path_factory):
    meta_path = killed_run / "state" / "state.json"
    meta = json.loads(meta_path.read_text())
    del meta["files"]  # as written before digests were recorded
    meta_path.write_text(json.dumps(meta))
    straight = train_dpo(tiny_model(), None, pairs(16), CFG, tmp_path_factory.mktemp("straight"), progress=False)
    assert weights_sha256(resume(killed_run)) == weights_sha256(straight)


def test_a_saved_state_holding_nan_is_refused(killed_run):
    from safetensors.torch import load_file, save_file

    meta_path = killed_run / "state" / "state.json"
    meta = json.loads(meta_path.read_text())
    del meta["files"]  # an old state: no digests to catch the change
    meta_path.write_text(json.dumps(meta))
    weights = load_file(str(killed_run / "state" / "model.safetensors"))
    weights["unembed.W_U"][0, 0] = float("nan")
    save_file(weights, str(killed_run / "state" / "model.safetensors"))
    with pytest.raises(WorkbenchError, match=r"holds nan/inf \(unembed\.W_U\)"):
        resume(killed_run)


def test_damaged_run_marker_and_metric_log(killed_run):
    (killed_run / "run.json").write_bytes(b"\xff{")
    with pytest.raises(WorkbenchError, match=r"run\.json is unreadable.*--no-resume"):
        resume(killed_run)
    train_dpo(tiny_model(), None, pairs(16), CFG, killed_run, progress=False, stop_after=4, resume=False)
    log = killed_run / "metrics.jsonl"
    log.write_text(log.read_text() + '{"step": 4, "lo')  # the line being written when the run was killed
    resume(killed_run)
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == list(range(6))
    log.write_text("not json\n" + log.read_text())
    with pytest.raises(WorkbenchError, match=r"metrics\.jsonl is damaged at line 1"):
        MetricLog(log, resume_step=4)
