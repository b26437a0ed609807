"""The hint-alignment study on adder-hint, small: DPO (with the NLL term) must stop the answer following wrong hints."""

from training.align import AlignConfig, run_alignment_study
from training.dpo import DPOConfig
from training.reward import RewardConfig
from workbench.models.loader import load_model


def test_dpo_stops_adder_hint_following_wrong_hints(tmp_path):
    cfg = AlignConfig(n_train=600, n_eval=150, rm=RewardConfig(steps=20, batch_size=16, lr=3e-4),
                      dpo=DPOConfig(steps=80, batch_size=32, lr=1e-4, beta=0.1, rpo_alpha=1.0))
    s = run_alignment_study(load_model("adder-hint"), tmp_path, cfg, progress=False)
    assert s["before"]["switch_to_hint"]["rate"] > 0.95
    assert s["after_dpo"]["switch_to_hint"]["rate"] < 0.3
    assert s["kl_from_base_per_token"] > 0
    assert (tmp_path / "dpo" / "model" / "model.safetensors").exists() and (tmp_path / "diff" / "summary.json").exists()
