import dataclasses
from functools import partial

import pytest
import torch
from transformer_lens import HookedTransformer
from transformer_lens import patching as tl_patching

from tests.helpers import tiny_model
from workbench.errors import WorkbenchError
from workbench.interventions import intervene
from workbench.models.tokenizer import build_char_tokenizer
from workbench.models.trainer import hooked_config
from workbench.models.zoo import ArchConfig
from workbench.patching import (
    attribution_at,
    attribution_heads,
    attribution_patching,
    head_by_pos_sweep,
    head_sweep,
    mlp_out_sweep,
    resid_sweep,
    spearman,
    tokens_per_forward,
)

ARCH = ArchConfig(n_layers=2, d_model=32, n_heads=4, d_mlp=64, n_ctx=64)


@pytest.fixture(scope="module")
def setup():
    model = tiny_model(seed=11, arch=ARCH)
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


get_act_patch_resid_post = partial(
    tl_patching.generic_activation_patch, patch_setter=tl_patching.layer_pos_patch_setter,
    activation_name="resid_post", index_axis_names=("layer", "pos"))

SWEEPS = [
    pytest.param(resid_sweep, tl_patching.get_act_patch_resid_pre, id="resid_pre"),
    pytest.param(partial(resid_sweep, where="resid_mid"), tl_patching.get_act_patch_resid_mid, id="resid_mid"),
    pytest.param(partial(resid_sweep, where="resid_post"), get_act_patch_resid_post, id="resid_post"),
    pytest.param(mlp_out_sweep, tl_patching.get_act_patch_mlp_out, id="mlp_out"),
    pytest.param(head_sweep, tl_patching.get_act_patch_attn_head_out_all_pos, id="heads"),
    pytest.param(head_by_pos_sweep, tl_patching.get_act_patch_attn_head_out_by_pos, id="head_by_pos"),
]


def _variant(seed: int, **cfg) -> HookedTransformer:
    tok = build_char_tokenizer(model_max_length=ARCH.n_ctx)
    torch.manual_seed(seed)
    config = dataclasses.replace(hooked_config(ARCH, len(tok)), **cfg)
    return HookedTransformer(config, tokenizer=tok).eval()


@pytest.fixture(scope="module")
def uneven():
    """Pairs that differ at different positions per row (one row not at all), so sites touch some rows only."""
    model = tiny_model(seed=5, arch=ARCH)
    clean = model.to_tokens(["36+59=95", "47+28=75", "12+34=46", "50+50=00"])
    corrupt = model.to_tokens(["36+58=94", "17+28=45", "12+34=46", "50+51=01"])
    return model, clean, corrupt


def _metric(logits):  # reads every position, so a wrong earlier position would show
    return logits[:, :, 8].mean() - logits[:, -1, 9].mean()


@pytest.mark.parametrize("ours, theirs", SWEEPS)
@pytest.mark.parametrize("budget, max_batch", [(None, None), (1, None), (9, 2), (10_000, None)])
def test_sweeps_equal_transformer_lens_for_any_batching(uneven, ours, theirs, budget, max_batch):
    # budget 1: one row a pass (pieces split); 10_000: everything of a layer in one pass (suffixes merged).
    model, clean, corrupt = uneven
    _, cache = model.run_with_cache(clean)
    expected = theirs(model, corrupt, cache, _metric)
    got = ours(model, clean, corrupt, _metric, max_batch=max_batch, tokens_per_batch=budget)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-5)
    assert not any("forward" in vars(m) for m in model.modules())  # skipped attentions put back


@pytest.mark.parametrize("variant", [
    {"positional_embedding_type": "rotary", "rotary_dim": 8},  # keys of earlier positions: cached unrotated
    {"positional_embedding_type": "shortformer"},
    {"parallel_attn_mlp": True},
    {"attn_only": True},
    {"normalization_type": None},
    {"use_attn_result": True},  # head outputs: no shortcut through W_O, a hook instead
    {"attention_dir": "bidirectional"},  # later positions reach earlier ones: every pass runs all positions
], ids=lambda v: ",".join(f"{k}={x}" for k, x in v.items()))
@pytest.mark.parametrize("ours, theirs", SWEEPS[:1] + SWEEPS[-2:])
def test_sweeps_equal_transformer_lens_on_model_variants(variant, ours, theirs):
    model = _variant(3, **variant)
    clean = model.to_tokens(["36+59=95", "47+28=75", "12+34=46"])
    corrupt = model.to_tokens(["36+58=94", "17+28=45", "12+34=47"])
    _, cache = model.run_with_cache(clean)
    expected = theirs(model, corrupt, cache, _metric)
    got = ours(model, clean, corrupt, _metric, tokens_per_batch=20)
    assert torch.allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("ours, theirs", SWEEPS[:1] + SWEEPS[-2:])
def test_sweeps_equal_transformer_lens_with_a_padding_mask(ours, theirs):
    # A left-padding tokenizer makes TransformerLens build an attention mask: every pass then runs all positions.
    model = _variant(4)
    model.tokenizer.padding_side = "left"
    clean = model.to_tokens(["36+59=95", "7+28=35", "2+4=6"])
    corrupt = model.to_tokens(["36+58=94", "7+27=34", "2+5=7"])
    assert (clean == model.tokenizer.pad_token_id).any()
    _, cache = model.run_with_cache(clean)
    expected = theirs(model, corrupt, cache, _metric)
    got = ours(model, clean, corrupt, _metric, tokens_per_batch=30)
    assert torch.allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("ours, theirs", SWEEPS)
def test_several_metrics_and_a_subset_of_layers_equal_single_sweeps(uneven, ours, theirs):
    # One sweep reading two metrics from the same patched passes gives each metric's own sweep, row for row.
    model, clean, corrupt = uneven

    def last(logits):
        return logits[:, -1, 9].mean()

    full = {"all": ours(model, clean, corrupt, _metric), "last": ours(model, clean, corrupt, last)}
    both = ours(model, clean, corrupt, {"all": _metric, "last": last}, tokens_per_batch=9)
    assert set(both) == {"all", "last"}
    for k in both:
        assert torch.allclose(both[k], full[k], atol=1e-5)
    rows = ours(model, clean, corrupt, _metric, layers=[1])
    assert rows.shape == full["all"][1:].shape and torch.allclose(rows, full["all"][1:], atol=1e-5)


@pytest.mark.parametrize("layers", [[], [2], [-1], [True], "0"])
def test_a_bad_layer_list_is_refused(uneven, layers):
    model, clean, corrupt = uneven
    with pytest.raises(WorkbenchError, match="layers must be"):
        resid_sweep(model, clean, corrupt, _metric, layers=layers)


def test_a_site_patching_nothing_gives_the_corrupted_metric(uneven):
    model, clean, corrupt = uneven
    effect = resid_sweep(model, clean, corrupt, _metric)
    same = (clean == corrupt).all(0)  # layer 0: a position every pair agrees on is the same vector in both runs
    assert same.any()
    assert torch.equal(effect[0, same], torch.full((int(same.sum()),), _metric(model(corrupt)).item()))


def test_tokens_per_forward_grows_with_threads_and_stays_bounded(setup):
    model = setup[0]
    one, two = tokens_per_forward(model, 40, threads=1), tokens_per_forward(model, 40, threads=2)
    assert 256 <= one < two <= 65536
    assert tokens_per_forward(model, 100_000, threads=1) == 100_000  # at least one sequence


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


def test_attribution_at_mixed_hooks_equals_each_hooks_own_estimate(setup):
    # Every resid_pre and the last resid_post from one gradient: row for row what attribution_patching gives.
    model, clean, corrupt, _, metric = setup
    last = model.cfg.n_layers - 1
    names = [f"blocks.{i}.hook_resid_pre" for i in range(model.cfg.n_layers)] + [f"blocks.{last}.hook_resid_post"]
    got = attribution_at(model, clean, corrupt, metric, names)
    expected = torch.cat([attribution_patching(model, clean, corrupt, metric),
                          attribution_patching(model, clean, corrupt, metric, "resid_post")[-1:]])
    assert got.shape == (len(names), clean.shape[1])
    torch.testing.assert_close(got, expected)


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
