import pytest
import torch
import torch.nn.functional as F

from tests.helpers import tiny_model
from workbench.cache_store import CacheReader, write_cache
from workbench.errors import WorkbenchError
from workbench.lens import logit_lens
from workbench.models.checkpoint import UnsafeCheckpoint
from workbench.models.zoo import ArchConfig
from workbench.tuned_lens import (
    TunedLens,
    lens_hooks,
    lens_kl,
    load_tuned_lens,
    save_tuned_lens,
    train_tuned_lens,
    tuned_lens_readout,
)

ARCH = ArchConfig(n_layers=2, d_model=32, n_heads=2, d_mlp=64, n_ctx=64)
PROMPTS = [f"{10 + (7 * i) % 90}+{10 + (13 * i + 5) % 90}=" for i in range(120)]  # 7 tokens each with BOS
TRAIN = {"steps": 60, "lr": 1e-2, "batch_size": 128, "progress": False}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Small tensors: OpenMP's fan-out costs more than the work, many times more on a busy machine.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=2, arch=ARCH)


@pytest.fixture(scope="module")
def cache(model, tmp_path_factory):
    out = tmp_path_factory.mktemp("lens_cache")
    # Three shards; the held-out split (the last 12 prompts) runs through the last one.
    return CacheReader(write_cache(model, "tiny", PROMPTS, lens_hooks(model), out, positions=None, shard_size=50,
                                   progress=False))


@pytest.fixture(scope="module")
def trained(model, cache):
    return train_tuned_lens(model, cache, seed=0, **TRAIN)


def fresh_ln_logit_lens(model, tokens):
    """The logit lens written out by hand: each layer's input through ln_final (its own scale) and unembed."""
    _, c = model.run_with_cache(tokens)
    rows = [c[f"blocks.{layer}.hook_resid_pre"] for layer in range(model.cfg.n_layers)]
    return torch.stack([model.unembed(model.ln_final(r)).log_softmax(-1) for r in rows])  # [layer, batch, pos, vocab]


def test_lens_hooks(model):
    assert lens_hooks(model) == ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre", "blocks.1.hook_resid_post"]


def test_translate_convention(model):
    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(2, 32, 32, generator=g), torch.randn(2, 32, generator=g)
    lens = TunedLens(w, b, "x")
    h = torch.randn(3, 5, 32, generator=g)
    assert (lens.n_layers, lens.d_model) == (2, 32)
    assert torch.allclose(lens.translate(1, h), h + h @ w[1].T + b[1], atol=1e-5)
    with pytest.raises(WorkbenchError, match="layer must be in 0..1"):
        lens.translate(2, h)


@torch.no_grad()
def test_zero_lens_is_the_fresh_ln_logit_lens(model):
    tokens = model.to_tokens(PROMPTS[:4])
    expected = fresh_ln_logit_lens(model, tokens)  # [layer, batch, pos, vocab]
    identity = TunedLens.identity(model)
    readout = tuned_lens_readout(model, identity, tokens[0])
    assert torch.allclose(readout.log_probs[:-1], expected[:, 0], atol=1e-6)
    # KL(final || lens) by hand (F.kl_div takes the lens's log-probs and the target's log-probs)
    final = model(tokens).log_softmax(-1)
    by_hand = torch.stack([F.kl_div(e, final, log_target=True, reduction="none").sum(-1).mean() for e in expected])
    assert torch.allclose(lens_kl(model, None, tokens), by_hand, atol=1e-6)
    assert torch.allclose(lens_kl(model, identity, tokens), by_hand, atol=1e-6)
    # Parity with workbench.lens (TransformerLens recomputes the final LN per layer): every row, same labels.
    plain = logit_lens(model, tokens[0])
    assert readout.labels == plain.labels == ["0_pre", "1_pre", "final_post"]
    assert torch.allclose(readout.log_probs, plain.log_probs, atol=1e-6)


@torch.no_grad()
def test_final_row_is_the_models_output(model, trained):
    lens, _ = trained
    tokens = model.to_tokens("36+59=")[0]
    next_tokens = torch.cat([tokens[1:], tokens[:1]])
    readout = tuned_lens_readout(model, lens, tokens, target=next_tokens, k=3)
    assert torch.allclose(readout.log_probs[-1], model(tokens[None])[0].log_softmax(-1), atol=1e-5)
    assert not torch.allclose(readout.log_probs[0], fresh_ln_logit_lens(model, tokens[None])[0, 0], atol=1e-3)
    by_gather = readout.log_probs.gather(-1, next_tokens.expand(3, -1)[..., None])[..., 0].exp()
    assert torch.allclose(readout.target_prob, by_gather)
    assert torch.equal(readout.target_rank == 0, readout.top_tokens[..., 0] == next_tokens)


def test_training_beats_the_logit_lens_on_held_out_prompts(model, trained):
    lens, report = trained
    assert [r["hook"] for r in report] == lens_hooks(model)[:-1]
    for r in report:
        assert r["kl_tuned_lens"] < 0.8 * r["kl_logit_lens"], r
    # The report is measured on exactly the last 10% of prompts: recompute it from their tokens.
    held_out = model.to_tokens(PROMPTS[-12:])
    assert torch.allclose(lens_kl(model, None, held_out), torch.tensor([r["kl_logit_lens"] for r in report]), atol=1e-5)
    assert torch.allclose(lens_kl(model, lens, held_out), torch.tensor([r["kl_tuned_lens"] for r in report]), atol=1e-5)


def test_training_is_deterministic(model, cache, trained):
    again, report = train_tuned_lens(model, cache, seed=0, **TRAIN)
    assert torch.equal(again.weight, trained[0].weight) and torch.equal(again.bias, trained[0].bias)
    assert report == trained[1]
    other, _ = train_tuned_lens(model, cache, seed=1, **TRAIN)
    assert not torch.equal(other.weight, trained[0].weight)  # the seed does pick the batches


def test_save_load_round_trip(model, trained, tmp_path):
    lens, report = trained
    out = save_tuned_lens(lens, tmp_path / "lens", report)
    loaded = load_tuned_lens(out, model)
    assert torch.equal(loaded.weight, lens.weight) and torch.equal(loaded.bias, lens.bias)
    assert loaded.model_sha256 == lens.model_sha256
    with pytest.raises(WorkbenchError, match="other weights"):
        load_tuned_lens(out, tiny_model(seed=3, arch=ARCH))
    with pytest.raises(WorkbenchError, match="d_model=32.*d_model=16"):
        load_tuned_lens(out, tiny_model(arch=ArchConfig(n_layers=2, d_model=16, n_heads=2, d_mlp=32, n_ctx=64)))
    (out / "lens.safetensors").rename(out / "lens.pt")
    with pytest.raises(UnsafeCheckpoint):
        load_tuned_lens(out)
    with pytest.raises(WorkbenchError, match="not a tuned lens"):
        load_tuned_lens(tmp_path)


def test_cache_must_fit_the_model(model, cache, tmp_path):
    partial = write_cache(model, "tiny", PROMPTS[:20], "blocks.*.hook_resid_pre", tmp_path / "pre", positions=None,
                          progress=False)
    with pytest.raises(WorkbenchError, match=r"lacks hooks blocks\.1\.hook_resid_post.*--hooks"):
        train_tuned_lens(model, CacheReader(partial), **TRAIN)
    with pytest.raises(WorkbenchError, match="other weights"):
        train_tuned_lens(tiny_model(seed=3, arch=ARCH), cache, **TRAIN)


# Prompts of very different lengths (6 and 44 tokens with BOS), alternating so that every shard and the held-out
# split hold both: in an all-positions cache the short ones are mostly zero padding.
MIXED = [f"{10 + i}+9=" if i % 2 else f"{100 + i}+{200 + i}= 3+6+0=09 2+5+0=07 1+4+0=05 ans {300 + 2 * i}"
         for i in range(40)]


@pytest.fixture(scope="module")
def mixed_cache(model, tmp_path_factory):
    out = tmp_path_factory.mktemp("mixed_cache")
    return CacheReader(write_cache(model, "tiny", MIXED, lens_hooks(model), out, positions=None, shard_size=16,
                                   progress=False))


def real_rows_kl(model, lens, prompts):
    """KL per layer averaged over every real position of ``prompts``, each prompt run alone (no padding)."""
    kls = [(lens_kl(model, lens, model.to_tokens(p)), model.to_tokens(p).shape[1]) for p in prompts]
    return sum(kl * n for kl, n in kls) / sum(n for _, n in kls)


def test_padding_of_mixed_lengths_enters_neither_loss_nor_report(model, mixed_cache, monkeypatch):
    import workbench.tuned_lens as tl

    lengths = [model.to_tokens(p).shape[1] for p in MIXED]
    assert min(lengths) == 6 and max(lengths) == 44
    seen: list[torch.Tensor] = []
    real_layer_kl = tl._layer_kl

    def spy(model, lens, rows):
        seen.append(rows.detach())
        return real_layer_kl(model, lens, rows)

    monkeypatch.setattr(tl, "_layer_kl", spy)
    lens, report = train_tuned_lens(model, mixed_cache, seed=0, **TRAIN)
    rows = torch.cat(seen, dim=1)
    # A real residual stream is never all zeros; the cache's padding rows are.
    assert not (rows == 0).all(-1).any()
    # The report is the mean over the held-out prompts' real positions only (the last 4 of 40).
    held_out = MIXED[-4:]
    expected_logit, expected_tuned = real_rows_kl(model, None, held_out), real_rows_kl(model, lens, held_out)
    assert torch.allclose(torch.tensor([r["kl_logit_lens"] for r in report]), expected_logit, atol=1e-5)
    assert torch.allclose(torch.tensor([r["kl_tuned_lens"] for r in report]), expected_tuned, atol=1e-5)
    # Counting the zero padding (2 of the 4 held-out prompts are 38 rows of it, each of KL 0 for the logit lens)
    # would have diluted the logit lens's KL to about half.
    n_real = sum(model.to_tokens(p).shape[1] for p in held_out)
    diluted = expected_logit * n_real / (len(held_out) * max(lengths))
    assert (expected_logit > 1.5 * diluted).all()


def test_training_rows_are_the_real_positions(model, mixed_cache):
    from workbench.tuned_lens import _shard_rows

    hooks = lens_hooks(model)
    rows = torch.cat(list(_shard_rows(mixed_cache, hooks, 0, len(MIXED))), dim=1)
    _, c = model.run_with_cache(model.to_tokens(MIXED[3]), names_filter=hooks)
    assert rows.shape[1] == sum(model.to_tokens(p).shape[1] for p in MIXED)
    start = sum(model.to_tokens(p).shape[1] for p in MIXED[:3])
    expected = torch.stack([c[h][0] for h in hooks])
    assert torch.allclose(rows[:, start : start + expected.shape[1]], expected, atol=1e-5)
