"""Local Hugging Face directories of the architectures users bring: GPT-2 (also without n_ctx in config.json),
Llama with Llama-3 rotary settings (rope_theta 500000, llama3 rope_scaling, grouped KV heads, head_dim !=
hidden/heads), Qwen2 (a context other than 2048; sliding-window layers) and Gemma-2 (soft caps, alternating
sliding windows, query_pre_attn_scalar), each built here with random weights by transformers' config classes and
``save_pretrained``, with a byte-level BPE tokenizer trained here on a few hundred words.

Each loads to a HookedTransformer whose logits equal transformers' (eager attention: transformers' reference, and
for Gemma-2 the only one that soft-caps attention) within 1e-4, or is refused saying why. The loader's own check
refuses a conversion that drops a field, and allow_mismatch lets it through with a warning.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from workbench.errors import WorkbenchError
from workbench.models import loader
from workbench.models.loader import (
    ContextCappedWarning,
    ConversionMismatch,
    ConversionMismatchWarning,
    UnsupportedConfig,
    load_hf_dir,
    load_model,
)

WORDS = ("the quick brown fox jumps over the lazy dog while seven wizards quietly judge boxing matches a model "
         "says one thing and computes another so we compare what it states with what it does numbers like 36 plus "
         "59 equal 95 and carry digits move left through every column of the sum").split()
TEXT = "the lazy fox says 36 plus 59 equal 95 while wizards judge what it does and carry digits move left"
TOLERANCE = 1e-4


def _corpus(n_words: int = 600) -> list[str]:
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(len(WORDS), (n_words,), generator=g).tolist()
    return [" ".join(WORDS[i] for i in idx[k:k + 12]) for k in range(0, n_words, 12)]


def bpe_tokenizer(specials: list[str], bos: str | None = None, eos: str | None = None, pad: str | None = None,
                  vocab: int = 300):
    """A byte-level BPE (GPT-2 / Llama-3 / Qwen2 style) trained on a few hundred words; the special tokens take
    ids 0, 1, ...; a BOS, if given, is added by the tokenizer's post-processor (as Llama-3's and Gemma's are)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(_corpus(), trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if bos is not None:
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                           special_tokens=[(bos, tok.token_to_id(bos))])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok, PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad)


def _save(path, hf, tok, fast):
    path.mkdir(parents=True, exist_ok=True)
    hf.eval().save_pretrained(path, safe_serialization=True)
    tok.save(str(path / "tokenizer.json"))
    fast.save_pretrained(path)
    return hf


# initializer_range 0.2 (ten times the usual): random weights that make sharp predictions, so a field left behind
# moves log-probabilities by nats rather than by the 1e-3 of a near-uniform random model
SMALL = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             initializer_range=0.2)
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}


def gpt2_dir(path, drop_n_ctx: bool = False, **over):
    from transformers import GPT2Config, GPT2LMHeadModel

    tok, fast = bpe_tokenizer(["<|endoftext|>"], eos="<|endoftext|>")
    fast.bos_token = "<|endoftext|>"  # as GPT-2's: BOS = EOS = <|endoftext|>, never added by the tokenizer
    torch.manual_seed(0)
    kw = dict(n_layer=2, n_embd=32, n_head=4, vocab_size=len(fast), n_positions=64, initializer_range=0.2,
              bos_token_id=0, eos_token_id=0)
    hf = _save(path, GPT2LMHeadModel(GPT2Config(**{**kw, **over})), tok, fast)
    config = json.loads((path / "config.json").read_text())
    if drop_n_ctx:
        config.pop("n_ctx", None)
    else:
        config["n_ctx"] = config["n_positions"]  # older GPT-2 config.json files carry both
    (path / "config.json").write_text(json.dumps(config))
    return hf


def llama_dir(path, **over):
    from transformers import LlamaConfig, LlamaForCausalLM

    tok, fast = bpe_tokenizer(["<|begin_of_text|>", "<|end_of_text|>"], bos="<|begin_of_text|>",
                              eos="<|end_of_text|>")
    torch.manual_seed(0)
    kw = dict(SMALL, head_dim=24, max_position_embeddings=256, rope_theta=500000.0, rope_scaling=dict(LLAMA3_ROPE),
              rms_norm_eps=1e-5, vocab_size=len(fast), bos_token_id=0, eos_token_id=1)
    return _save(path, LlamaForCausalLM(LlamaConfig(**{**kw, **over})), tok, fast)


def qwen2_dir(path, **over):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok, fast = bpe_tokenizer(["<|endoftext|>"], eos="<|endoftext|>", pad="<|endoftext|>")  # no BOS, as Qwen2's
    torch.manual_seed(0)
    kw = dict(SMALL, max_position_embeddings=512, rope_theta=1000000.0, vocab_size=len(fast), bos_token_id=None,
              eos_token_id=0, tie_word_embeddings=True)
    hf = Qwen2ForCausalLM(Qwen2Config(**{**kw, **over}))
    with torch.no_grad():  # Qwen2 has q/k/v biases: zero at initialisation, random here so that they count
        for layer in hf.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.5)
    return _save(path, hf, tok, fast)


def gemma2_dir(path, **over):
    from transformers import Gemma2Config, Gemma2ForCausalLM

    tok, fast = bpe_tokenizer(["<pad>", "<eos>", "<bos>"], bos="<bos>", eos="<eos>", pad="<pad>")
    torch.manual_seed(0)
    kw = dict(SMALL, head_dim=32, max_position_embeddings=256, sliding_window=8, query_pre_attn_scalar=24,
              attn_logit_softcapping=5.0, final_logit_softcapping=3.0, vocab_size=len(fast), pad_token_id=0,
              eos_token_id=1, bos_token_id=2)
    hf = Gemma2ForCausalLM(Gemma2Config(**{**kw, **over}))
    with torch.no_grad():  # Gemma's norms scale by 1 + w, w = 0 at initialisation: random here
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.normal_(0, 0.3)
    return _save(path, hf, tok, fast)


def _reference(path):
    """The transformers model, as transformers loads it, with its reference (eager) attention."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), attn_implementation="eager").eval()


def _probe_tokens(model, n: int = 48) -> torch.Tensor:
    """The tokenized text plus random ids to ``n`` positions (past the check's 32, past Gemma-2's window)."""
    text = model.to_tokens(TEXT)[0]
    g = torch.Generator().manual_seed(1)
    rest = torch.randint(model.cfg.d_vocab, (n - len(text),), generator=g) if n > len(text) else text[:0]
    return torch.stack([torch.cat([text, rest])[:n], torch.randint(model.cfg.d_vocab, (n,), generator=g)])


def _max_logit_diff(model, hf, toks) -> tuple[float, float]:
    """(max |logit difference| after removing each position's mean, max |log-prob difference|)."""
    with torch.no_grad():
        ours, theirs = model(toks), hf(toks).logits
    centred = ((ours - ours.mean(-1, keepdim=True)) - (theirs - theirs.mean(-1, keepdim=True))).abs().max()
    logp = (ours.log_softmax(-1) - theirs.log_softmax(-1)).abs().max()
    return float(centred), float(logp)


CASES = {
    "gpt2": (gpt2_dir, {}),
    "gpt2-no-n_ctx": (gpt2_dir, {"drop_n_ctx": True}),
    "llama3": (llama_dir, {}),
    "qwen2": (qwen2_dir, {}),
    "qwen2-sliding": (qwen2_dir, {"use_sliding_window": True, "sliding_window": 8, "max_window_layers": 1}),
    "gemma2": (gemma2_dir, {}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_logits_equal_transformers(tmp_path, case):
    build, kw = CASES[case]
    path = tmp_path / f"{case}-tiny"  # "llama3-tiny", "gemma2-tiny": words TransformerLens would read as Llama,
    build(path, **kw)                 # Gemma-1; the architecture must come from config.json
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConversionMismatchWarning)
        model = load_model(path)
    hf = _reference(path)
    centred, logp = _max_logit_diff(model, hf, _probe_tokens(model))
    assert centred < TOLERANCE and logp < TOLERANCE, (case, centred, logp)
    assert model.conversion_max_diff < TOLERANCE
    assert model.cfg.original_architecture == hf.config.architectures[0]
    assert model.cfg.model_name == path.name and model.cfg.tokenizer_name == str(path.resolve())


def test_carried_fields(tmp_path):
    """What TransformerLens's own mappings drop or read wrongly, carried from config.json."""
    llama_dir(tmp_path / "llama")
    cfg = load_hf_dir(tmp_path / "llama").cfg
    assert (cfg.rotary_base, cfg.use_NTK_by_parts_rope, cfg.NTK_by_parts_factor, cfg.NTK_original_ctx_len) == \
        (500000.0, True, 8.0, 64)
    assert (cfg.d_head, cfg.rotary_dim, cfg.n_heads, cfg.n_key_value_heads, cfg.n_ctx) == (24, 24, 4, 2, 256)

    qwen2_dir(tmp_path / "qwen", use_sliding_window=True, sliding_window=8, max_window_layers=1)
    cfg = load_hf_dir(tmp_path / "qwen").cfg
    assert (cfg.n_ctx, cfg.rotary_base, cfg.default_prepend_bos) == (512, 1000000.0, False)
    assert (cfg.use_local_attn, cfg.window_size, cfg.attn_types) == (True, 8, ["global", "local"])

    gemma2_dir(tmp_path / "gemma2-9b-it")  # "gemma-2-" / "gemma" in a path: TransformerLens's name-based cases
    model = load_hf_dir(tmp_path / "gemma2-9b-it")
    cfg = model.cfg
    assert cfg.original_architecture == "Gemma2ForCausalLM" and cfg.use_normalization_before_and_after
    assert (cfg.attn_scores_soft_cap, cfg.output_logits_soft_cap) == (5.0, 3.0)
    assert (cfg.use_local_attn, cfg.window_size, cfg.attn_types) == (True, 8, ["local", "global"])
    assert (cfg.d_head, cfg.attn_scale, cfg.n_ctx) == (32, 24 ** 0.5, 256)

    gpt2_dir(tmp_path / "gpt2", drop_n_ctx=True)
    assert "n_ctx" not in json.loads((tmp_path / "gpt2" / "config.json").read_text())
    assert load_hf_dir(tmp_path / "gpt2").cfg.n_ctx == 64


def _drop(monkeypatch, **fields):
    """Make the loader's TransformerLens config lose ``fields`` (set to these values), as a mapping that ignores
    them would."""
    original = loader._tl_config

    def lossy(*args, **kwargs):
        cfg = original(*args, **kwargs)
        for key, value in fields.items():
            setattr(cfg, key, value)
        return cfg

    monkeypatch.setattr(loader, "_tl_config", lossy)


def test_dropped_rope_theta_is_refused_then_allowed(tmp_path, monkeypatch):
    llama_dir(tmp_path / "llama")
    _drop(monkeypatch, rotary_base=10000.0)  # what TransformerLens's LlamaForCausalLM mapping does
    with pytest.raises(ConversionMismatch) as err:
        load_model(tmp_path / "llama")
    msg = str(err.value)
    assert "\n" not in msg and "nats" in msg and "position" in msg and "rope_theta=500000.0" in msg, msg
    assert "first position agrees" in msg and "allow_mismatch" in msg
    with pytest.warns(ConversionMismatchWarning, match="loaded anyway"):
        model = load_model(tmp_path / "llama", allow_mismatch=True)
    assert model.conversion_max_diff > 0.1  # nats: the measured disagreement is reported, not hidden


def test_position_independent_mismatch_names_the_first_position(tmp_path, monkeypatch):
    gemma2_dir(tmp_path / "g")
    _drop(monkeypatch, output_logits_soft_cap=-1.0)
    with pytest.raises(ConversionMismatch, match="first position differs already") as err:
        load_hf_dir(tmp_path / "g")
    assert "final_logit_softcapping=3.0" in str(err.value)


@pytest.mark.parametrize("build, over, field", [
    (llama_dir, {"attention_bias": True}, "attention_bias"),
    (llama_dir, {"mlp_bias": True}, "mlp_bias"),
    (llama_dir, {"rope_scaling": {"rope_type": "longrope", "short_factor": [1.0] * 12, "long_factor": [2.0] * 12,
                                  "factor": 4.0, "original_max_position_embeddings": 64}}, "rope_scaling"),
    (llama_dir, {"rope_scaling": {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 64}},
     "rope_scaling"),
    (qwen2_dir, {"use_sliding_window": True, "sliding_window": 8, "max_window_layers": 1,
                 "rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "rope_scaling"),
])
def test_fields_transformer_lens_cannot_host_are_refused(tmp_path, build, over, field):
    build(tmp_path / "m", **over)
    with pytest.raises(UnsupportedConfig) as err:
        load_model(tmp_path / "m")
    msg = str(err.value)
    assert "\n" not in msg and f"sets {field}=" in msg and "cannot host" in msg, msg


@pytest.mark.parametrize("kind", ["linear", "dynamic"])
def test_linear_and_dynamic_rope_scaling_are_carried(tmp_path, kind):
    """linear: every frequency divided by the factor; dynamic: transformers rescales only past
    max_position_embeddings, which is as far as the model is hosted, so its frequencies are the default ones."""
    llama_dir(tmp_path / "m", rope_scaling={"rope_type": kind, "factor": 4.0})
    model = load_model(tmp_path / "m")
    assert model.cfg.rotary_scaling_factor == (4.0 if kind == "linear" else 1.0)
    assert not model.cfg.use_NTK_by_parts_rope
    assert _max_logit_diff(model, _reference(tmp_path / "m"), _probe_tokens(model))[1] < TOLERANCE
    if kind == "dynamic":
        with pytest.raises(UnsupportedConfig, match="beyond max_position_embeddings"):
            load_hf_dir(tmp_path / "m", n_ctx=512)


def test_architecture_without_a_local_mapping_names_what_would_host_it(tmp_path):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    tok, fast = bpe_tokenizer(["<pad>", "<eos>", "<bos>"], bos="<bos>", eos="<eos>", pad="<pad>")
    _save(tmp_path / "g3", Gemma3ForCausalLM(Gemma3TextConfig(**SMALL, head_dim=16, vocab_size=len(fast))), tok,
          fast)
    with pytest.raises(WorkbenchError) as err:
        load_model(tmp_path / "g3")
    msg = str(err.value)
    assert "\n" not in msg and "Gemma3ForCausalLM" in msg and "TransformerBridge" in msg, msg


def test_context_is_config_json_s_capped_by_the_mask_budget(tmp_path, monkeypatch):
    qwen2_dir(tmp_path / "q")
    assert load_hf_dir(tmp_path / "q", n_ctx=96).cfg.n_ctx == 96
    monkeypatch.setattr(loader, "MASK_BUDGET_BYTES", 2 * 256 * 256)  # two layers of a 256-position mask
    with pytest.warns(ContextCappedWarning, match="max_position_embeddings=512 is hosted as n_ctx=256"):
        assert load_hf_dir(tmp_path / "q").cfg.n_ctx == 256


def test_learned_position_table_fixes_the_context(tmp_path):
    gpt2_dir(tmp_path / "g")
    with pytest.raises(WorkbenchError, match="learned position table has 64 rows"):
        load_hf_dir(tmp_path / "g", n_ctx=128)


def test_transformers_model_is_freed(tmp_path, monkeypatch):
    import gc
    import weakref

    from transformers import AutoModelForCausalLM

    llama_dir(tmp_path / "m")
    seen = []
    original = AutoModelForCausalLM.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        out = original(cls, *args, **kwargs)
        seen.append(weakref.ref(out[0]))
        return out

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(spy))
    model = load_model(tmp_path / "m")
    gc.collect()
    assert model is not None and len(seen) == 1 and seen[0]() is None


@pytest.mark.parametrize("case", ["gpt2", "llama3", "qwen2", "gemma2"])
def test_generation_gives_transformer_lens_tokens(tmp_path, case):
    """The workbench's generation loop (rows leave the batch as they end) against TransformerLens's ``generate``
    on each architecture: left-padded prompts, greedy and seeded sampling."""
    from tests.unit.test_generation import ours_against_transformer_lens

    build, kw = CASES[case]
    build(tmp_path / "m", **kw)
    model = load_model(tmp_path / "m")
    prompts = ["Tom has 3 apples.", "36+59=", "The answer is", "a b c d e f g h", "x"]
    for temperature in (0.0, 1.0):
        ours_against_transformer_lens(model, prompts, 16, temperature, "left", seed=2)
