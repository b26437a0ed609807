import copy
import json
import math

import pytest
import torch

from tests.helpers import tiny_model
from tests.unit.training.test_reward import pairs
from training.common import encode, sequence_logprob
from training.dpo import LOSSES, DPOConfig, dpo_loss, ipo_loss, train_dpo
from workbench.errors import WorkbenchError
from workbench.models.checkpoint import weights_sha256
from workbench.models.loader import load_model

TRL_METRICS = {"rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
               "logps/rejected"}


def logps(model, rows) -> tuple[torch.Tensor, torch.Tensor]:
    prompts = [r["prompt"] for r in rows]
    chosen = sequence_logprob(model, encode(model, prompts, [r["chosen"] for r in rows]))
    rejected = sequence_logprob(model, encode(model, prompts, [r["rejected"] for r in rows]))
    return chosen, rejected


@pytest.mark.parametrize("loss_fn", [dpo_loss, ipo_loss])
def test_trl_metric_names_and_values(loss_fn):
    pc, pr, rc, rr = torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -1.0]), torch.tensor([-2.0, -2.0]), torch.tensor([-2.0, -2.0])
    _, metrics = loss_fn(pc, pr, rc, rr, beta=0.5)
    assert set(metrics) == TRL_METRICS
    values = {k: v.item() for k, v in metrics.items()}
    # implicit rewards beta * (pi - ref): chosen [0.5, 0], rejected [-0.5, 0.5]
    assert values == pytest.approx({"rewards/chosen": 0.25, "rewards/rejected": 0.0, "rewards/margins": 0.25,
                                    "rewards/accuracies": 0.5, "logps/chosen": -1.5, "logps/rejected": -2.0})


def test_dpo_is_ln2_when_policy_equals_reference():
    c, r = torch.tensor([-1.0, -7.5, -0.2]), torch.tensor([-4.0, -0.1, -3.3])
    loss, metrics = dpo_loss(c, r, c.clone(), r.clone(), beta=0.1)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-7)
    assert metrics["rewards/margins"].item() == 0 and metrics["rewards/accuracies"].item() == 0


def test_dpo_and_ipo_values_on_hand_built_numbers():
    # h = (pi_c - ref_c) - (pi_r - ref_r) = [2, -1]
    pc, pr, rc, rr = torch.tensor([-1.0, -3.0]), torch.tensor([-3.0, -1.0]), torch.tensor([-2.0, -2.0]), torch.tensor([-2.0, -1.0])
    beta = 0.25
    dpo, _ = dpo_loss(pc, pr, rc, rr, beta)
    assert dpo.item() == pytest.approx((math.log1p(math.exp(-0.5)) + math.log1p(math.exp(0.25))) / 2, rel=1e-6)
    ipo, _ = ipo_loss(pc, pr, rc, rr, beta)
    assert ipo.item() == pytest.approx(((2 - 2) ** 2 + (-1 - 2) ** 2) / 2, rel=1e-6)  # target 1 / (2 beta) = 2


def test_dpo_is_ln2_on_a_model_and_its_copy():
    policy, rows = tiny_model(), pairs(8)
    reference = copy.deepcopy(policy)
    loss, _ = dpo_loss(*logps(policy, rows), *logps(reference, rows), beta=0.1)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)


def test_a_gradient_step_raises_the_chosen_margin():
    policy, rows = tiny_model(), pairs(8)
    reference = copy.deepcopy(policy).requires_grad_(False)
    ref_c, ref_r = logps(reference, rows)
    loss, _ = dpo_loss(*logps(policy, rows), ref_c, ref_r, beta=0.1)
    loss.backward()
    with torch.no_grad():
        for p in policy.parameters():
            p -= 0.5 * p.grad
        pc, pr = logps(policy, rows)
        h = (pc - ref_c) - (pr - ref_r)
        assert (h > 0).all()
        assert dpo_loss(pc, pr, ref_c, ref_r, beta=0.1)[0] < math.log(2)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_short_run_lowers_the_loss_and_logs(tmp_path, name):
    cfg = DPOConfig(beta=0.5, loss_fn=LOSSES[name], lr=3e-3, steps=30, batch_size=16, checkpoint_every=10)
    policy = train_dpo(tiny_model(), None, pairs(), cfg, tmp_path, progress=False)
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == list(range(30)) and {"loss"} | TRL_METRICS <= lines[0].keys()
    first, last = lines[0]["loss"], sum(x["loss"] for x in lines[-5:]) / 5
    assert last < 0.5 * first
    assert lines[-1]["rewards/margins"] > 0
    saved = load_model(str(tmp_path / "model"))
    assert weights_sha256(saved) == weights_sha256(policy)
    assert json.loads((tmp_path / "run.json").read_text())["config"]["loss_fn"] == f"training.dpo.{name}_loss"


def test_reference_is_frozen_and_untouched(tmp_path):
    reference = tiny_model(seed=1)
    before = weights_sha256(reference)
    train_dpo(tiny_model(), reference, pairs(), DPOConfig(lr=1e-3, steps=3, batch_size=8), tmp_path, progress=False)
    assert weights_sha256(reference) == before


def test_killed_run_resumes_to_the_same_weights(tmp_path):
    cfg = DPOConfig(lr=1e-3, steps=8, batch_size=8, checkpoint_every=4)
    straight = train_dpo(tiny_model(), None, pairs(), cfg, tmp_path / "a", progress=False)
    train_dpo(tiny_model(), None, pairs(), cfg, tmp_path / "b", progress=False, stop_after=6)  # killed after step 6
    assert not (tmp_path / "b" / "model").exists()
    resumed = train_dpo(tiny_model(), None, pairs(), cfg, tmp_path / "b", progress=False)  # resumes from step 4
    assert weights_sha256(resumed) == weights_sha256(straight)
    assert weights_sha256(straight) != weights_sha256(tiny_model())
    with pytest.raises(WorkbenchError, match="different run"):
        train_dpo(tiny_model(), None, pairs(), DPOConfig(lr=1e-3, steps=9, batch_size=8), tmp_path / "b",
                  progress=False)


def test_missing_rejected_column_names_the_columns(tmp_path):
    rows = [{"prompt": "1+1=", "chosen": "2"}]
    with pytest.raises(WorkbenchError, match=r"\['prompt', 'chosen', 'rejected'\]"):
        train_dpo(tiny_model(), None, rows, DPOConfig(steps=1), tmp_path, progress=False)
