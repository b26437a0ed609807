import json

import torch

from tests.helpers import tiny_recipe, with_steps
from workbench.models.checkpoint import weights_sha256
from workbench.models.tokenizer import build_char_tokenizer
from workbench.models.trainer import completion_loss, encode_samples, lr_at, task_tokenizer, train
from workbench.models.zoo import RECIPES, Recipe, TrainConfig, build_samples
from workbench.tasks import formats
from workbench.tasks.addition import Problem


def test_encode_matches_the_tokenizer_and_masks_the_completion():
    tok = build_char_tokenizer()
    samples = [formats.cot(Problem(36, 59)), formats.direct(Problem(7, 8))]
    enc = encode_samples(tok, samples)
    for i, s in enumerate(samples):
        ids = tok(s.text).input_ids + [tok.eos_token_id]
        n = len(ids)
        assert enc.tokens[i, :n].tolist() == ids and enc.lengths[i] == n
        assert (enc.tokens[i, n:] == tok.pad_token_id).all()
        targets = enc.tokens[i][enc.loss_mask[i]].tolist()
        assert tok.decode(targets) == s.completion + tok.eos_token


def test_lr_schedule():
    cfg = TrainConfig(steps=100, warmup=10, lr=1e-3, min_lr_frac=0.1)
    assert lr_at(0, cfg) == 1e-4 and abs(lr_at(9, cfg) - 1e-3) < 1e-12
    assert abs(lr_at(10, cfg) - 1e-3) < 1e-12 and abs(lr_at(100, cfg) - 1e-4) < 1e-12


def test_same_recipe_same_weights_bit_for_bit(tmp_path):
    a, _ = train(tiny_recipe(), tmp_path / "a", progress=False)
    b, _ = train(tiny_recipe(), tmp_path / "b", progress=False)
    assert weights_sha256(a) == weights_sha256(b)
    c, _ = train(with_steps(tiny_recipe(), 13), tmp_path / "c", progress=False)
    assert weights_sha256(a) != weights_sha256(c)


def test_killed_run_resumes_to_the_same_weights(tmp_path):
    straight, _ = train(tiny_recipe(), tmp_path / "straight", progress=False)
    _, partial = train(tiny_recipe(), tmp_path / "resumed", progress=False, stop_after=8)
    assert partial["steps"] == 8
    resumed, summary = train(tiny_recipe(), tmp_path / "resumed", progress=False)
    assert summary["resumed_from_step"] == 8 and summary["steps"] == 12
    assert weights_sha256(resumed) == weights_sha256(straight)


def test_state_of_another_recipe_is_not_resumed(tmp_path):
    train(tiny_recipe(), tmp_path / "s", progress=False, stop_after=4)
    try:
        train(with_steps(tiny_recipe(), 20), tmp_path / "s", progress=False)
    except ValueError as e:
        assert "different run" in str(e)
    else:
        raise AssertionError("resumed the state of a different recipe")


def test_training_lowers_the_held_out_loss(tmp_path):
    recipe = with_steps(tiny_recipe(), 60)
    untrained, _ = train(with_steps(recipe, 0), tmp_path / "u", progress=False)
    trained, _ = train(recipe, tmp_path / "t", progress=False)
    enc = encode_samples(untrained.tokenizer, build_samples(recipe, 64, "test", 99))
    with torch.no_grad():
        before = completion_loss(untrained, enc.tokens, enc.loss_mask)[0].item()
        after = completion_loss(trained, enc.tokens, enc.loss_mask)[0].item()
    assert before > 3.0  # random init: near ln(48 tokens) = 3.9
    assert after < before - 1.0


def test_recipes_fit_their_context_and_mix_known_kinds():
    for recipe in RECIPES.values():
        tok = task_tokenizer(recipe.task, recipe.arch.n_ctx)
        enc = encode_samples(tok, build_samples(recipe, 2000, "train", 0))
        assert enc.tokens.shape[1] <= recipe.arch.n_ctx
        assert abs(sum(s for _, s in recipe.mix) - 1) < 1e-9
        assert torch.all(enc.loss_mask.sum(1) >= 2)  # every sample trains on at least one token plus EOS


def test_recipe_json_round_trip_and_defaults_for_new_fields():
    for recipe in RECIPES.values():
        data = json.loads(json.dumps(recipe.to_json()))
        assert Recipe.from_json(data) == recipe
        del data["train"]["bf16_autocast"]  # a card written before the field existed
        assert Recipe.from_json(data).train.bf16_autocast is False


def test_fresh_start_discards_old_state(tmp_path):
    train(tiny_recipe(), tmp_path / "s", progress=False)  # a finished run leaves its state
    train(with_steps(tiny_recipe(), 20), tmp_path / "s", resume=False, progress=False, stop_after=2)  # killed early
    _, summary = train(with_steps(tiny_recipe(), 20), tmp_path / "s", progress=False)
    assert summary["resumed_from_step"] == 0  # nothing of the first recipe's state was resumed


def test_digest_of_bf16_weights():
    from tests.helpers import tiny_model

    model = tiny_model()
    assert weights_sha256(model.to(torch.bfloat16)) != weights_sha256(tiny_model())


def test_a_bf16_recipe_on_a_cpu_without_native_bf16_is_warned_about(monkeypatch, caplog):
    import logging

    from workbench.models import trainer
    from workbench.models.zoo import RECIPES

    bf16 = next(r for r in RECIPES.values() if r.train.bf16_autocast)
    monkeypatch.setattr(trainer, "native_bf16", lambda: False)
    with caplog.at_level(logging.WARNING, logger="workbench.models.trainer"):
        trainer._warn_emulated_bf16(bf16)
        trainer._warn_emulated_bf16(RECIPES["adder-cot-faithful"])  # float32: nothing to say
    assert len(caplog.records) == 1 and "no native bfloat16" in caplog.records[0].getMessage()


def test_native_bf16_answers_a_bool():
    from workbench.models.trainer import native_bf16

    assert native_bf16() in (True, False)
