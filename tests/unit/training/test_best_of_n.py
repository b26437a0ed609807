import pytest
import torch

from tests.helpers import tiny_model
from training.best_of_n import best_of_n, rejection_sample, sample_n
from workbench.errors import WorkbenchError


def sevens(prompts, completions):
    return torch.tensor([c.count("7") / max(len(c), 1) for c in completions])


def test_best_of_n_keeps_the_top_scoring_sample():
    model = tiny_model()
    prompts = ["12+34=", "5+6="]
    samples = sample_n(model, prompts, 8, max_new_tokens=6, seed=1)
    best, scores = best_of_n(model, prompts, sevens, 8, max_new_tokens=6, seed=1)
    for group, b, s in zip(samples, best, scores):
        assert b in group and s == max(sevens(None, group)).item()
    # The kept sample scores at least the mean of its group.
    assert scores.mean() >= sevens(None, [c for g in samples for c in g]).mean()


def test_rejection_sampling_keeps_only_samples_above_threshold():
    model = tiny_model()
    rows = rejection_sample(model, ["12+34="], sevens, 16, threshold=0.2, max_new_tokens=6, seed=0)
    assert all(r["score"] >= 0.2 and set(r) == {"prompt", "completion", "score"} for r in rows)
    with pytest.raises(WorkbenchError, match="temperature"):
        sample_n(model, ["1+1="], 2, temperature=0)
