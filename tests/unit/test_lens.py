import pytest
import torch

from tests.helpers import tiny_model
from workbench.errors import WorkbenchError
from workbench.lens import logit_lens
from workbench.models.zoo import ArchConfig


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=2, arch=ArchConfig(n_layers=2, d_model=32, n_heads=2, d_mlp=64, n_ctx=64))


def test_last_row_is_the_models_own_prediction(model):
    lens = logit_lens(model, "36+59=", k=3)
    logits = model(model.to_tokens("36+59="))[0]
    assert lens.labels == ["0_pre", "1_pre", "final_post"]  # embeddings, after block 0, after block 1
    assert torch.allclose(lens.log_probs[-1], logits.log_softmax(-1), atol=1e-5)
    assert torch.equal(lens.top_tokens[-1, :, 0], logits.argmax(-1))


def test_target_rank_and_prob(model):
    lens = logit_lens(model, "36+59=", target=7)
    assert lens.target_prob.shape == lens.target_rank.shape == (model.cfg.n_layers + 1, 7)
    assert torch.allclose(lens.target_prob, lens.log_probs[..., 7].exp())
    top_is_target = lens.top_tokens[..., 0] == 7
    assert torch.equal(lens.target_rank == 0, top_is_target)


def test_bad_inputs(model):
    with pytest.raises(WorkbenchError, match="position 2"):
        logit_lens(model, "36*59=")
    with pytest.raises(WorkbenchError, match="target token ids"):
        logit_lens(model, "1+1=", target=10_000)


def test_one_prompt_only(model):
    with pytest.raises(WorkbenchError, match="one prompt"):
        logit_lens(model, model.to_tokens(["1+2=", "3+4="]))


def test_a_prompt_longer_than_the_context_is_refused_not_truncated():
    import pytest

    from tests.helpers import tiny_model
    from workbench.errors import WorkbenchError
    from workbench.lens import logit_lens

    model = tiny_model()
    with pytest.raises(WorkbenchError, match="longer than the context"):
        logit_lens(model, "1+1=" * 40)
