import pytest
import torch
from transformer_lens import patching

from tests.helpers import tiny_model
from workbench.models.zoo import ArchConfig
from workbench.interventions import (
    UnknownHook,
    mean_activation,
    mean_ablate,
    patch,
    resample_ablate,
    steer,
    zero_ablate,
)

ARCH = ArchConfig(n_layers=2, d_model=32, n_heads=4, d_mlp=64, n_ctx=64)


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=7, arch=ARCH)


@pytest.fixture(scope="module")
def pair(model):
    clean = model.to_tokens(["36+59=", "47+28=", "12+34="])
    corrupt = model.to_tokens(["36+58=", "47+27=", "12+33="])
    return clean, corrupt


def metric(logits):
    return logits[:, -1, 5].mean() - logits[:, -1, 6].mean()


def no_hooks_left(model) -> bool:
    return all(not hp.fwd_hooks and not hp.bwd_hooks for hp in model.hook_dict.values())


@pytest.mark.parametrize(
    "theirs, hook, sites",
    [
        (patching.get_act_patch_resid_pre, "hook_resid_pre", lambda n_pos, n_heads: [{"positions": [p]} for p in range(n_pos)]),
        (patching.get_act_patch_attn_head_out_all_pos, "attn.hook_z", lambda n_pos, n_heads: [{"heads": [h]} for h in range(n_heads)]),
    ],
)
def test_patch_equals_transformer_lens(model, pair, theirs, hook, sites):
    clean, corrupt = pair
    _, clean_cache = model.run_with_cache(clean)
    expected = theirs(model, corrupt, clean_cache, metric)  # [layer, pos] or [layer, head]
    got = torch.zeros_like(expected)
    for layer in range(model.cfg.n_layers):
        name = f"blocks.{layer}.{hook}"
        for i, where in enumerate(sites(clean.shape[1], model.cfg.n_heads)):
            with patch(model, name, clean_cache[name], **where):
                got[layer, i] = metric(model(corrupt))
    assert torch.allclose(got, expected, atol=1e-6)
    assert no_hooks_left(model)


def test_zero_ablation_of_heads_at_positions(model, pair):
    clean, _ = pair
    name = "blocks.0.attn.hook_z"
    with zero_ablate(model, name, positions=[1, -1], heads=[0, 2]):
        _, cache = model.run_with_cache(clean, names_filter=name)
    z = cache[name]
    assert (z[:, [1, -1]][:, :, [0, 2]] == 0).all()
    assert (z[:, [1, -1]][:, :, [1, 3]] != 0).all() and (z[:, 2] != 0).all()


def test_hooks_removed_on_exception(model, pair):
    clean, _ = pair
    before = model(clean)
    with pytest.raises(RuntimeError):
        with zero_ablate(model, "blocks.1.hook_mlp_out"):
            raise RuntimeError("boom")
    assert no_hooks_left(model)
    assert torch.equal(model(clean), before)


def test_steer_adds_the_vector_only_where_asked(model, pair):
    clean, _ = pair
    vec = torch.randn(model.cfg.d_model)
    _, base = model.run_with_cache(clean, names_filter="blocks.0.hook_resid_mid")
    with steer(model, "blocks.0.hook_resid_mid", vec, scale=2.0, positions=[-1]):
        _, steered = model.run_with_cache(clean, names_filter="blocks.0.hook_resid_mid")
    diff = steered["blocks.0.hook_resid_mid"] - base["blocks.0.hook_resid_mid"]
    assert torch.allclose(diff[:, -1], 2 * vec.expand(3, -1), atol=1e-5)
    assert diff[:, :-1].abs().max() == 0


def test_mean_ablation_uses_the_per_position_mean(model, pair):
    clean, corrupt = pair
    name = "blocks.1.hook_mlp_out"
    mean = mean_activation(model, corrupt, name)
    with mean_ablate(model, name, mean):
        _, cache = model.run_with_cache(clean, names_filter=name)
    assert torch.allclose(cache[name], mean.expand(3, -1, -1))


def test_resample_ablation_never_uses_own_activation(model, pair):
    clean, _ = pair
    name = "blocks.0.hook_resid_post"
    _, cache = model.run_with_cache(clean, names_filter=name)
    src = cache[name]
    with resample_ablate(model, name, src, torch.Generator().manual_seed(0)):
        _, out = model.run_with_cache(clean, names_filter=name)
    for i in range(3):
        assert not torch.equal(out[name][i], src[i])
        assert any(torch.equal(out[name][i], src[j]) for j in range(3))


def test_unknown_hook_names_the_closest(model):
    with pytest.raises(UnknownHook, match=r"closest: blocks\.1\.hook_resid_post.*layers are 0\.\.1"):
        with zero_ablate(model, "blocks.1.hook_resid_pst"):
            pass
    with pytest.raises(ValueError, match="head axis"):
        with zero_ablate(model, "blocks.0.hook_resid_post", heads=[0]):
            model(model.to_tokens("1+1="))
    assert no_hooks_left(model)


def test_mean_of_another_length_is_a_clear_error(model, pair):
    clean, _ = pair
    mean = mean_activation(model, model.to_tokens(["1+2="]), "blocks.0.hook_mlp_out")  # 5 positions, not 7
    with pytest.raises(ValueError, match="does not broadcast"):
        with mean_ablate(model, "blocks.0.hook_mlp_out", mean):
            model(clean)
    assert no_hooks_left(model)
