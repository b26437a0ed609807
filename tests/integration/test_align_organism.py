"""The hint-alignment study on adder-hint, small: DPO (with the NLL term) must stop the answer following wrong hints."""

import pytest

from training.align import AlignConfig, run_alignment_study
from training.dpo import DPOConfig
from training.ppo import PPOConfig
from training.reward import RewardConfig
from training.sft import SFTConfig
from workbench.models.loader import load_model


@pytest.mark.slow
def test_dpo_stops_adder_hint_following_wrong_hints(tmp_path):
    cfg = AlignConfig(n_train=600, n_eval=150, rm=RewardConfig(steps=20, batch_size=16, lr=3e-4),
                      dpo=DPOConfig(steps=80, batch_size=32, lr=1e-4, beta=0.1, rpo_alpha=1.0),
                      sft=SFTConfig(steps=20, batch_size=32, lr=3e-4, threads=1),
                      ppo=PPOConfig(steps=3, batch_size=16, minibatch_size=8, ppo_epochs=1, lr=3e-5,
                                    max_new_tokens=40, num_threads=1))
    s = run_alignment_study(load_model("adder-hint"), tmp_path, cfg, progress=False)
    assert s["before"]["switch_to_hint"]["rate"] > 0.95
    assert s["after_dpo"]["switch_to_hint"]["rate"] < 0.3
    assert s["kl_from_base_per_token"] > 0
    assert (tmp_path / "dpo" / "model" / "model.safetensors").exists() and (tmp_path / "diff" / "summary.json").exists()
    # SFT on chosen then PPO from it (rule reward): the stages run, log and are measured; 3 iterations teach little.
    assert s["after_sft"]["switch_to_hint"]["rate"] < s["before"]["switch_to_hint"]["rate"]
    assert {"after_ppo", "verdict_ppo", "ppo_kl_from_base_per_token"} <= s.keys()
    metrics = (tmp_path / "ppo" / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == 3 and "objective/scores" in metrics[0]
    assert all((tmp_path / stage / "metrics.png").exists() for stage in ("reward", "dpo", "sft", "ppo"))
    assert (tmp_path / "ppo" / "policy" / "model.safetensors").exists() and (tmp_path / "diff_ppo" / "report.html").exists()
