import copy
import json
import math

import pytest
import torch

from unittest import mock

from tests.helpers import tiny_model
from tests.unit.training.test_reward import pairs
from training import dpo as dpo_module
from training.common import (
    Batch, PackedPairs, encode, encode_pairs, pack_pairs, packs_pairs, pair_batch, pair_logprobs, sequence_logprob,
)
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


# Pairs whose sequences share more than the prompt (a common start of the completions), whose completions differ at
# their first token, one completion the start of the other, and prompts of different lengths.
PACKING_ROWS = [
    {"prompt": "36+59=", "chosen": " 6+9+0=15 3+5+1=09 ans 95", "rejected": " 6+9+0=15 3+5+1=09 ans 97"},
    {"prompt": "hint:12 1+2=", "chosen": "3", "rejected": "12"},
    {"prompt": "9+9=", "chosen": "18", "rejected": "18 18"},
    {"prompt": "478+256=", "chosen": "734 ok", "rejected": "734"},
    {"prompt": "", "chosen": "1+1=2", "rejected": "1+1=3"},
]


def test_packed_pairs_give_each_sequences_logprobs_and_gradients():
    model, rows = tiny_model(seed=3), PACKING_ROWS + pairs(6)
    pairs_ = encode_pairs(model, rows)
    assert packs_pairs(model)
    idx = torch.randperm(len(rows), generator=torch.Generator().manual_seed(0))
    batch = pair_batch(pairs_, pack_pairs(pairs_, model.tokenizer.pad_token_id), idx, model.cfg.n_ctx)
    assert isinstance(batch, PackedPairs)
    # The shared tokens run once: pair 0's sequences (BOS, 6 prompt, 25 completion tokens and EOS each) share 31
    # tokens, so its row holds 31 + 1 + 1 (each sequence's last token is only predicted, never an input).
    first = int((idx == 0).nonzero())
    assert batch.lengths[first].tolist() == [33, 33] and int(batch.width[first]) == 33
    assert (batch.width < batch.lengths.sum(1) - 2).all()  # every pair shares at least its BOS and prompt
    chosen, rejected = pair_logprobs(model, batch)
    ref_chosen, ref_rejected = logps(model, [rows[i] for i in idx])
    torch.testing.assert_close(chosen, ref_chosen, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rejected, ref_rejected, rtol=1e-5, atol=1e-5)
    assert int(batch.chosen_mask.sum()) == int(encode(model, [r["prompt"] for r in rows],
                                                      [r["chosen"] for r in rows]).completion_mask.sum())

    def grads(c, r):
        model.zero_grad()
        (c.sum() - 0.3 * r.sum()).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    packed_grads = grads(*pair_logprobs(model, batch))
    plain_grads = grads(*logps(model, [rows[i] for i in idx]))
    for name, g in plain_grads.items():
        if not name.endswith("b_K"):  # b_K's true gradient is 0 (softmax ignores a shift of every key): float noise
            torch.testing.assert_close(packed_grads[name], g, rtol=1e-4, atol=1e-5, msg=name)
    with torch.inference_mode():
        again = pair_logprobs(model, batch)
    assert torch.equal(again[0], chosen.detach()) and torch.equal(again[1], rejected.detach())


def test_pairs_that_do_not_fit_packed_go_as_chosen_and_rejected_rows():
    model = tiny_model()
    pairs_ = encode_pairs(model, PACKING_ROWS)
    packed = pack_pairs(pairs_, model.tokenizer.pad_token_id)
    idx = torch.arange(len(PACKING_ROWS))
    too_narrow = pair_batch(pairs_, packed, idx, n_ctx=int(packed.width.max()) - 1)  # a packed row would not fit
    assert isinstance(too_narrow, Batch)
    assert isinstance(pair_batch(pairs_, None, idx, model.cfg.n_ctx), Batch)
    chosen, rejected = pair_logprobs(model, too_narrow)
    ref_chosen, ref_rejected = logps(model, PACKING_ROWS)
    assert torch.equal(chosen, ref_chosen) and torch.equal(rejected, ref_rejected)


def test_training_on_packed_pairs_matches_chosen_and_rejected_rows(tmp_path):
    cfg = DPOConfig(beta=0.5, lr=3e-3, steps=6, batch_size=8, rpo_alpha=0.5)
    packed = train_dpo(tiny_model(), None, pairs(), cfg, tmp_path / "packed", progress=False)
    with mock.patch.object(dpo_module, "packs_pairs", lambda model: False):
        plain = train_dpo(tiny_model(), None, pairs(), cfg, tmp_path / "plain", progress=False)
    runs = [[json.loads(x) for x in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
            for d in ("packed", "plain")]
    for a, b in zip(*runs):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-5), k
    for (name, p), q in zip(packed.named_parameters(), plain.parameters()):
        if not name.endswith("b_K"):
            torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=name)
