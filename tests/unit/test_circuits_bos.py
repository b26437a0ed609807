"""Attribution graphs explain exactly ``model.to_tokens(prompt)``: no dummy BOS for a model without one (Qwen2
style), and no failure when the only special token has id 0.

The model is a tiny random HookedTransformer with a byte-level BPE tokenizer whose one special token,
``<|endoftext|>``, is id 0 and which has no BOS; transcoders are random (seeded), as in test_circuits.py.
"""

import pytest
import torch
from circuit_tracer.replacement_model.common import ensure_tokenized as circuit_tracer_ensure_tokenized
from sae_lens import Transcoder, TranscoderConfig
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformers import PreTrainedTokenizerFast

from workbench.circuits import (
    attribute_prompt,
    bos_positions,
    replacement_model,
    top_features,
    validate_by_intervention,
)
from workbench.errors import WorkbenchError

PROMPT = "the lazy fox says 36 plus 59"
TEXT = ("the quick brown fox jumps over the lazy dog while wizards judge boxing matches a model says one thing and "
        "computes another numbers like 36 plus 59 equal 95 and carry digits move left").split()


def no_bos_tokenizer(directory) -> PreTrainedTokenizerFast:
    """Trained here, saved to ``directory`` and read back (TransformerLens re-reads a tokenizer from its path)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    g = torch.Generator().manual_seed(0)
    corpus = [" ".join(TEXT[i] for i in torch.randint(len(TEXT), (12,), generator=g).tolist()) for _ in range(40)]
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                        show_progress=False))
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                            pad_token="<|endoftext|>").save_pretrained(directory)
    return PreTrainedTokenizerFast.from_pretrained(str(directory))


def tiny(directory, prepend_bos: bool) -> HookedTransformer:
    """A 2-layer RMSNorm / rotary / gated-MLP model (Qwen2's kind); without BOS unless ``prepend_bos``, in which
    case to_tokens puts ``<|endoftext|>`` (id 0) first, as TransformerLens does for GPT-2."""
    tokenizer = no_bos_tokenizer(directory)
    cfg = HookedTransformerConfig(n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64, n_ctx=64,
                                  d_vocab=len(tokenizer), act_fn="silu", normalization_type="RMSPre",
                                  positional_embedding_type="rotary", gated_mlp=True, final_rms=True,
                                  default_prepend_bos=prepend_bos, seed=0)
    return HookedTransformer(cfg, tokenizer=tokenizer).eval()


def random_transcoder(d_in: int, d_sae: int = 64, seed: int = 0) -> Transcoder:
    g = torch.Generator().manual_seed(seed)
    tc = Transcoder(TranscoderConfig(d_in=d_in, d_sae=d_sae, d_out=d_in, dtype="float32", device="cpu",
                                     apply_b_dec_to_input=False))
    with torch.no_grad():
        tc.W_enc.copy_(torch.randn(d_in, d_sae, generator=g) / d_in**0.5)
        tc.b_enc.copy_(torch.full((d_sae,), -0.2))
        tc.W_dec.copy_(torch.randn(d_sae, d_in, generator=g) * 0.1)
        tc.b_dec.copy_(torch.randn(d_in, generator=g) * 0.01)
    return tc


@pytest.fixture(scope="module")
def no_bos(tmp_path_factory):
    model = tiny(tmp_path_factory.mktemp("tok"), prepend_bos=False)
    transcoders = {layer: random_transcoder(model.cfg.d_model, seed=layer) for layer in range(model.cfg.n_layers)}
    return model, transcoders, replacement_model(model, transcoders)


def test_the_setting_is_the_one_that_broke(no_bos):
    """The tokenizer's only special token is id 0 and there is no BOS: circuit-tracer's own tokenization fails
    on it (``next(filter(None, [0, 0, 0, 0]))``) or, given another special token, would prepend a dummy BOS."""
    model = no_bos[0]
    tokens = model.to_tokens(PROMPT)[0]
    assert model.tokenizer.all_special_ids == [0] and int(tokens[0]) not in model.tokenizer.all_special_ids
    with pytest.raises(StopIteration):
        circuit_tracer_ensure_tokenized(tokens, model.tokenizer, "cpu", model.cfg.model_name)


def test_graph_explains_exactly_to_tokens(no_bos):
    model, _, rm = no_bos
    result = attribute_prompt(rm, PROMPT)
    tokens = model.to_tokens(PROMPT)[0].tolist()
    assert result.tokens == tokens == result.graph.input_tokens.tolist()
    assert tokens[0] != 0 and len(tokens) == len(model.tokenizer(PROMPT)["input_ids"])  # nothing prepended
    assert result.top_token == model.to_string(model(PROMPT)[0, -1].argmax())
    for prompt in (PROMPT, torch.tensor(tokens), tokens, torch.tensor([tokens])):
        assert rm.ensure_tokenized(prompt).tolist() == tokens
    with pytest.raises(WorkbenchError, match="one non-empty sequence"):
        rm.ensure_tokenized(torch.tensor([tokens, tokens]))


def test_position_zero_is_a_real_token_with_nodes(no_bos):
    """Without a BOS, position 0 is the prompt's first token: transcoder + error node = its MLP output, as at
    every other position (circuit-tracer drops position 0 as a BOS otherwise)."""
    model, transcoders, rm = no_bos
    assert bos_positions(model) == 0 and rm.zero_positions == slice(0, 0)
    tokens = model.to_tokens(PROMPT)[0]
    ctx = rm.setup_attribution(tokens)
    _, cache = model.run_with_cache(tokens[None])
    for layer, tc in transcoders.items():
        x, y = cache[f"blocks.{layer}.hook_resid_mid"][0], cache[f"blocks.{layer}.hook_mlp_out"][0]
        with torch.no_grad():
            torch.testing.assert_close(ctx.error_vectors[layer] + tc(x), y, atol=1e-5, rtol=1e-5)
        assert ctx.error_vectors[layer, 0].abs().max() > 0
    result = attribute_prompt(rm, PROMPT)
    assert (result.graph.active_features[:, 1] == 0).any()  # features active at position 0 are nodes
    rows = validate_by_intervention(rm, result, n_features=3)
    assert rows["n_features"] == 3 and rows["direct_max_abs_error"] < 1e-3
    assert all(0 <= f["pos"] < len(result.tokens) for f in top_features(result, n=5))


def test_model_with_bos_at_id_0_keeps_its_bos_and_drops_only_it(tmp_path):
    """BOS prepended by to_tokens (``<|endoftext|>``, id 0, as for GPT-2): kept first, position 0 excluded."""
    model = tiny(tmp_path, prepend_bos=True)
    rm = replacement_model(model, {layer: random_transcoder(model.cfg.d_model, seed=layer)
                                   for layer in range(model.cfg.n_layers)})
    result = attribute_prompt(rm, PROMPT)
    assert result.tokens == model.to_tokens(PROMPT)[0].tolist() and result.tokens[0] == 0
    assert bos_positions(model) == 1 and rm.zero_positions == slice(0, 1)
    assert not (result.graph.active_features[:, 1] == 0).any()
