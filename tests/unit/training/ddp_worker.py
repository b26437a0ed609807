"""Train every method a few steps on the tiny model; run plainly (1 process) or under ``torchrun`` (N).

``python -m tests.unit.training.ddp_worker OUT`` writes ``OUT/<method>/model`` (rank 0) and, from every rank,
``OUT/<method>/rank<r>.json`` with the hash of that rank's final weights, so a test can check that the ranks
stayed in step and that N processes took the same steps as one.
"""

import json
import sys
from pathlib import Path

from tests.helpers import tiny_model
from tests.unit.training.test_ppo import PROMPTS, sevens
from training.common import distributed
from training.dpo import DPOConfig, train_dpo
from training.ppo import PPOConfig, train_ppo
from training.reward import RewardConfig, train_reward
from training.sft import SFTConfig, train_sft
from workbench.models.checkpoint import weights_sha256

# Completions of one length (two digits), so a per-rank token mean averages to the global one exactly.
SFT_ROWS = [{"prompt": f"{a}+{b}=", "completion": str(a + b)} for a in range(5, 10) for b in range(5, 10)]
PAIRS = [{"prompt": f"{a}+{b}=", "chosen": str(a + b), "rejected": str(a + b + 1)}
         for a in range(1, 40, 3) for b in range(2, 30, 5)]


def run(out: Path) -> None:
    ddp = distributed()
    trained = {
        "sft": lambda d: train_sft(tiny_model(), SFT_ROWS, SFTConfig(lr=1e-3, steps=3, batch_size=8, threads=1), d,
                                   progress=False),
        "reward": lambda d: train_reward(tiny_model(), PAIRS, RewardConfig(lr=1e-3, steps=3, batch_size=8), d,
                                         progress=False),
        "dpo": lambda d: train_dpo(tiny_model(), None, PAIRS, DPOConfig(lr=1e-3, steps=3, batch_size=8, rpo_alpha=0.5),
                                   d, progress=False),
        "ppo": lambda d: train_ppo(tiny_model(), None, sevens, PROMPTS,
                                   PPOConfig(lr=3e-3, steps=2, batch_size=8, minibatch_size=4, ppo_epochs=2,
                                             max_new_tokens=4, num_threads=1), d, progress=False),
    }
    for method, train in trained.items():
        model = train(out / method)
        (out / method / f"rank{ddp.rank}.json").write_text(json.dumps({"weights": weights_sha256(model)}))


if __name__ == "__main__":
    run(Path(sys.argv[1]))
