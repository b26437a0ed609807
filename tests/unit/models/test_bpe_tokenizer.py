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
    for name in ("story-cot-faithful", "story-hint"):
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
