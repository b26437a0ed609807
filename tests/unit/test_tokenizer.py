import pytest

from tests.helpers import tiny_model
from workbench.models.tokenizer import (
    CHARSET,
    OutOfVocabulary,
    build_char_tokenizer,
    check_text,
    load_tokenizer,
    vocabulary_chars,
)


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer()


def test_one_token_per_character_and_bos_first(tok):
    ids = tok("36+59=").input_ids
    assert ids[0] == tok.bos_token_id
    assert len(ids) == 1 + len("36+59=")
    assert tok.convert_ids_to_tokens(ids[1:]) == list("36+59=")


@pytest.mark.parametrize("text", ["36+59= 6+9+0=15 3+5+1=09 ans 95", "hint:97 1+2=", CHARSET, " ", "a  b"])
def test_round_trip(tok, text):
    assert tok.decode(tok(text).input_ids, skip_special_tokens=True) == text


def test_vocabulary_is_the_charset(tok):
    assert vocabulary_chars(tok) == set(CHARSET)
    assert len(tok) == len(CHARSET) + 3


def test_out_of_vocabulary_is_named(tok):
    with pytest.raises(OutOfVocabulary, match=r"'\*' at position 2.*'!' at position 5"):
        check_text(tok, "36*59!")
    check_text(tok, "36+59=")  # no error


def test_unknown_character_never_silently_encoded(tok):
    # With no <unk> token the fast tokenizer itself refuses, so no code path can sneak in an unknown id.
    with pytest.raises(Exception):
        tok("36*59")


def test_save_load_round_trip(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    assert (tmp_path / "tokenizer.json").is_file()
    again = load_tokenizer(tmp_path)
    assert again("12+34=").input_ids == tok("12+34=").input_ids
    assert again.all_special_ids == tok.all_special_ids  # circuit-tracer reads this


def test_transformer_lens_uses_it_unchanged():
    model = tiny_model()
    toks = model.to_tokens("36+59=")
    assert toks[0, 0].item() == model.tokenizer.bos_token_id
    assert model.to_string(toks[0, 1:]) == "36+59="
    assert model.to_tokens("36+59=", prepend_bos=False).shape[1] == 6
    assert model.to_str_tokens("1+2=") == ["<bos>", "1", "+", "2", "="]
