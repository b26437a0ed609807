"""The sweep's bookkeeping on a planted activation stack, and the causal check's mechanics on a tiny model."""

import torch

from probes.causal import greedy_with_delta
from probes.sweep import ResidStack, best_site, matrix, probe_sweep
from probes.variables import task_variables
from tests.helpers import tiny_model
from workbench.generation import complete
from workbench.tasks.addition import sample_problems


def _planted_stack(problems):
    """3 layers x 4 positions x d 24; carry0 is written (one-hot) only at layer 2, position 3."""
    g = torch.Generator().manual_seed(0)
    acts = torch.randn(3, len(problems), 4, 24, generator=g)
    carry = torch.tensor([p.columns[0].carry_out for p in problems]).float()
    acts[2, :, 3, 0] += 4 * carry
    return ResidStack(acts, [f"h{i}" for i in range(3)], ["0_pre", "1_pre", "final_post"], ["<bos>", "a", "b", "="])


def test_sweep_finds_the_planted_site_and_controls_stay_low():
    ps = sample_problems(800, (2,), "all", 0)
    ps = [p for p in ps if len(p.columns) == 2]
    rows = probe_sweep(_planted_stack(ps), ps, ["carry0", "a0", "answer"])
    assert len(rows) == 3 * 3 * 4
    best = best_site(rows, "carry0")
    assert (best["layer"], best["position"], best["token"]) == ("final_post", 3, "=")
    assert best["score"] > 0.95 and best["selectivity"] > 0.3
    others = [r for r in rows if r["variable"] == "carry0" and (r["layer_index"], r["position"]) != (2, 3)]
    assert max(r["score"] for r in others) < best["majority"] + 0.1  # noise sites: at the majority baseline
    values, layers, positions = matrix(rows, "carry0", "score")
    assert values.shape == (3, 4) and values[2, 3] == best["score"] and layers[2] == "final_post"
    assert {r["metric"] for r in rows if r["variable"] == "answer"} == {"r2"}


def test_greedy_with_no_delta_equals_generation():
    model = tiny_model()
    prompts = ["12+34=", "56+78="]
    toks = torch.cat([model.to_tokens(p) for p in prompts])
    ours = greedy_with_delta(model, toks, "blocks.0.hook_resid_pre", 2, None, 6)
    ref = complete(model, prompts, max_new_tokens=6)
    assert ours == [p + c for p, c in zip(prompts, ref)]
    push = torch.randn(2, 32, generator=torch.Generator().manual_seed(0)) * 50  # not constant: LayerNorm removes a constant
    pushed = greedy_with_delta(model, toks, "blocks.0.hook_resid_pre", 5, push, 6)
    assert pushed != ours  # the push reaches the output


def test_task_variables_cover_every_column():
    names = [v.name for v in task_variables(sample_problems(10, (3,), "all", 0)[:1])]
    assert {"a2", "b2", "total2", "carry2", "ans3", "answer"} <= set(names)
