import json

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from tests.helpers import tiny_model
from workbench.errors import WorkbenchError
from workbench.models import export as export_module
from workbench.models.checkpoint import save_checkpoint
from workbench.models.export import ExportRefused, export_hf, hf_target
from workbench.models.loader import load_model
from workbench.models.tokenizer import build_char_tokenizer

PROMPTS = ["36+59=", "123+456= why?", "7+8= 7+8+0=15 ans 15", "999+1="]
TOL = 1e-4  # float32 logits


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def hf_logits(directory, tokens):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(directory), local_files_only=True).eval()
    with torch.no_grad():
        return hf, hf(tokens).logits


def max_diff(model, directory, tokens):
    with torch.no_grad():
        ours = model(tokens)
    hf, theirs = hf_logits(directory, tokens)
    return hf, float((ours - theirs).abs().max())


def randomize(model: torch.nn.Module, seed: int, scale: float = 0.2, skip=()) -> None:
    """Every parameter random (norm weights around 1), so that no bias or norm is trivially zero or one."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(s in name for s in skip):
                continue
            noise = torch.randn(p.shape, generator=g) * scale
            is_norm_weight = p.dim() == 1 and ("ln" in name or "norm" in name) and not name.endswith(".b")
            p.copy_(noise + 1 if is_norm_weight and not name.endswith("bias") else noise)


def tl_model(seed: int = 0, **overrides) -> HookedTransformer:
    base = dict(n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=48, n_ctx=64, d_vocab=24, act_fn="gelu",
                normalization_type="LN", seed=seed)
    model = HookedTransformer(HookedTransformerConfig(**(base | overrides)))
    randomize(model, seed, skip=("unembed.b_U",) if overrides.get("positional_embedding_type") == "rotary" else ())
    return model.eval()


def random_tokens(model, batch=3, pos=40, seed=1):
    return torch.randint(0, model.cfg.d_vocab, (batch, pos), generator=torch.Generator().manual_seed(seed))


LLAMA_LIKE = dict(positional_embedding_type="rotary", rotary_dim=8, normalization_type="RMS", final_rms=True,
                  gated_mlp=True, act_fn="silu")


def test_organism_round_trip(tmp_path):
    model = load_model("adder-direct")
    out = export_hf(model, tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["architectures"] == ["GPT2LMHeadModel"]
    assert {"model.safetensors", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    # The saved tokenizer gives the ids TransformerLens gives (both prepend BOS once).
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(out))
    assert tok(PROMPTS[0]).input_ids == model.to_tokens(PROMPTS[0])[0].tolist()
    tokens = model.to_tokens(PROMPTS, padding_side="right")
    hf, diff = max_diff(model, out, tokens)
    assert diff < TOL
    # The exported model generates the organism's answer.
    prompt = tok("36+59=", return_tensors="pt").input_ids
    generated = hf.generate(prompt, max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id)
    ours = model.generate("36+59=", max_new_tokens=3, do_sample=False, verbose=False)
    assert tok.decode(generated[0, prompt.shape[1]:], skip_special_tokens=True) == ours[len("36+59="):] == "95"


def hf_gpt2_dir(path, seed=0):
    """A random GPT-2 with every weight random (biases, LayerNorms): folding them is then not a no-op."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = build_char_tokenizer()
    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=len(tok), n_positions=64, n_ctx=64,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    hf = GPT2LMHeadModel(cfg).eval()
    randomize(hf, seed)
    hf.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return hf


def test_folded_hf_gpt2_round_trip(tmp_path):
    original = hf_gpt2_dir(tmp_path / "src")
    model = load_model(tmp_path / "src")  # LN folded (LNPre), writing weights and unembed centred, b_V in b_O
    assert model.cfg.normalization_type == "LNPre"
    assert model.blocks[0].attn.b_V.abs().max() == 0 and model.unembed.b_U.abs().max() > 0
    out = export_hf(model, tmp_path / "out")
    tokens = model.to_tokens(PROMPTS, padding_side="right")
    _, diff = max_diff(model, out, tokens)
    assert diff < TOL
    # Same distributions as the original (the centred unembed moves logits by a constant per position), and the
    # export loads back through the workbench loader.
    with torch.no_grad():
        _, exported = hf_logits(out, tokens)
        assert torch.allclose(exported.log_softmax(-1), original(tokens).logits.log_softmax(-1), atol=1e-4)
        assert torch.allclose(load_model(out)(tokens).log_softmax(-1), exported.log_softmax(-1), atol=1e-4)


@pytest.mark.parametrize("overrides", [
    {},
    {"act_fn": "gelu_new", "use_attn_scale": False},
    {"act_fn": "relu", "attn_scale": 3.0, "scale_attn_by_inverse_layer_idx": True},
    {"attn_only": True, "normalization_type": "LNPre"},
], ids=["gelu", "gelu_new-no-scale", "relu-odd-scale", "attn-only-lnpre"])
def test_gpt2_variants(tmp_path, overrides):
    model = tl_model(**overrides)
    assert hf_target(model) == "gpt2"
    out = export_hf(model, tmp_path / "hf")
    _, diff = max_diff(model, out, random_tokens(model))
    assert diff < TOL


def test_our_checkpoint_round_trip(tmp_path):
    save_checkpoint(tiny_model(seed=5), tmp_path / "ck")
    model = load_model(tmp_path / "ck")
    out = export_hf(model, tmp_path / "ck" / "hf")  # beside the checkpoint, not over it
    _, diff = max_diff(model, out, model.to_tokens(PROMPTS, padding_side="right"))
    assert diff < TOL
    with pytest.raises(WorkbenchError, match="holds a workbench checkpoint"):
        export_hf(model, tmp_path / "ck")


def hf_llama_dir(path, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_char_tokenizer()
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, rope_theta=500000.0,
                      tie_word_embeddings=False, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    hf = LlamaForCausalLM(cfg).eval()
    randomize(hf, seed)
    hf.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return hf


def test_hf_llama_round_trip(tmp_path):
    hf_llama_dir(tmp_path / "src")
    model = load_model(tmp_path / "src")  # RMS folded (RMSPre), grouped K/V heads
    assert model.cfg.n_key_value_heads == 2 and model.cfg.normalization_type == "RMSPre"
    out = export_hf(model, tmp_path / "out")
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["num_key_value_heads"] == 2
    assert config["rope_theta"] == model.cfg.rotary_base
    _, diff = max_diff(model, out, model.to_tokens(PROMPTS, padding_side="right"))
    assert diff < TOL


@pytest.mark.parametrize("overrides", [
    {"n_key_value_heads": 2, "rotary_base": 500000},
    {"n_key_value_heads": 1, "rotary_base": 500000, "rotary_adjacent_pairs": True, "attn_scale": 2.0},
    {"normalization_type": "RMSPre", "rotary_scaling_factor": 4.0},
    {"n_key_value_heads": 2, "use_NTK_by_parts_rope": True, "NTK_by_parts_factor": 8.0, "NTK_original_ctx_len": 16,
     "rotary_base": 500000},
    {"n_key_value_heads": 2, "attn_only": True, "act_fn": "gelu"},
], ids=["gqa-theta", "mqa-adjacent-pairs-odd-scale", "rmspre-linear-scaling", "llama3-scaling", "attn-only"])
def test_llama_variants(tmp_path, overrides):
    model = tl_model(**(LLAMA_LIKE | overrides))  # every bias random: q/k/v/o and b_in, b_out
    assert hf_target(model) == "llama"
    out = export_hf(model, tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    assert config["rope_theta"] == float(model.cfg.rotary_base) and config["attention_bias"]
    assert config["mlp_bias"] == (not model.cfg.attn_only)
    _, diff = max_diff(model, out, random_tokens(model, pos=64))
    assert diff < TOL


@pytest.mark.parametrize("overrides, field", [
    ({"act_fn": "solu_ln"}, "act_fn='solu_ln'"),
    ({"d_head": 4}, "d_head=4"),
    ({"parallel_attn_mlp": True}, "parallel_attn_mlp"),
    ({"positional_embedding_type": "shortformer"}, "positional_embedding_type='shortformer'"),
    ({"normalization_type": "RMS"}, "normalization_type='RMS'"),
    ({"normalization_type": None}, "normalization_type=None"),
    ({"gated_mlp": True}, "gated_mlp=True"),
    ({"d_vocab_out": 30}, "d_vocab_out"),
    ({**LLAMA_LIKE, "normalization_type": "LN", "final_rms": False}, "normalization_type='LN'"),
    ({**LLAMA_LIKE, "gated_mlp": False}, "gated_mlp=False"),
    ({**LLAMA_LIKE, "rotary_dim": 4}, "rotary_dim=4"),
    ({**LLAMA_LIKE, "use_yarn_rope": True}, "use_yarn_rope"),
])
def test_refusals_name_the_field(tmp_path, overrides, field):
    model = HookedTransformer(HookedTransformerConfig(**(dict(n_layers=1, d_model=32, n_heads=4, d_head=8, d_mlp=48,
                                                               n_ctx=16, d_vocab=24, act_fn="gelu",
                                                               normalization_type="LN") | overrides)))
    with pytest.raises(ExportRefused, match=f"cannot export.*{field.replace('(', '.').replace(')', '.')}"):
        export_hf(model, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_unembed_bias_refused_where_it_has_no_place(tmp_path):
    llama = tl_model(**LLAMA_LIKE)
    with torch.no_grad():
        llama.unembed.b_U.normal_()
    with pytest.raises(ExportRefused, match="unembed.b_U"):
        export_hf(llama, tmp_path / "a")
    # GPT-2 centres before ln_f: any b_U, also over more tokens than d_model, goes into ln_f's bias exactly.
    wide = tl_model(d_vocab=80)
    assert wide.unembed.b_U.abs().min() > 0
    _, diff = max_diff(wide, export_hf(wide, tmp_path / "b"), random_tokens(wide))
    assert diff < TOL
    with torch.no_grad():  # except where ln_f's weight leaves no direction free for it
        wide.ln_final.w[3] = 0.0
    with pytest.raises(ExportRefused, match="unembed.b_U.*ln_final.w"):
        export_hf(wide, tmp_path / "c")


def test_a_wrong_export_is_caught_before_it_is_written(tmp_path, monkeypatch):
    model = tl_model()
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "notes.txt").write_text("mine")
    monkeypatch.setattr(export_module, "_q_scale", lambda model, layer: 1.5)
    with pytest.raises(ExportRefused, match="logits up to .* nothing was written"):
        export_hf(model, tmp_path / "hf")
    assert [p.name for p in (tmp_path / "hf").iterdir()] == ["notes.txt"]
