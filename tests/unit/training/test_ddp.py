"""The trainers run unchanged under ``torchrun``: two CPU processes (gloo) stay in step and, where the maths allows,
take the same steps as one process with the whole batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.unit.training import ddp_worker
from workbench.models.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    one, two = tmp_path_factory.mktemp("one"), tmp_path_factory.mktemp("two")
    ddp_worker.run(one)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "tests.unit.training.ddp_worker", str(two)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return one, two


@pytest.mark.parametrize("method", ["sft", "reward", "dpo", "ppo"])
def test_both_ranks_end_with_the_same_weights(runs, method):
    _, two = runs
    hashes = [json.loads((two / method / f"rank{r}.json").read_text())["weights"] for r in (0, 1)]
    assert hashes[0] == hashes[1]
    assert (two / method / "metrics.jsonl").exists()


@pytest.mark.parametrize("method, model_dir", [("sft", "model"), ("reward", "model/body"), ("dpo", "model")])
def test_two_processes_take_the_steps_of_one(runs, method, model_dir):
    # Each rank holds half of every global batch and DDP averages the gradients: the same mean-loss gradient as
    # one process with the whole batch, up to the order of float sums.
    one, two = runs
    a, b = load_checkpoint(one / method / model_dir), load_checkpoint(two / method / model_dir)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        if name.endswith("b_K"):
            # Softmax ignores a shift shared by every key, so b_K's true gradient is 0: what reaches it is float
            # noise, which Adam's normalisation blows up to steps of size lr either way. Nothing to compare.
            continue
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=name)
    initial = ddp_worker.tiny_model().state_dict()
    moved = max((p - initial[k]).abs().max().item() for k, p in a.state_dict().items() if p.is_floating_point())
    assert moved > 1e-4  # the comparison is not between two untrained models


def test_logged_metrics_describe_the_global_batch(runs):
    rows = [[json.loads(line) for line in (d / "dpo" / "metrics.jsonl").read_text().splitlines()] for d in runs]
    assert len(rows[0]) == len(rows[1]) == 3  # one line per step, so the zip below compares every step
    for r1, r2 in zip(*rows):
        assert r1["step"] == r2["step"]
        assert r1["loss"] == pytest.approx(r2["loss"], rel=1e-4, abs=1e-6)
        assert r1["rewards/accuracies"] == pytest.approx(r2["rewards/accuracies"], abs=1e-6)
