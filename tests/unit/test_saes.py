import json

import numpy as np
import pytest
import sae_lens
import torch
from safetensors.torch import load_file
from sae_lens.evals import get_recons_loss
from sae_lens.training.activation_scaler import ActivationScaler

import workbench.saes as saes
from tests.helpers import tiny_model
from workbench.cache_store import CacheReader, write_cache
from workbench.errors import WorkbenchError
from workbench.sae_eval import evaluate_sae
from workbench.saes import NonFiniteLoss, SAERecipe, _training_sae, load_sae, load_transcoders, train_sae

HOOK = "blocks.0.hook_resid_post"


def _texts(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [f"{a}+{b}={a + b}" for a, b in rng.integers(0, 999, size=(n, 2))]


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def cache(model, tmp_path_factory):
    out = tmp_path_factory.mktemp("cache")
    hooks = [HOOK, "blocks.*.hook_resid_mid", "blocks.*.hook_mlp_out"]
    return write_cache(model, "tiny", _texts(300), hooks, out, positions=None, shard_size=100, progress=False)


RECIPE = SAERecipe(arch="topk", d_sae=64, k=4, batch_size=256, total_tokens=256 * 12, checkpoint_every=4)


def test_round_trip_through_saelens_load_from_disk(model, cache, tmp_path):
    out = train_sae(model, "tiny", cache, HOOK, tmp_path / "sae", RECIPE, progress=False)
    loaded = sae_lens.SAE.load_from_disk(str(out), device="cpu")
    assert isinstance(loaded, sae_lens.TopKSAE)
    assert loaded.cfg.metadata.hook_name == HOOK and loaded.cfg.metadata.model_name == "tiny"
    # The training SAE from the last checkpoint, fed scaled inputs as in training, must give the same
    # reconstructions as the saved one (scaling folded into its weights) on raw inputs.
    state = json.loads((tmp_path / "sae.work" / "state" / "state.json").read_text())
    train = _training_sae(RECIPE, model.cfg.d_model, loaded.cfg.metadata)
    train.load_state_dict(load_file(str(tmp_path / "sae.work" / "state" / "sae.safetensors")))
    x = next(CacheReader(cache).iter_batches(HOOK, 200, skip_first=1))
    sf = state["scaling_factor"]
    with torch.no_grad():
        expect = train.decode(train.encode(x * sf)) / sf
        got = loaded.decode(loaded.encode(x))
    assert torch.allclose(got, expect, atol=1e-4, rtol=1e-4)
    info = json.loads((out / "workbench.json").read_text())
    assert info["steps"] == 12 and info["tokens"] == 256 * 12


def test_resume_after_a_kill_is_bit_identical(model, cache, tmp_path):
    full = train_sae(model, "tiny", cache, HOOK, tmp_path / "full", RECIPE, progress=False)
    train_sae(model, "tiny", cache, HOOK, tmp_path / "part", RECIPE, progress=False, stop_after=5)
    assert not (tmp_path / "part").exists()
    part = train_sae(model, "tiny", cache, HOOK, tmp_path / "part", RECIPE, progress=False)
    a, b = load_file(str(full / "sae_weights.safetensors")), load_file(str(part / "sae_weights.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_different_run_in_the_work_dir_is_refused(model, cache, tmp_path):
    train_sae(model, "tiny", cache, HOOK, tmp_path / "s", RECIPE, progress=False, stop_after=2)
    other = SAERecipe(**{**RECIPE.__dict__, "k": 8})
    with pytest.raises(WorkbenchError, match="different SAE run"):
        train_sae(model, "tiny", cache, HOOK, tmp_path / "s", other, progress=False)


def test_nan_stops_training_and_keeps_the_last_good_checkpoint(model, cache, tmp_path, monkeypatch):
    real = saes.activation_stream

    def poisoned(*args, **kwargs):
        training = args[3] == RECIPE.seed  # not the scale-estimate stream
        for i, batch in enumerate(real(*args, **kwargs)):
            yield batch * float("nan") if i == 6 and training else batch

    monkeypatch.setattr(saes, "activation_stream", poisoned)
    with pytest.raises(NonFiniteLoss, match=r"step 6.*last good checkpoint \(step 4\)"):
        train_sae(model, "tiny", cache, HOOK, tmp_path / "s", RECIPE, progress=False)
    state = load_file(str(tmp_path / "s.work" / "state" / "sae.safetensors"))
    assert all(torch.isfinite(v).all() for v in state.values())
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("arch", ["batchtopk", "jumprelu", "standard"])
def test_every_architecture_trains_and_loads(model, cache, tmp_path, arch):
    recipe = SAERecipe(arch=arch, d_sae=64, k=4, batch_size=256, total_tokens=256 * 4)
    out = train_sae(model, "tiny", cache, HOOK, tmp_path / arch, recipe, progress=False)
    loaded = load_sae(out, model)
    assert loaded.sae.cfg.d_sae == 64 and loaded.hook == HOOK


def test_transcoders_save_as_saelens_transcoders_and_load_as_a_set(model, cache, tmp_path):
    recipe = SAERecipe(arch="standard", transcoder=True, d_sae=64, batch_size=256, total_tokens=256 * 4)
    for layer in range(model.cfg.n_layers):
        train_sae(model, "tiny", cache, f"blocks.{layer}.hook_resid_mid", tmp_path / "tc" / f"layer_{layer}", recipe,
                  progress=False)
    tcs = load_transcoders(tmp_path / "tc", model)
    assert sorted(tcs) == list(range(model.cfg.n_layers))
    assert all(isinstance(t, sae_lens.Transcoder) for t in tcs.values())
    assert tcs[0].cfg.metadata.hook_name_out == "blocks.0.hook_mlp_out"
    m = evaluate_sae(model, load_sae(tmp_path / "tc" / "layer_0", model), _texts(20, 1))
    assert m["hook_out"] == "blocks.0.hook_mlp_out" and 0 <= m["dead_fraction"] <= 1
    with pytest.raises(WorkbenchError, match="topk is not available"):
        train_sae(model, "tiny", cache, "blocks.0.hook_resid_mid", tmp_path / "x",
                  SAERecipe(arch="topk", transcoder=True), progress=False)


def test_an_sae_is_refused_on_another_model_or_hook(model, cache, tmp_path):
    out = train_sae(model, "tiny", cache, HOOK, tmp_path / "sae", SAERecipe(d_sae=64, k=4, batch_size=256,
                                                                          total_tokens=256 * 2), progress=False)
    other = tiny_model(seed=1)
    with pytest.raises(WorkbenchError, match=r"trained on model tiny \(weights [0-9a-f]{12}\), not this model"):
        load_sae(out, other)
    assert load_sae(out, other, allow_other_model=True).hook == HOOK
    with pytest.raises(WorkbenchError, match="trained on hook blocks.0.hook_resid_post, not blocks.1.hook_resid_post"):
        load_sae(out, model, hook="blocks.1.hook_resid_post")
    # Same weights digest check passes, but a hook of another width is refused by its d_in.
    cfg = json.loads((out / "cfg.json").read_text())
    cfg["metadata"]["hook_name"] = "blocks.0.mlp.hook_post"
    (out / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(WorkbenchError, match=r"d_in \d+ but blocks.0.mlp.hook_post in this model has width \d+"):
        load_sae(out, model)
    with pytest.raises(WorkbenchError, match="not an SAE directory"):
        load_sae(tmp_path, model)


def test_bad_recipes_and_caches_are_refused(model, cache, tmp_path):
    for recipe, msg in [(SAERecipe(arch="gated"), "--arch must be one of"), (SAERecipe(d_sae=0), "d_sae must be"),
                        (SAERecipe(k=99, d_sae=8), "cannot exceed"), (SAERecipe(lr=float("nan")), "lr must be")]:
        with pytest.raises(WorkbenchError, match=msg):
            train_sae(model, "tiny", cache, HOOK, tmp_path / "x", recipe, progress=False)
    last = write_cache(model, "tiny", _texts(20), HOOK, tmp_path / "last", positions=-1, progress=False)
    with pytest.raises(WorkbenchError, match="--positions=all"):
        train_sae(model, "tiny", last, HOOK, tmp_path / "x", RECIPE, progress=False)
    with pytest.raises(WorkbenchError, match="not in the cache"):
        train_sae(model, "tiny", cache, "blocks.1.hook_resid_post", tmp_path / "x", RECIPE, progress=False)
    with pytest.raises(WorkbenchError, match="was made with model"):
        train_sae(tiny_model(seed=1), "tiny", cache, HOOK, tmp_path / "x", RECIPE, progress=False)


def _identity_sae(d: int, hook: str) -> sae_lens.StandardSAE:
    """relu(x) - relu(-x) = x: a 2d-feature SAE that reconstructs exactly."""
    sae = sae_lens.StandardSAE(sae_lens.StandardSAEConfig(d_in=d, d_sae=2 * d, apply_b_dec_to_input=False,
                                                          metadata=sae_lens.saes.sae.SAEMetadata(hook_name=hook)))
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def test_identity_sae_explains_all_variance_and_recovers_all_loss(model, tmp_path):
    _identity_sae(model.cfg.d_model, HOOK).save_model(tmp_path / "id")
    m = evaluate_sae(model, load_sae(tmp_path / "id", model), _texts(40))
    assert m["explained_variance"] == pytest.approx(1.0, abs=1e-6)
    assert m["ce_recovered"] == pytest.approx(1.0, abs=1e-5)
    assert m["mse"] == pytest.approx(0.0, abs=1e-8) and m["cossim"] == pytest.approx(1.0, abs=1e-6)
    assert m["ce_sae"] == pytest.approx(m["ce_clean"], abs=1e-6)


def test_ce_losses_match_saelens_get_recons_loss(model, cache, tmp_path):
    out = train_sae(model, "tiny", cache, HOOK, tmp_path / "sae", SAERecipe(d_sae=64, k=4, batch_size=256,
                                                                          total_tokens=256 * 4), progress=False)
    loaded = load_sae(out, model)
    texts = [t for t in _texts(200, 3) if len(t) == 11][:30]  # one length: SAELens scores a rectangular batch
    ours = evaluate_sae(model, loaded, texts)
    toks = model.to_tokens(texts)
    theirs = get_recons_loss(loaded.sae, model, ActivationScaler(), toks, compute_kl=False, compute_ce_loss=True,
                             ignore_tokens=[model.tokenizer.bos_token_id])
    mask = (toks != model.tokenizer.bos_token_id)[:, :-1]
    for ours_key, their_key in [("ce_clean", "ce_loss_without_sae"), ("ce_sae", "ce_loss_with_sae"),
                                ("ce_ablation", "ce_loss_with_ablation")]:
        assert ours[ours_key] == pytest.approx(theirs[their_key][mask].mean().item(), rel=1e-5), ours_key


def test_dead_and_dense_fractions_count_features(model, tmp_path):
    sae = _identity_sae(model.cfg.d_model, HOOK)
    with torch.no_grad():
        sae.b_enc[0] = -1e6  # never fires
        sae.b_enc[1] = 1e6  # fires on every token
    sae.save_model(tmp_path / "s")
    m = evaluate_sae(model, load_sae(tmp_path / "s", model), _texts(20))
    assert m["density"][0] == 0 and m["density"][1] == 1
    assert m["dead_fraction"] >= 1 / sae.cfg.d_sae and m["dense_fraction"] >= 1 / sae.cfg.d_sae


def test_a_cache_with_nan_activations_is_refused_before_training(model, cache, tmp_path, monkeypatch):
    real = saes.activation_stream
    monkeypatch.setattr(saes, "activation_stream", lambda *a, **k: (b * float("nan") for b in real(*a, **k)))
    with pytest.raises(WorkbenchError, match="non-finite activations"):
        train_sae(model, "tiny", cache, HOOK, tmp_path / "s", RECIPE, progress=False)
