import pytest
import torch
from transformer_lens import patching as tl_patching

from tests.helpers import tiny_model
from workbench.errors import WorkbenchError
from workbench.interventions import intervene
from workbench.models.zoo import ArchConfig
from workbench.patching import (
    attribution_heads,
    attribution_patching,
    head_by_pos_sweep,
    head_sweep,
    mlp_out_sweep,
    resid_sweep,
    spearman,
)


@pytest.fixture(scope="module")
def setup():
    model = tiny_model(seed=11, arch=ArchConfig(n_layers=2, d_model=32, n_heads=4, d_mlp=64, n_ctx=64))
    clean = model.to_tokens(["36+59=", "47+28=", "12+34="])
    corrupt = model.to_tokens(["36+58=", "47+27=", "12+33="])
    _, cache = model.run_with_cache(clean)

    def metric(logits):
        return (logits[:, -1, 8] - logits[:, -1, 9]).mean()

    return model, clean, corrupt, cache, metric


@pytest.mark.parametrize(
    "ours, theirs",
    [
        (resid_sweep, tl_patching.get_act_patch_resid_pre),
        (mlp_out_sweep, tl_patching.get_act_patch_mlp_out),
        (head_sweep, tl_patching.get_act_patch_attn_head_out_all_pos),
        (head_by_pos_sweep, tl_patching.get_act_patch_attn_head_out_by_pos),
    ],
)
def test_sweeps_equal_transformer_lens(setup, ours, theirs):
    model, clean, corrupt, cache, metric = setup
    expected = theirs(model, corrupt, cache, metric)
    got = ours(model, clean, corrupt, metric, max_batch=7)  # small batches: exercises chunking
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("layer, pos", [(0, 5), (1, 5), (1, 6)])  # sites where clean and corrupt differ
def test_attribution_is_the_derivative_of_patching(setup, layer, pos):
    model, clean, corrupt, cache, metric = setup
    attr = attribution_patching(model, clean, corrupt, metric)
    base = metric(model(corrupt)).item()
    eps, name = 1e-3, f"blocks.{layer}.hook_resid_pre"
    _, corrupt_cache = model.run_with_cache(corrupt, names_filter=name)
    delta = cache[name] - corrupt_cache[name]
    assert delta[:, pos].abs().max() > 0
    # Move the site a small step from corrupt towards clean: the change over eps is the directional derivative.
    with intervene(model, name, lambda act, idx: act[idx] + eps * delta[idx], positions=[pos]):
        nudged = metric(model(corrupt)).item()
    assert (nudged - base) / eps == pytest.approx(attr[layer, pos].item(), rel=0.05, abs=2e-3)
    assert attr.shape == (model.cfg.n_layers, clean.shape[1])
    assert all(p.grad is None for p in model.parameters())  # no gradients left on a shared model


def test_mismatched_pair_is_refused(setup):
    model, clean, _, _, metric = setup
    with pytest.raises(WorkbenchError, match="one shape"):
        resid_sweep(model, clean, clean[:, :-1], metric)


@pytest.mark.parametrize("layer, head", [(0, 0), (1, 1)])
def test_head_attribution_is_the_derivative_of_head_patching(setup, layer, head):
    model, clean, corrupt, cache, metric = setup
    attr = attribution_heads(model, clean, corrupt, metric)
    assert attr.shape == (model.cfg.n_layers, model.cfg.n_heads)
    base = metric(model(corrupt)).item()
    eps, name = 1e-3, f"blocks.{layer}.attn.hook_z"
    _, corrupt_cache = model.run_with_cache(corrupt, names_filter=name)
    delta = cache[name] - corrupt_cache[name]
    with intervene(model, name, lambda act, idx: act[idx] + eps * delta[idx], heads=[head]):
        nudged = metric(model(corrupt)).item()
    assert (nudged - base) / eps == pytest.approx(attr[layer, head].item(), rel=0.05, abs=2e-3)


def test_spearman():
    a = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert spearman(a, a ** 3) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    assert spearman(torch.tensor([1.0, 1.0, 2.0]), torch.tensor([0.0, 0.0, 5.0])) == pytest.approx(1.0)


def test_attribution_works_on_a_frozen_model_and_leaves_it_frozen(setup):
    # A model used as a frozen reference (e.g. by DPO) has requires_grad=False everywhere: same numbers.
    model, clean, corrupt, _, metric = setup
    expected = attribution_patching(model, clean, corrupt, metric), attribution_heads(model, clean, corrupt, metric)
    model.requires_grad_(False)
    try:
        got = attribution_patching(model, clean, corrupt, metric), attribution_heads(model, clean, corrupt, metric)
        assert not any(p.requires_grad or p.grad is not None for p in model.parameters())
    finally:
        model.requires_grad_(True)
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e)
