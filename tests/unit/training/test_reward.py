import json
import math

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import tiny_model
from training.common import encode
from training.reward import (
    RewardConfig,
    RewardModel,
    load_reward_model,
    reward_loss,
    save_reward_model,
    score,
    train_reward,
)
from workbench.errors import WorkbenchError
from workbench.models.checkpoint import weights_sha256
from workbench.models.loader import load_model


def pairs(n: int = 32, seed: int = 0) -> list[dict]:
    """Addition preference pairs: the right sum is chosen, the sum plus one rejected."""
    g = torch.Generator().manual_seed(seed)
    ab = torch.randint(0, 100, (n, 2), generator=g).tolist()
    return [{"prompt": f"{a}+{b}=", "chosen": str(a + b), "rejected": str(a + b + 1)} for a, b in ab]


def random_head(rm: RewardModel, seed: int = 1) -> RewardModel:
    torch.manual_seed(seed)
    torch.nn.init.normal_(rm.head.weight)
    return rm


def test_zero_head_gives_ln2_on_encoded_pairs():
    rm, rows = RewardModel(tiny_model()), pairs(8)
    chosen = rm(encode(rm.body, [r["prompt"] for r in rows], [r["chosen"] for r in rows]))
    rejected = rm(encode(rm.body, [r["prompt"] for r in rows], [r["rejected"] for r in rows]))
    loss, metrics = reward_loss(chosen, rejected)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-7)
    assert metrics["accuracy"].item() == 0 and metrics["margin"].item() == 0  # ties are not wins
    loss.backward()
    assert rm.head.weight.grad.abs().sum() > 0  # the head can still learn from the tie


def test_loss_and_metrics_on_hand_built_rewards():
    chosen, rejected = torch.tensor([2.0, 0.0, 1.0]), torch.tensor([0.0, 1.0, 1.0])
    loss, metrics = reward_loss(chosen, rejected)
    expected = (math.log1p(math.exp(-2)) + math.log1p(math.exp(1)) + math.log(2)) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert metrics["accuracy"].item() == pytest.approx(1 / 3) and metrics["margin"].item() == pytest.approx(1 / 3)
    loss_m, metrics_m = reward_loss(chosen, rejected, margin=torch.tensor([1.0, 0.0, 0.0]))
    expected_m = (math.log1p(math.exp(-1)) + math.log1p(math.exp(1)) + math.log(2)) / 3
    assert loss_m.item() == pytest.approx(expected_m, rel=1e-6)
    assert {k: v.item() for k, v in metrics_m.items()} == {k: v.item() for k, v in metrics.items()}  # loss only


def test_score_is_the_head_on_ln_final_at_the_last_completion_token():
    rm = random_head(RewardModel(tiny_model()))
    batch = encode(rm.body, ["12+34=", "5+6="], ["46", "11"])
    assert batch.tokens[1, -1] == rm.body.tokenizer.pad_token_id  # the second row is padded
    with torch.no_grad():
        scores = rm(batch)
        _, cache = rm.body.run_with_cache(batch.tokens, names_filter="ln_final.hook_normalized")
        values = rm.head(cache["ln_final.hook_normalized"])[..., 0]
    eos = rm.body.tokenizer.eos_token_id
    last = [row.tolist().index(eos) for row in batch.tokens]
    assert torch.allclose(scores, values[[0, 1], last], atol=1e-6)
    with torch.no_grad():
        repadded = batch.tokens.clone()
        repadded[1, last[1] + 1:] = rm.body.tokenizer.convert_tokens_to_ids("7")
        assert torch.equal(rm(type(batch)(repadded, batch.completion_mask)), scores)
        changed_eos = batch.tokens.clone()
        changed_eos[1, last[1]] = rm.body.tokenizer.convert_tokens_to_ids("7")
        assert rm(type(batch)(changed_eos, batch.completion_mask))[1] != scores[1]
    alone = score(rm, ["5+6="], ["11"])
    assert torch.allclose(alone, scores[1:], atol=1e-6)


def test_save_and_load_round_trip(tmp_path):
    rm = random_head(RewardModel(tiny_model(seed=2)))
    save_reward_model(rm, tmp_path / "rm")
    again = load_reward_model(tmp_path / "rm")
    args = (["12+34=", "5+6="], ["46", "12"])
    assert torch.equal(score(rm, *args), score(again, *args))
    assert weights_sha256(load_model(str(tmp_path / "rm" / "body"))) == weights_sha256(rm.body)
    with pytest.raises(WorkbenchError, match="not a reward model"):
        load_reward_model(tmp_path / "rm" / "body")


def test_training_ranks_the_chosen_completions_first(tmp_path):
    cfg = RewardConfig(lr=3e-3, steps=40, batch_size=16, checkpoint_every=20)
    rm = train_reward(tiny_model(), pairs(), cfg, tmp_path, progress=False)
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == list(range(40)) and {"loss", "accuracy", "margin"} <= lines[0].keys()
    assert lines[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert sum(x["loss"] for x in lines[-5:]) / 5 < 0.5 * math.log(2)
    rows = pairs()
    args = [r["prompt"] for r in rows], [r["chosen"] for r in rows], [r["rejected"] for r in rows]
    assert (score(rm, args[0], args[1]) > score(rm, args[0], args[2])).float().mean() >= 0.9
    assert torch.equal(score(load_reward_model(tmp_path / "model"), args[0], args[1]), score(rm, args[0], args[1]))


def test_margin_column_enters_the_loss(tmp_path):
    rows = [{**r, "gap": 5.0} for r in pairs(8)]
    cfg = RewardConfig(steps=1, batch_size=8, margin_column="gap")
    train_reward(tiny_model(), rows, cfg, tmp_path, progress=False)
    first = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert first["loss"] == pytest.approx(-F.logsigmoid(torch.tensor(-5.0)).item(), rel=1e-6)
    with pytest.raises(WorkbenchError, match="gap"):
        train_reward(tiny_model(), pairs(8), cfg, tmp_path / "bad", progress=False)


def test_killed_run_resumes_to_the_same_weights(tmp_path):
    cfg = RewardConfig(lr=1e-3, steps=8, batch_size=8, checkpoint_every=4)
    straight = train_reward(tiny_model(), pairs(), cfg, tmp_path / "a", progress=False)
    train_reward(tiny_model(), pairs(), cfg, tmp_path / "b", progress=False, stop_after=6)  # killed after step 6
    resumed = train_reward(tiny_model(), pairs(), cfg, tmp_path / "b", progress=False)  # resumes from step 4
    assert weights_sha256(resumed) == weights_sha256(straight)
    steps = [json.loads(x)["step"] for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(8))


def test_missing_rejected_column_names_the_columns(tmp_path):
    rows = [{"prompt": "1+1=", "chosen": "2"}]
    with pytest.raises(WorkbenchError, match=r"\['prompt', 'chosen', 'rejected'\]"):
        train_reward(tiny_model(), rows, RewardConfig(steps=1), tmp_path, progress=False)
