"""Patching recovers planted truth: in adder-cot-faithful the answer reads the written CoT step; on the organisms
the sweeps equal TransformerLens's per-site patching."""

import pytest
import torch
from transformer_lens import patching as tl_patching

from workbench.models.loader import load_model
from workbench.patching import (
    attribution_patching, correlation, head_by_pos_sweep, head_sweep, prediction_logit_diff, resid_sweep,
)
from workbench.tasks import formats
from workbench.tasks.addition import sample_problems
from workbench.tasks.pairs import make_pairs


def test_faithful_answer_flows_from_the_corrupted_step():
    model = load_model("adder-cot-faithful")
    problems = [p for p in sample_problems(200, (3,), "test", 5) if len(str(p.total)) == 3][:24]
    clean, corrupt, good, bad = [], [], [], []
    for p in problems:
        full = formats.cot(p).text
        c = formats.corrupted_cot(p, 0, "result", propagate=False)  # the ones step writes a wrong digit
        # Teacher-force up to the last answer digit (the ones digit); the metric is its logit difference.
        clean.append(model.to_tokens(full[:-1])[0])
        corrupt.append(model.to_tokens(c.text[:-1])[0])
        good.append(model.to_single_token(full[-1]))
        bad.append(model.to_single_token(c.text[-1]))
    clean, corrupt = torch.stack(clean), torch.stack(corrupt)
    good, bad = torch.tensor(good)[:, None], torch.tensor(bad)[:, None]

    def metric(logits):
        last = logits[:, -1]
        return (last.gather(1, good) - last.gather(1, bad)).mean()

    base = metric(model(corrupt)).item()
    effect = resid_sweep(model, clean, corrupt, metric) - base  # [layer, pos]
    # The written result digit of the ones step: the token right after "a+b= a0+b0+0=" and the carry digit.
    step_pos = len(model.to_str_tokens("123+456= 3+6+0=0"))  # BOS counted, so this is that token's index
    assert metric(model(clean)).item() > 5 > 0 > -5 > base  # the answer follows the written digit
    assert effect[0].argmax().item() == step_pos
    assert effect[0, step_pos] > 0.9 * (metric(model(clean)).item() - base)
    attr = attribution_patching(model, clean, corrupt, metric)
    assert correlation(attr, effect) > 0.7


@pytest.mark.parametrize("organism, pairs", [("adder-direct", "operand"), ("adder-cot-faithful", "cot-step")])
def test_organism_sweeps_equal_transformer_lens(organism, pairs):
    model = load_model(organism)
    clean_t, corrupt_t = make_pairs(pairs, 8, 3, seed=1)
    clean = torch.cat([model.to_tokens(t) for t in clean_t])
    corrupt = torch.cat([model.to_tokens(t) for t in corrupt_t])
    metric, clean, corrupt, _ = prediction_logit_diff(model, clean, corrupt)
    _, cache = model.run_with_cache(clean)
    for ours, theirs in ((resid_sweep, tl_patching.get_act_patch_resid_pre),
                         (head_sweep, tl_patching.get_act_patch_attn_head_out_all_pos),
                         (head_by_pos_sweep, tl_patching.get_act_patch_attn_head_out_by_pos)):
        expected = theirs(model, corrupt, cache, metric)
        assert torch.allclose(ours(model, clean, corrupt, metric), expected, atol=1e-5), ours.__name__
