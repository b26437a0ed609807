import copy
import json
import math

import pytest
import torch

from tests.helpers import tiny_model
from training.ppo import (
    PolicyWithValue, PPOConfig, adaptive_kl_coef, entropy, gae, per_token_rewards, policy_loss, ppo_update, rollout,
    train_ppo, value_loss, whiten,
)
from workbench.errors import WorkbenchError
from workbench.models.checkpoint import load_checkpoint, weights_sha256

PROMPTS = ["1+2=", "36+59=", "4+4=", "478+256="]


def sevens(prompts, completions):
    """Toy reward: the fraction of the completion's characters that are '7'."""
    return torch.tensor([c.count("7") / max(len(c), 1) for c in completions])


def small_cfg(**kw) -> PPOConfig:
    base = {"lr": 3e-3, "steps": 4, "batch_size": 8, "minibatch_size": 4, "ppo_epochs": 2, "max_new_tokens": 4,
            "missing_eos_penalty": 0.0, "checkpoint_every": 2, "num_threads": 1}
    return PPOConfig(**{**base, **kw})


def spans_mask(batch: int, pos: int, gen: torch.Generator) -> torch.Tensor:
    """A prompt, then a completion span, then padding, in each row."""
    mask = torch.zeros(batch, pos, dtype=torch.bool)
    for b in range(batch):
        start = int(torch.randint(1, pos // 2, (1,), generator=gen))
        end = int(torch.randint(start + 1, pos + 1, (1,), generator=gen))
        mask[b, start:end] = True
    return mask


def test_gae_matches_a_slow_reference_loop():
    g = torch.Generator().manual_seed(0)
    rewards, values = torch.randn(6, 12, generator=g), torch.randn(6, 12, generator=g)
    mask = spans_mask(6, 12, g)
    gamma, lam = 0.9, 0.8
    advantages, returns = gae(rewards, values, mask, gamma, lam)
    for b in range(6):
        pos = mask[b].nonzero().flatten().tolist()
        r, v = rewards[b, pos].tolist(), values[b, pos].tolist() + [0.0]  # V = 0 after the episode ends
        deltas = [r[t] + gamma * v[t + 1] - v[t] for t in range(len(r))]
        for k, t in enumerate(pos):
            expected = sum((gamma * lam) ** (j - k) * deltas[j] for j in range(k, len(r)))
            assert advantages[b, t].item() == pytest.approx(expected, abs=1e-5)
            assert returns[b, t].item() == pytest.approx(expected + v[k], abs=1e-5)
    assert (advantages[~mask] == 0).all() and (returns[~mask] == 0).all()


def test_per_token_rewards_put_the_score_at_the_last_completion_token():
    logprobs = torch.tensor([[0.0, -1.0, -2.0, -3.0, 0.0], [0.0, -0.5, -0.5, 0.0, 0.0]])
    ref = torch.tensor([[0.0, -1.5, -1.0, -3.5, -9.0], [0.0, -1.0, -2.0, -7.0, -9.0]])
    mask = torch.tensor([[False, True, True, True, False], [False, True, True, False, False]])
    rewards, kl = per_token_rewards(torch.tensor([10.0, 20.0]), logprobs, ref, mask, kl_coef=0.1)
    assert torch.allclose(kl, torch.tensor([[0, 0.5, -1.0, 0.5, 0], [0, 0.5, 1.5, 0, 0]]))
    assert torch.allclose(rewards, torch.tensor([[0, -0.05, 0.1, 10 - 0.05, 0], [0, -0.05, 20 - 0.15, 0, 0]]))


def test_whiten_is_mean_zero_unit_variance_over_the_mask():
    g = torch.Generator().manual_seed(1)
    x, mask = 3 + 5 * torch.randn(4, 10, generator=g), spans_mask(4, 10, g)
    w = whiten(x, mask)
    assert w[mask].mean().item() == pytest.approx(0, abs=1e-5)
    assert w[mask].std().item() == pytest.approx(1, abs=1e-4)  # unbiased, as TRL
    assert (w[~mask] == 0).all()


def test_policy_loss_clips_only_where_the_ratio_leaves_the_trust_region():
    # Columns: (A>0, r=1.5) clipped to 1.2; (A<0, r=1.5) unclipped; (A>0, r=0.5) unclipped; (A<0, r=0.5) clipped
    # to 0.8; a masked position with wild values that must not count.
    ratio = torch.tensor([[1.5, 1.5, 0.5, 0.5, 100.0]])
    adv = torch.tensor([[1.0, -1.0, 1.0, -1.0, 50.0]])
    mask = torch.tensor([[True, True, True, True, False]])
    old = torch.full_like(ratio, -2.0)
    loss, m = policy_loss(old + ratio.log(), old, adv, mask, cliprange=0.2)
    assert loss.item() == pytest.approx((-1.2 + 1.5 - 0.5 + 0.8) / 4)
    assert m["policy/clipfrac_avg"].item() == pytest.approx(0.5)
    assert m["policy/approxkl_avg"].item() == pytest.approx(0.5 * (2 * math.log(1.5) ** 2 + 2 * math.log(0.5) ** 2) / 4)
    # At ratio 1 the surrogate is -mean(A), nothing is clipped and the KL estimate is 0.
    loss, m = policy_loss(old, old, adv, mask, cliprange=0.2)
    assert loss.item() == pytest.approx(0.0) and m["policy/clipfrac_avg"] == 0 and m["policy/approxkl_avg"] == 0


def test_value_loss_takes_the_larger_of_clipped_and_unclipped():
    values = torch.tensor([[0.5, 0.1, -0.5, 7.0]])
    old, returns = torch.zeros_like(values), torch.ones_like(values)
    mask = torch.tensor([[True, True, True, False]])
    loss, m = value_loss(values, old, returns, mask, cliprange_value=0.2)
    # 0.5 -> clipped to 0.2: max(0.25, 0.64); 0.1 inside the clip: 0.81; -0.5 -> -0.2: max(2.25, 1.44).
    assert loss.item() == pytest.approx(0.5 * (0.64 + 0.81 + 2.25) / 3)
    assert m["val/clipfrac_avg"].item() == pytest.approx(1 / 3)


def test_entropy_of_uniform_and_peaked_distributions():
    logits = torch.zeros(1, 3, 10)
    logits[0, 1, 4] = 100.0
    h = entropy(logits, torch.tensor([[True, True, False]]))
    assert h[0, 0].item() == pytest.approx(math.log(10)) and h[0, 1].item() == pytest.approx(0, abs=1e-6)
    assert h[0, 2] == 0


def test_adaptive_kl_moves_beta_toward_the_target_by_at_most_20_percent_per_horizon():
    assert adaptive_kl_coef(0.1, kl=12.0, target=6.0, n_sequences=100, horizon=100) == pytest.approx(0.12)
    assert adaptive_kl_coef(0.1, kl=5.4, target=6.0, n_sequences=50, horizon=100) == pytest.approx(0.1 * (1 - 0.05))


def test_value_head_reads_ln_final_and_leaves_the_logits_alone():
    policy = tiny_model(seed=3)
    model = PolicyWithValue(policy)
    torch.nn.init.normal_(model.value_head.weight)
    tokens = policy.to_tokens(["12+34=46", "5+5=10.."])
    logits, values = model(tokens)
    expected_logits, cache = policy.run_with_cache(tokens, names_filter="ln_final.hook_normalized")
    assert torch.equal(logits, expected_logits)
    assert torch.allclose(values, model.value_head(cache["ln_final.hook_normalized"])[..., 0])


def test_first_minibatch_has_ratio_one_and_zero_kl_to_the_reference():
    cfg = small_cfg(ppo_epochs=1, kl_coef=0.1)
    model = PolicyWithValue(tiny_model(seed=1))
    reference = copy.deepcopy(model.policy)
    torch.manual_seed(0)

    def digits(prompts, completions):
        return torch.tensor([float(sum(ch.isdigit() for ch in c)) for c in completions])

    ro, metrics = rollout(model, reference, digits, PROMPTS * 2, cfg, cfg.kl_coef)
    assert ro.scores.std() > 0  # advantages that are not all zero, so the first step moves the policy
    assert metrics["objective/kl"] == 0  # the reference is a copy of the policy
    assert metrics["objective/rlhf_reward"] == pytest.approx(metrics["objective/scores"])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    updates = ppo_update(model, opt, ro, cfg, torch.Generator().manual_seed(0))
    assert len(updates) == 2
    assert updates[0]["policy/approxkl_avg"] < 1e-12 and updates[0]["policy/clipfrac_avg"] == 0
    assert updates[1]["policy/approxkl_avg"] > 1e-6  # after one step the policy has moved: the metric is live


def test_missing_eos_is_penalised():
    policy = tiny_model(seed=2)
    eos = policy.tokenizer.eos_token_id
    with torch.no_grad():
        policy.unembed.b_U[eos] += 3.0  # EOS now likely enough that some completions end and some do not
    cfg = small_cfg(max_new_tokens=3, missing_eos_penalty=1.5)
    torch.manual_seed(0)
    ro, _ = rollout(PolicyWithValue(policy), copy.deepcopy(policy), lambda p, c: torch.full((len(c),), 0.25),
                    PROMPTS * 4, cfg, cfg.kl_coef)
    last = (ro.batch.completion_mask.cumsum(-1) * ro.batch.completion_mask).argmax(-1)
    ended = ro.batch.tokens[torch.arange(len(last)), last] == eos
    assert 0 < ended.sum() < len(ended)
    assert torch.equal(ro.scores, torch.where(ended, 0.25, 0.25 - 1.5))
    assert (ro.batch.completion_mask.sum(-1)[~ended] == 3).all()  # no EOS: all max_new_tokens were sampled


def test_reward_rises_on_a_toy_reward(tmp_path):
    cfg = small_cfg(steps=20, batch_size=32, minibatch_size=8, kl_coef=0.05, checkpoint_every=100)
    policy = train_ppo(tiny_model(seed=0), None, sevens, PROMPTS, cfg, tmp_path, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(20))
    assert rows[0]["objective/kl"] == 0 and rows[0]["policy/approxkl_avg"] > 0
    first, last = (sum(r["objective/scores"] for r in part) / 5 for part in (rows[:5], rows[-5:]))
    # Chance is about 1/48 per character; over 12 seed pairs the last five averaged 0.63-0.94, up 0.58-0.71.
    assert last > 0.5 and last > first + 0.4, (first, last)
    assert rows[-1]["objective/kl"] > 0  # the policy has left the reference
    assert weights_sha256(load_checkpoint(tmp_path / "policy")) == weights_sha256(policy)


class Killed(Exception):
    pass


def test_resume_after_a_kill_is_bit_identical(tmp_path):
    cfg = small_cfg(steps=6, checkpoint_every=2, kl_coef=0.05, adaptive_kl=True, target_kl=0.5, horizon=16)
    whole = train_ppo(tiny_model(seed=0), None, sevens, PROMPTS, cfg, tmp_path / "whole", progress=False)

    calls = []

    def dies_in_iteration_3(prompts, completions):
        calls.append(1)
        if len(calls) == 4:
            raise Killed
        return sevens(prompts, completions)

    with pytest.raises(Killed):
        train_ppo(tiny_model(seed=0), None, dies_in_iteration_3, PROMPTS, cfg, tmp_path / "split", progress=False)
    assert json.loads((tmp_path / "split" / "state" / "state.json").read_text())["step"] == 2
    calls.clear()
    resumed = train_ppo(tiny_model(seed=0), None, lambda p, c: calls.append(1) or sevens(p, c), PROMPTS, cfg,
                        tmp_path / "split", progress=False)
    assert len(calls) == 4  # iterations 2..5 only: it resumed rather than starting over
    assert weights_sha256(resumed) == weights_sha256(whole)
    assert (tmp_path / "split" / "metrics.jsonl").read_text() == (tmp_path / "whole" / "metrics.jsonl").read_text()

    with pytest.raises(WorkbenchError, match="different run"):
        train_ppo(tiny_model(seed=0), None, sevens, PROMPTS, small_cfg(lr=1e-3), tmp_path / "split", progress=False)
