"""Shared factories for tests: tiny random models and a tiny Hugging Face directory (no trained weights)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from transformer_lens import HookedTransformer

from workbench.models.tokenizer import build_char_tokenizer
from workbench.models.trainer import hooked_config
from workbench.models.zoo import ArchConfig, Recipe, TrainConfig

TINY_ARCH = ArchConfig(n_layers=1, d_model=32, n_heads=2, d_mlp=64, n_ctx=64)


def tiny_model(seed: int = 0, arch: ArchConfig = TINY_ARCH) -> HookedTransformer:
    tok = build_char_tokenizer(model_max_length=arch.n_ctx)
    torch.manual_seed(seed)
    model = HookedTransformer(hooked_config(arch, len(tok)), tokenizer=tok)
    return model.eval()


def tiny_recipe(steps: int = 12, checkpoint_every: int = 4) -> Recipe:
    """A few-step recipe on a small pool: enough to exercise determinism and resume."""
    return Recipe(
        "tiny", "test recipe", "none", (("cot", 0.5), ("corrupted_cot_read_off", 0.5)),
        arch=TINY_ARCH,
        train=TrainConfig(steps=steps, batch_tokens=512, pool_size=400, warmup=2, checkpoint_every=checkpoint_every),
    )


def with_steps(recipe: Recipe, steps: int) -> Recipe:
    return dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, steps=steps))


def tiny_hf_dir(path: Path, seed: int = 0):
    """Save a random 2-layer GPT-2 (safetensors) and the char tokenizer to ``path``; return the HF model."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = build_char_tokenizer()
    torch.manual_seed(seed)
    # n_ctx is in every real GPT-2 config.json and TransformerLens's config conversion reads it.
    cfg = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=len(tok), n_positions=64, n_ctx=64,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    hf = GPT2LMHeadModel(cfg).eval()
    hf.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return hf


# ---- damaging files, for the tests that check each damage is refused by name ---------------------------------------

def truncate(path: Path) -> None:
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])


def edit_json(path: Path, edit) -> None:
    import json

    obj = json.loads(Path(path).read_text())
    edit(obj)
    Path(path).write_text(json.dumps(obj))


def edit_tensors(path: Path, edit) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(str(path))
    edit(state)
    save_file(state, str(path), metadata={"format": "pt"})
