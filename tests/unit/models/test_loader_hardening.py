"""Damaged or inconsistent model files are refused as one-line WorkbenchErrors that name the file.

Checkpoints are copies of a shipped organism, damaged one way each; Hugging Face directories are tiny random
GPT-2s (and one Llama) saved with save_pretrained.
"""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.helpers import edit_json, edit_tensors, truncate
from workbench.errors import WorkbenchError
from workbench.models.checkpoint import load_checkpoint
from workbench.models.loader import load_model
from workbench.models.organisms import load_card
from workbench.models.tokenizer import build_char_tokenizer
from workbench.models.zoo import organism_dir


def _refused(load, path, names: str) -> str:
    """Load ``path``, expect a WorkbenchError of one line naming ``names`` (a file under ``path``)."""
    with pytest.raises(WorkbenchError) as err:
        load(path)
    msg = str(err.value)
    assert "\n" not in msg
    assert str(path / names) in msg, msg
    return msg





# ---- our checkpoint format ---------------------------------------------------------------------------------------


@pytest.fixture
def ckpt(tmp_path):
    out = tmp_path / "ck"
    shutil.copytree(organism_dir("adder-direct"), out, ignore=shutil.ignore_patterns("transcoders"))
    return out


def _htc(edit):
    return lambda d: edit_json(d / "config.json", lambda c: edit(c["hooked_transformer_config"]))


CHECKPOINT_DAMAGE = {
    "truncated weights": ("model.safetensors", lambda d: truncate(d / "model.safetensors"), "truncated"),
    "empty weights": ("model.safetensors", lambda d: (d / "model.safetensors").write_bytes(b""), "truncated"),
    "config a list": ("config.json", lambda d: (d / "config.json").write_text("[1, 2]"), "JSON list"),
    "config a number": ("config.json", lambda d: (d / "config.json").write_text("5"), "JSON number"),
    "config not JSON": ("config.json", lambda d: (d / "config.json").write_text("{format"), "not valid JSON"),
    "config empty": ("config.json", lambda d: (d / "config.json").write_text(""), "empty"),
    "config not UTF-8": ("config.json", lambda d: (d / "config.json").write_bytes(b"\xff\xfe{}"), "not UTF-8"),
    "no model config": ("config.json", lambda d: edit_json(d / "config.json", lambda c: c.pop(
        "hooked_transformer_config")), "no hooked_transformer_config"),
    "model config a list": ("config.json", lambda d: edit_json(d / "config.json", lambda c: c.update(
        hooked_transformer_config=[1])), "must be a JSON object"),
    "lacks d_model": ("config.json", _htc(lambda h: h.pop("d_model")), "lacks d_model"),
    "unknown field": ("config.json", _htc(lambda h: h.update(bogus=1)), "not a valid TransformerLens config"),
    "bad dtype": ("config.json", _htc(lambda h: h.update(dtype="float99")), "float99"),
    "bad act_fn": ("config.json", _htc(lambda h: h.update(act_fn="nope")), "not a valid TransformerLens config"),
    "n_heads a string": ("config.json", _htc(lambda h: h.update(n_heads="four")), "TransformerLens"),
    "newer format": ("config.json", lambda d: edit_json(d / "config.json", lambda c: c.update(format_version=9)),
                     "newer workbench"),
    "d_mlp contradicts weights": ("model.safetensors", _htc(lambda h: h.update(d_mlp=256)),
                                  "wrong shapes: blocks.0.mlp.W_in is [128, 512] not [128, 256]"),
    "fewer layers than weights": ("model.safetensors", _htc(lambda h: h.update(n_layers=2)),
                                  "unexpected tensors blocks.2."),
    "more layers than weights": ("model.safetensors", _htc(lambda h: h.update(n_layers=4)),
                                 "missing tensors blocks.3."),
    "tensor missing": ("model.safetensors", lambda d: edit_tensors(d / "model.safetensors", lambda s: s.pop(
        "unembed.W_U")), "missing tensors unembed.W_U"),
    "tensor extra": ("model.safetensors", lambda d: edit_tensors(d / "model.safetensors", lambda s: s.update(
        stray=torch.zeros(3))), "unexpected tensors stray"),
    "tokenizer garbage": ("tokenizer.json", lambda d: (d / "tokenizer.json").write_text("garbage"),
                          "not valid JSON"),
    "tokenizer not UTF-8": ("tokenizer.json", lambda d: (d / "tokenizer.json").write_bytes(b"\x80\x81{"),
                            "not UTF-8"),
    "tokenizer not a tokenizer": ("tokenizer.json", lambda d: (d / "tokenizer.json").write_text('{"foo": 1}'),
                                  "expected a Hugging Face tokenizer, but it cannot be loaded"),
    "tokenizer config garbage": ("tokenizer_config.json", lambda d: (d / "tokenizer_config.json").write_text("[[["),
                                 "not valid JSON"),
    "tokenizer larger than d_vocab": ("tokenizer.json", _htc(lambda h: h.update(d_vocab=40)),
                                      "48 tokens but"),
}


@pytest.mark.parametrize("case", list(CHECKPOINT_DAMAGE))
def test_damaged_checkpoint_is_refused_naming_the_file(ckpt, case):
    name, damage, says = CHECKPOINT_DAMAGE[case]
    damage(ckpt)
    msg = _refused(load_model, ckpt, name)
    assert says in msg


@pytest.mark.parametrize("text", ["[]", "{not json", ""])
def test_load_checkpoint_itself_names_a_damaged_config(ckpt, text):
    (ckpt / "config.json").write_text(text)
    _refused(load_checkpoint, ckpt, "config.json")


def test_undamaged_copy_still_loads(ckpt):
    toks = load_model("adder-direct").to_tokens("36+59=")
    assert torch.equal(load_model(ckpt)(toks), load_model("adder-direct")(toks))


@pytest.mark.parametrize("text, says", [
    ("garbage", "not valid JSON"),
    ("[]", "JSON list"),
    ('{"name": "x"}', "lacks evaluation"),
    ('{"name": "x", "evaluation": {"checks": 5}}', "evaluation.checks must be a list"),
    ('{"name": 3, "evaluation": {"checks": []}}', "name must be a string"),
])
def test_damaged_card_is_refused_naming_the_file(ckpt, text, says):
    (ckpt / "card.json").write_text(text)
    assert says in _refused(load_card, ckpt, "card.json")


# ---- local Hugging Face directories ------------------------------------------------------------------------------


def _tiny_hf(path, llama: bool = False):
    """A random 1-layer GPT-2 (or Llama) with the char tokenizer, saved as a Hugging Face directory."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    tok = build_char_tokenizer(model_max_length=32)
    ids = dict(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    if llama:
        hf = LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                          num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32,
                                          **ids))
    else:
        hf = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, n_positions=32, n_ctx=32, **ids))
    hf.eval().save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return hf


@pytest.fixture
def hf_dir(tmp_path):
    _tiny_hf(tmp_path / "hf")
    return tmp_path / "hf"


HF_DAMAGE = {
    "truncated weights": ("model.safetensors", lambda d: truncate(d / "model.safetensors"), "truncated"),
    "config a list": ("config.json", lambda d: (d / "config.json").write_text("[]"), "JSON list"),
    "config a string": ("config.json", lambda d: (d / "config.json").write_text('"model_type"'), "JSON string"),
    "config not UTF-8": ("config.json", lambda d: (d / "config.json").write_bytes(b"\xff\xfe"), "not UTF-8"),
    "tokenizer garbage": ("tokenizer.json", lambda d: (d / "tokenizer.json").write_text("garbage"),
                          "not valid JSON"),
    "tokenizer not UTF-8": ("tokenizer.json", lambda d: (d / "tokenizer.json").write_bytes(b"\x80"), "not UTF-8"),
    "tokenizer config garbage": ("tokenizer_config.json",
                                 lambda d: (d / "tokenizer_config.json").write_text("{"), "not valid JSON"),
    "generation config garbage": ("generation_config.json",
                                  lambda d: (d / "generation_config.json").write_text("x"), "not valid JSON"),
    "tensor missing": ("model.safetensors", lambda d: edit_tensors(d / "model.safetensors", lambda s: s.pop(
        "transformer.h.0.mlp.c_fc.weight")), "lacks 1 tensor(s)"),
}


@pytest.mark.parametrize("case", list(HF_DAMAGE))
def test_damaged_hf_dir_is_refused_naming_the_file(hf_dir, case):
    name, damage, says = HF_DAMAGE[case]
    damage(hf_dir)
    assert says in _refused(load_model, hf_dir, name)


def test_hf_tokenizer_that_parses_as_json_but_not_as_a_tokenizer(hf_dir):
    (hf_dir / "tokenizer.json").write_text('{"version": "1.0"}')
    assert "cannot be loaded (Exception: " in _refused(load_model, hf_dir.resolve(), "tokenizer.json")


@pytest.mark.parametrize("edit, says", [
    (lambda c: c.update(n_embd=32), "RuntimeError"),  # the config contradicts the weights
    (lambda c: c.update(model_type="nonsense"), "ValueError"),
    (lambda c: c.update(architectures=["FooForCausalLM"]), "NotImplementedError"),
])
def test_failed_conversion_names_the_directory_and_the_error(hf_dir, edit, says):
    edit_json(hf_dir / "config.json", edit)
    with pytest.raises(WorkbenchError) as err:
        load_model(hf_dir)
    msg = str(err.value)
    assert "\n" not in msg and f"in {hf_dir.resolve()} to TransformerLens ({says}: " in msg


@pytest.mark.parametrize("name, llama", [("my-llama-finetune", False), ("gemma-2-gpt2", False),
                                         ("tiny-llama", True)])
def test_architecture_comes_from_config_json_not_the_path(tmp_path, name, llama):
    """TransformerLens guesses Llama or Gemma from those words in a path; the architecture must come from
    config.json, and the model keep its own name and tokenizer path."""
    hf = _tiny_hf(tmp_path / name, llama=llama)
    model = load_model(tmp_path / name)
    toks = model.to_tokens("36+59=")
    assert torch.allclose(model(toks).log_softmax(-1), hf(toks).logits.log_softmax(-1), atol=1e-5)
    assert model.cfg.original_architecture == ("LlamaForCausalLM" if llama else "GPT2LMHeadModel")
    assert model.cfg.model_name == name and model.cfg.tokenizer_name == str((tmp_path / name).resolve())
