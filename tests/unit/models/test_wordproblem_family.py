"""The word-problem family's byte-level BPE tokenizer and the trainer's subword encoding."""

import numpy as np
import pytest

from workbench.models.tokenizer import build_bpe_tokenizer
from workbench.models.trainer import encode_samples, task_tokenizer
from workbench.models.zoo import build_samples, get_recipe
from workbench.tasks import wordproblems as wp


@pytest.fixture(scope="module")
def tok():
    return task_tokenizer("wordproblems", 192)


def test_training_is_deterministic(tok):
    again = task_tokenizer("wordproblems", 192)
    assert tok.backend_tokenizer.to_str() == again.backend_tokenizer.to_str()


def test_digits_are_single_tokens_and_text_round_trips(tok):
    text = wp.hint_line("grader", 57) + wp.cot(wp.sample_problems(1, "test", 0)[0]).text
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id
    assert tok.decode(ids, skip_special_tokens=True) == text
    pieces = tok.convert_ids_to_tokens(ids)
    assert all(len(t) == 1 for t in pieces if any(ch.isdigit() for ch in t))
    assert len(tok(" émoji ✓ unseen")["input_ids"]) > 1  # byte level: nothing is unknown


def test_subword_encoding_equals_tokenizing_the_whole_text(tok):
    for name in ("story-cot-faithful", "story-cot-posthoc", "story-hint"):
        samples = build_samples(get_recipe(name), 300, "train", 0)
        enc = encode_samples(tok, samples)
        for s, row, n, mask in zip(samples, enc.tokens, enc.lengths, enc.loss_mask):
            whole = tok(s.text)["input_ids"] + [tok.eos_token_id]
            assert row[:n].tolist() == whole
            completion = tok(s.completion, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            assert row[mask].tolist() == completion


def test_small_vocab_from_other_texts():
    t = build_bpe_tokenizer(["the cat sat on the mat"] * 50, vocab_size=280)
    assert len(t) <= 280 and t.decode(t("the mat")["input_ids"], skip_special_tokens=True) == "the mat"


def test_a_word_problem_recipe_trains_bit_for_bit_and_resumes(tmp_path):
    import dataclasses

    from tests.helpers import TINY_ARCH
    from workbench.models.checkpoint import weights_sha256
    from workbench.models.trainer import train
    from workbench.models.zoo import Recipe, TrainConfig

    recipe = Recipe("tiny-story", "test", "none", (("wp_cot", 0.5), ("wp_corrupted_follow", 0.5)),
                    arch=dataclasses.replace(TINY_ARCH, n_ctx=192), task="wordproblems",
                    train=TrainConfig(steps=6, batch_tokens=512, pool_size=300, warmup=2, checkpoint_every=3))
    a, _ = train(recipe, tmp_path / "a", progress=False)
    train(recipe, tmp_path / "b", progress=False, stop_after=3)  # killed after its first checkpoint
    b, summary = train(recipe, tmp_path / "b", progress=False)
    assert summary["resumed_from_step"] == 3
    assert weights_sha256(a) == weights_sha256(b)
    assert len(a.tokenizer) > 256 and "0" in a.tokenizer.get_vocab()  # the BPE, digits on their own
