import pytest
import torch

from tests.helpers import tiny_model
from workbench.caching import cache_activations, resolve_hooks
from workbench.errors import WorkbenchError


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=1)


def test_resolve_patterns_in_model_order(model):
    assert resolve_hooks(model, "blocks.*.hook_resid_post") == ["blocks.0.hook_resid_post"]
    names = resolve_hooks(model, ["blocks.0.hook_mlp_out", "hook_embed"])
    assert names == ["hook_embed", "blocks.0.hook_mlp_out"]
    with pytest.raises(WorkbenchError, match="closest: blocks.0.hook_resid_post"):
        resolve_hooks(model, "blocks.0.hook_resid_pots")


def test_equals_run_with_cache(model):
    prompts = ["36+59=", "47+28=", "12+34="]
    ours = cache_activations(model, prompts, "blocks.0.hook_*", batch_size=2)
    _, cache = model.run_with_cache(model.to_tokens(prompts))
    assert set(ours) == {n for n in cache.keys() if n.startswith("blocks.0.hook_")}
    for name, act in ours.items():
        assert torch.allclose(act, cache[name], atol=1e-6)  # batch 2 vs 3: summation order differs


def test_mixed_lengths_with_positions_from_the_end(model):
    prompts = ["1+2=", "478+256=", "36+59=", "9+9="]
    ours = cache_activations(model, prompts, "blocks.0.hook_resid_post", positions=-1, batch_size=1)
    act = ours["blocks.0.hook_resid_post"]
    assert act.shape == (4, 1, model.cfg.d_model)
    for i, p in enumerate(prompts):  # same order as the prompts, whatever the grouping by length
        _, cache = model.run_with_cache(p)
        assert torch.allclose(act[i, 0], cache["blocks.0.hook_resid_post"][0, -1])
    with pytest.raises(WorkbenchError, match="different token lengths"):
        cache_activations(model, prompts, "blocks.0.hook_resid_post")


def test_batches_come_in_ascending_rows_and_fill_the_buffers(model):
    from workbench.caching import cache_tokens, cached_batches
    from workbench.models.tokenizer import tokenize_prompts

    prompts = ["1+2=", "478+256=", "36+59=", "9+9=", "12+34="]
    toks = tokenize_prompts(model, prompts)
    hook = "blocks.0.hook_resid_post"
    batches = list(cached_batches(model, toks, hook, None, batch_size=2, pad_to=9))
    assert sorted(i for rows, _ in batches for i in rows) == list(range(5))
    for rows, acts in batches:
        assert rows == sorted(rows) and {len(toks[i]) for i in rows} == {acts[hook].shape[1]}  # unpadded
    out = cache_tokens(model, toks, hook, None, batch_size=2, pad_to=9)[hook]
    assert out.shape == (5, 9, model.cfg.d_model)
    for rows, acts in batches:
        n = acts[hook].shape[1]
        assert torch.equal(out[rows, :n], acts[hook]) and not out[rows, n:].any()  # padding is zeros


def test_attention_patterns_are_not_padded_on_their_head_axis(model):
    from workbench.caching import cache_tokens
    from workbench.models.tokenizer import tokenize_prompts

    toks = tokenize_prompts(model, ["12+34=", "56+78="])
    out = cache_tokens(model, toks, ["blocks.0.attn.hook_pattern", "blocks.0.hook_resid_post"], None, pad_to=7)
    assert out["blocks.0.attn.hook_pattern"].shape == (2, model.cfg.n_heads, 7, 7)
    assert out["blocks.0.hook_resid_post"].shape == (2, 7, model.cfg.d_model)


def test_the_forward_stops_after_the_last_block_a_hook_needs(monkeypatch):
    from dataclasses import replace

    from tests.helpers import TINY_ARCH
    from workbench.caching import blocks_needed

    assert blocks_needed(["blocks.0.hook_resid_post", "blocks.2.attn.hook_pattern"]) == 3
    assert blocks_needed(["hook_embed", "hook_pos_embed"]) == 0
    assert blocks_needed(["blocks.1.hook_resid_post", "ln_final.hook_normalized"]) is None
    model = tiny_model(seed=2, arch=replace(TINY_ARCH, n_layers=2))
    stops = []
    real = model.run_with_cache
    monkeypatch.setattr(model, "run_with_cache", lambda *a, **k: stops.append(k.get("stop_at_layer")) or real(*a, **k))
    prompts = ["36+59=", "47+28="]
    for hooks, stop in [("blocks.0.hook_resid_post", 1), ("blocks.*.hook_resid_post", 2), ("hook_embed", 0),
                        (["blocks.0.hook_resid_post", "ln_final.hook_normalized"], None)]:
        ours = cache_activations(model, prompts, hooks)
        assert stops[-1] == stop
        _, cache = real(model.to_tokens(prompts))
        for name, act in ours.items():  # bit for bit: the blocks that run are the full forward's
            assert torch.equal(act, cache[name]), name
