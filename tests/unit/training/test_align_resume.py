"""The alignment study resumes stage by stage after a kill, to the same summary, and refuses another config in
the same output directory. A tiny random model and a few steps per stage: the numbers mean nothing, the path is
the real one."""

import dataclasses
import json

import pytest

import training.align as A
from workbench.resume import WORK_DIR
from tests.helpers import TINY_ARCH, tiny_model
from training.align import AlignConfig, run_alignment_study
from training.dpo import DPOConfig
from training.ppo import PPOConfig
from training.reward import RewardConfig
from training.sft import SFTConfig
from workbench.errors import WorkbenchError

CFG = AlignConfig(n_train=64, n_eval=24, rm=RewardConfig(steps=2, batch_size=8, lr=3e-4),
                  dpo=DPOConfig(steps=2, batch_size=8, lr=1e-4, beta=0.1, rpo_alpha=1.0),
                  sft=SFTConfig(steps=2, batch_size=8, lr=3e-4, threads=1),
                  ppo=PPOConfig(steps=2, batch_size=8, minibatch_size=4, ppo_epochs=1, lr=3e-5, max_new_tokens=16,
                                num_threads=1, checkpoint_every=1))


class Killed(Exception):
    """Stands in for a kill part way through the study."""


def _base():
    return tiny_model(arch=dataclasses.replace(TINY_ARCH, n_ctx=128))


def _count_behaviour(monkeypatch):
    calls = []
    real = A.behaviour

    def counted(model, n, seed):
        calls.append(seed)
        return real(model, n, seed)

    monkeypatch.setattr(A, "behaviour", counted)
    return calls


def test_a_killed_study_resumes_to_the_same_summary(tmp_path, monkeypatch):
    whole = run_alignment_study(_base(), tmp_path / "whole", CFG, progress=False)

    real_ppo = A.train_ppo
    monkeypatch.setattr(A, "train_ppo", lambda *a, **k: (_ for _ in ()).throw(Killed()))
    with pytest.raises(Killed):  # killed once the reward model, DPO, SFT and their measurements are done
        run_alignment_study(_base(), tmp_path / "cut", CFG, progress=False)
    cut = tmp_path / "cut"
    assert not (cut / "summary.json").exists()
    assert {p.stem for p in (cut / WORK_DIR).glob("*.json")} == {
        "key", "reward_model_eval", "before", "after_dpo", "diff_dpo", "after_sft"}

    monkeypatch.setattr(A, "train_ppo", real_ppo)
    calls = _count_behaviour(monkeypatch)
    diffs = []
    real_diff = A.diff_report
    monkeypatch.setattr(A, "diff_report", lambda *a, **k: (diffs.append(a[3]), real_diff(*a, **k))[1])
    resumed = run_alignment_study(_base(), cut, CFG, progress=False)
    assert len(calls) == 1 and [p.name for p in diffs] == ["diff_ppo"]  # only PPO's stages ran again
    assert resumed == whole
    assert json.loads((cut / "summary.json").read_text()) == json.loads((tmp_path / "whole" / "summary.json").read_text())

    # A finished study rerun measures nothing again and writes the same summary.
    text = (cut / "summary.json").read_text()
    calls.clear()
    diffs.clear()
    assert run_alignment_study(_base(), cut, CFG, progress=False) == whole
    assert calls == [] and diffs == [] and (cut / "summary.json").read_text() == text


def test_another_configuration_or_base_in_the_same_out_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(A, "train_reward", lambda *a, **k: (_ for _ in ()).throw(Killed()))
    with pytest.raises(Killed):
        run_alignment_study(_base(), tmp_path, CFG, progress=False)
    for other, what in ((dataclasses.replace(CFG, seed=1), "seed"),
                        (dataclasses.replace(CFG, dpo=dataclasses.replace(CFG.dpo, steps=3)), "dpo.steps"),
                        (dataclasses.replace(CFG, ppo=None), "ppo")):
        with pytest.raises(WorkbenchError, match=f"another run.*{what}"):
            run_alignment_study(_base(), tmp_path, other, progress=False)
    with pytest.raises(WorkbenchError, match="base_weights_sha256"):
        run_alignment_study(tiny_model(seed=1, arch=dataclasses.replace(TINY_ARCH, n_ctx=128)), tmp_path, CFG,
                            progress=False)
