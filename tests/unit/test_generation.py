import pytest
import torch

from tests.helpers import tiny_model
from workbench.errors import WorkbenchError
from workbench.generation import complete


def test_batched_equals_one_by_one():
    model = tiny_model(seed=5)
    prompts = ["36+59=", "478+256=", "1+2=", "99+1=", "hint:12 3+4="]
    batched = complete(model, prompts, max_new_tokens=12)
    single = [complete(model, [p], max_new_tokens=12)[0] for p in prompts]
    assert batched == single
    assert all(len(c) <= 12 for c in batched)


def test_sampling_is_seeded():
    model = tiny_model(seed=5)
    a = complete(model, ["1+2="] * 4, 8, temperature=1.0, seed=3)
    b = complete(model, ["1+2="] * 4, 8, temperature=1.0, seed=3)
    assert a == b and len(set(a)) > 1  # a random model samples different strings


def test_bad_inputs_name_the_problem():
    model = tiny_model()
    with pytest.raises(WorkbenchError, match=r"'\*' at position 2"):
        complete(model, ["36*59="])
    with pytest.raises(WorkbenchError, match="context is 64"):
        complete(model, ["1" * 60], max_new_tokens=10)
    with pytest.raises(WorkbenchError, match="temperature"):
        complete(model, ["1+1="], temperature=-1)


def test_seeded_sampling_leaves_the_global_rng_alone():
    model = tiny_model(seed=5)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    complete(model, ["1+2="], 4, temperature=1.0, seed=9)
    assert torch.equal(torch.rand(3), expected)


def test_left_padded_batches_give_the_same_greedy_completions():
    model = tiny_model(seed=5)
    prompts = ["36+59=", "478+256=", "1+2=", "99+1=", "hint:12 3+4=", "5+5="]
    grouped = complete(model, prompts, max_new_tokens=12)
    assert complete(model, prompts, max_new_tokens=12, padding="left") == grouped
    assert complete(model, prompts, max_new_tokens=12, padding="left", batch_size=4) == grouped
    with pytest.raises(WorkbenchError, match="'none' or 'left'"):
        complete(model, prompts, padding="right")


def test_left_padding_on_stories_of_many_lengths_matches_grouping():
    """A BPE word-problem organism on stories with and without hint lines (many token lengths)."""
    from workbench.models.loader import load_model
    from workbench.tasks import wordproblems as wp

    model = load_model("story-hint")
    problems = wp.sample_problems(60, "test", 4)
    prompts = [(wp.hint_line(wp.HINT_KINDS[i % 5], 50 + i % 20) if i % 2 else "") + wp.prompt(p)
               for i, p in enumerate(problems)]
    assert len({len(model.to_tokens(p)[0]) for p in prompts}) > 5
    assert complete(model, prompts, 64, padding="left") == complete(model, prompts, 64)


@torch.inference_mode()
def ours_against_transformer_lens(model, prompts, max_new_tokens, temperature, padding, seed=0):
    from workbench.generation import _batches, generate_batch, transformer_lens_batch
    from workbench.models.tokenizer import tokenize_prompts

    tokens = tokenize_prompts(model, prompts, reserve=max_new_tokens)
    eos = model.tokenizer.eos_token_id
    for _, batch in _batches(model, tokens, 512, padding):
        padded = padding == "left" and bool((batch == model.tokenizer.pad_token_id).any())
        torch.manual_seed(seed)
        ref = transformer_lens_batch(model, batch, max_new_tokens, temperature, padded)
        torch.manual_seed(seed)
        ours = generate_batch(model, batch, max_new_tokens, temperature, eos, padded)
        ours = ours[:, : ref.shape[1]]  # TransformerLens stops once every row has ended
        assert torch.equal(ours, ref), (ours != ref).nonzero()[:5]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_the_loop_gives_transformer_lens_tokens_on_an_organism(temperature):
    """Rows that end leave the batch and only the new token is embedded, yet greedy tokens and a seeded sample
    are TransformerLens's own, unpadded and left-padded."""
    from workbench.models.loader import load_model
    from workbench.tasks import formats
    from workbench.tasks.addition import sample_problems

    model = load_model("adder-cot-faithful")
    problems = sample_problems(48, (1, 2, 3), "test", seed=11)
    prompts = [formats.problem_prompt(p) for p in problems] + ["hint:95 36+59=", "hint:7 3+4="]
    for padding in ("none", "left"):
        ours_against_transformer_lens(model, prompts, 48, temperature, padding, seed=4)



def test_the_preallocated_cache_entry_reads_and_writes_like_transformer_lens_own():
    from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry

    from workbench.generation import _HeadMajorEntry

    torch.manual_seed(0)
    first, second = torch.randn(3, 5, 2, 4), torch.randn(3, 1, 2, 4)
    ours = _HeadMajorEntry(torch.empty(3, 0, 2, 4), 8)
    theirs = TransformerLensKeyValueCacheEntry(torch.empty(3, 0, 2, 4), torch.empty(3, 0, 2, 4))
    for k in (first, second):
        got, want = ours.append(k, 2 * k), theirs.append(k, 2 * k)
        assert all(torch.equal(g, w) for g, w in zip(got, want))
    ours.frozen = theirs.frozen = True  # frozen: the new keys are returned with the old ones, not stored
    got, want = ours.append(first, first), theirs.append(first, first)
    assert all(torch.equal(g, w) for g, w in zip(got, want)) and ours.past_keys.shape[1] == 6
    ours.keep(torch.tensor([2, 0]))
    assert torch.equal(ours.past_keys, theirs.past_keys[[2, 0]])
    assert torch.equal(ours.past_values, theirs.past_values[[2, 0]])
