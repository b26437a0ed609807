"""The tuned lens reads adder-cot-faithful's intermediate layers better than the logit lens, on held-out CoTs."""

import pytest
import torch

from workbench.cache_store import CacheReader, write_cache
from workbench.models.loader import load_model
from workbench.tasks import formats
from workbench.tasks.addition import sample_problems
from workbench.tuned_lens import lens_hooks, lens_kl, train_tuned_lens


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Small tensors: OpenMP's fan-out costs more than the work, many times more on a busy machine.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_tuned_lens_beats_the_logit_lens_at_every_layer(tmp_path):
    model = load_model("adder-cot-faithful")
    # 3-digit operands with 3-digit sums: every CoT text is 44 tokens, so every position can be cached.
    texts = [formats.cot(p).text for p in sample_problems(2500, (3,), "test", 0) if p.total < 1000]
    cache = CacheReader(write_cache(model, "adder-cot-faithful", texts, lens_hooks(model), tmp_path / "cache",
                                    positions=None, progress=False))
    lens, report = train_tuned_lens(model, cache, steps=100, lr=1e-2, batch_size=256, progress=False)
    assert len(texts) > 900 and [r["layer"] for r in report] == list(range(model.cfg.n_layers))
    for r in report:  # measured on the held-out last 10% of the texts
        assert r["kl_tuned_lens"] < 0.5 * r["kl_logit_lens"], r
    # And on CoTs of problems from another seed (none of them cached).
    other = model.to_tokens([formats.cot(p).text for p in sample_problems(300, (3,), "test", 1) if p.total < 1000])
    assert (lens_kl(model, lens, other) < 0.5 * lens_kl(model, None, other)).all()
