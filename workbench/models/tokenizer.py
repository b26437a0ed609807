"""The organisms' character-level tokenizer: a real Hugging Face fast tokenizer, saved as ``tokenizer.json``.

One token per character, plus ``<pad>``, ``<bos>`` and ``<eos>``. Being a genuine ``PreTrainedTokenizerFast``
loaded from a directory means TransformerLens (``to_tokens``, ``to_string``, ``generate``), SAELens and
circuit-tracer (which needs ``all_special_ids``) use it unchanged. There is deliberately no ``<unk>``: a
character outside the vocabulary must be an error that names it, never a silent unknown token.
"""

from __future__ import annotations

import string
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from workbench.errors import WorkbenchError

if TYPE_CHECKING:
    from torch import Tensor
    from transformer_lens import HookedTransformer

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
SPECIAL_TOKENS = (PAD, BOS, EOS)
CHARSET = string.digits + "+-=:?,;. " + string.ascii_lowercase
"""Characters of the organisms' vocabulary: everything the task formats write, plus lowercase letters."""


class OutOfVocabulary(WorkbenchError):
    """Text holds characters that the tokenizer has no token for."""


def build_char_tokenizer(charset: str = CHARSET, model_max_length: int = 128) -> PreTrainedTokenizerFast:
    """A fast tokenizer with one token per character of ``charset``, ids: specials first, then ``charset``.

    Save it with ``save_pretrained`` next to the weights; :func:`load_tokenizer` reads it back. It is saved and
    re-loaded once here because TransformerLens's BOS handling reads ``init_kwargs['name_or_path']``, which only
    a tokenizer loaded from a directory has.
    """
    if len(set(charset)) != len(charset):
        raise ValueError("charset has repeated characters")
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    vocab.update({ch: len(SPECIAL_TOKENS) + i for i, ch in enumerate(charset)})
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=None))
    # Split every character off on its own ([\s\S] also matches newlines, which '.' would not).
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()  # join tokens with no separator: decode is the inverse of encode
    return _fast_tokenizer(core, model_max_length)


def _fast_tokenizer(core: Tokenizer, model_max_length: int) -> PreTrainedTokenizerFast:
    """``core`` with a BOS it prepends itself, as a fast tokenizer saved and loaded back from a directory."""
    # The tokenizer itself prepends <bos>, as Llama's and Gemma's do; with add_bos_token recorded, TransformerLens
    # uses it as is (and strips the BOS for prepend_bos=False) instead of re-loading it from name_or_path.
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, core.token_to_id(BOS))]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token=BOS, eos_token=EOS, pad_token=PAD, model_max_length=model_max_length,
        add_bos_token=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        tok.save_pretrained(tmp)
        return load_tokenizer(tmp)


TOKENIZER_JSON_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")
"""The JSON files a Hugging Face fast tokenizer is saved as (those present in a directory are all read)."""


def check_tokenizer_files(directory: Path, extra: tuple[str, ...] = ()) -> list[Path]:
    """The tokenizer JSON files in ``directory`` (and ``extra`` ones), each checked to be a readable JSON object
    first: the tokenizer libraries report a garbled file as a decoding error that names no file."""
    from workbench.models.checkpoint import read_json_object  # here: checkpoint imports this module

    present = [directory / name for name in (*TOKENIZER_JSON_FILES, *extra) if (directory / name).is_file()]
    for path in present:
        read_json_object(path, what="a Hugging Face tokenizer file (a JSON object)")
    return present


def load_tokenizer(directory: str | Path) -> PreTrainedTokenizerFast:
    """The fast tokenizer saved in ``directory``; damaged files are a ``DamagedFile`` naming them."""
    directory = Path(directory)
    present = check_tokenizer_files(directory)
    try:
        return PreTrainedTokenizerFast.from_pretrained(str(directory))
    except Exception as e:  # tokenizers' own parse errors, a missing vocabulary, ...: the files are unusable
        raise tokenizer_load_error(directory, present, e) from None


def tokenizer_load_error(directory: Path, present: list[Path], e: Exception) -> WorkbenchError:
    """The error for tokenizer files that are valid JSON but not a tokenizer: it names the first of them
    (``tokenizer.json``, which holds the vocabulary, when there is one) and the others read with it."""
    from workbench.models.checkpoint import DamagedFile, error_summary

    main, *rest = present or [directory / "tokenizer.json"]
    beside = f" (read with {', '.join(p.name for p in rest)})" if rest else ""
    return DamagedFile(f"{main}{beside}: expected a Hugging Face tokenizer, but it cannot be loaded "
                       f"({error_summary(e)})")


def vocabulary_chars(tokenizer: PreTrainedTokenizerBase) -> set[str]:
    """The single characters that have a token of their own (special tokens excluded)."""
    specials = set(tokenizer.all_special_tokens)
    return {t for t in tokenizer.get_vocab() if len(t) == 1 and t not in specials}


def is_char_tokenizer(tokenizer: PreTrainedTokenizerBase) -> bool:
    vocab = tokenizer.get_vocab()
    return all(len(t) == 1 or t in tokenizer.all_special_tokens for t in vocab)


def check_text(tokenizer: PreTrainedTokenizerBase, text: str) -> None:
    """Raise :class:`OutOfVocabulary` naming each character of ``text`` that a char tokenizer lacks.

    A no-op for subword tokenizers (a real model's), which can encode any text.
    """
    if not is_char_tokenizer(tokenizer):
        return
    allowed = vocabulary_chars(tokenizer)
    bad = list(dict.fromkeys(ch for ch in text if ch not in allowed))  # in order of first position
    if bad:
        where = ", ".join(f"{ch!r} at position {text.index(ch)}" for ch in bad)
        shown = "".join(sorted(allowed))
        raise OutOfVocabulary(f"not in the vocabulary: {where}; allowed characters: {shown!r}")


def tokenize_prompts(model: HookedTransformer, prompts: list[str], reserve: int = 0) -> list[Tensor]:
    """Each prompt's token ids, refusing non-strings, characters outside the vocabulary, and prompts that with
    ``reserve`` more positions (tokens to generate) exceed the context. Never truncates: position -1 must be the
    prompt's real last token.

    One batched tokenizer call instead of one ``to_tokens`` per prompt (per-prompt calls cost more than the forward
    pass of a small model); the BOS ``to_tokens`` would prepend is learnt from the first prompt and checked.
    """
    import torch  # here, not at module level: the tokenizer module stays importable without torch's start-up cost

    return [torch.tensor(ids, dtype=torch.long, device=model.cfg.device) for ids in prompt_ids(model, prompts, reserve)]


def prompt_ids(model: HookedTransformer, prompts: list[str], reserve: int = 0) -> list[list[int]]:
    """:func:`tokenize_prompts` as lists of ids (for a caller that concatenates them with more tokens)."""
    for bad in prompts:
        if not isinstance(bad, str):
            raise WorkbenchError(f"prompts must be strings, got {type(bad).__name__}: {bad!r}")
    if not prompts:
        return []
    if is_char_tokenizer(model.tokenizer):  # one vocabulary check over every character used
        allowed = vocabulary_chars(model.tokenizer)
        if not set().union(*map(set, prompts)) <= allowed:
            check_text(model.tokenizer, next(p for p in prompts if not set(p) <= allowed))
    plain = model.tokenizer(prompts, add_special_tokens=False)["input_ids"]
    first = model.to_tokens(prompts[0], truncate=False)[0].tolist()
    # What to_tokens puts before the text (its BOS, however the tokenizer adds it), learnt from the first prompt.
    prefix = first[: len(first) - len(plain[0])]
    if first[len(prefix):] != plain[0]:  # a tokenizer whose special tokens are not a plain prefix: the slow path
        plain, prefix = [model.to_tokens(p, truncate=False)[0].tolist() for p in prompts], []
    out = []
    for prompt, ids in zip(prompts, plain):
        n = len(prefix) + len(ids)
        if n + reserve > model.cfg.n_ctx:
            more = f"; with {reserve} tokens to generate it needs {n + reserve} positions" if reserve else ""
            raise WorkbenchError(f"prompt {prompt[:40]!r} is {n} tokens{more}, longer than the context: "
                                 f"the model's context is {model.cfg.n_ctx}")
        out.append(prefix + ids)
    return out


def build_bpe_tokenizer(texts: list[str], vocab_size: int = 512, model_max_length: int = 192
                        ) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``texts``, in the shape of the real models' ones: GPT-2's byte-level
    pre-tokenizer (any text encodes, none is unknown) with every digit a token of its own (as Llama's and Qwen's
    split numbers), ``<pad>``, ``<bos>``, ``<eos>`` first, and a BOS the tokenizer itself prepends.

    Training is deterministic: the same texts and size give the same vocabulary and merges (checked in the tests),
    so an organism's tokenizer is part of what its recipe reproduces.
    """
    from tokenizers import trainers

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                  pre_tokenizers.ByteLevel(add_prefix_space=False)])
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(texts, trainer=trainer)
    return _fast_tokenizer(core, model_max_length)
