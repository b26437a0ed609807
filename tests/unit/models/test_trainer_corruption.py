"""The organism trainer refuses bad recipes, stops on non-finite numbers before saving them, and refuses a damaged
resumable state by name."""

import dataclasses
import json
import math

import pytest
import torch

from tests.helpers import tiny_recipe
from workbench.errors import NonFiniteLoss, WorkbenchError
from workbench.models.checkpoint import weights_sha256
from workbench.models.trainer import train


def with_train(recipe, **kw):
    return dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, **kw))


@pytest.mark.parametrize("field, value, match", [
    ("lr", math.inf, r"lr must be a finite number > 0, got inf"),
    ("lr", 0.0, r"lr must be a finite number > 0"),
    ("batch_tokens", 0, r"batch_tokens must be an integer >= 1"),
    ("steps", -1, r"steps must be an integer >= 0"),
    ("checkpoint_every", 0, r"checkpoint_every must be an integer >= 1"),
])
def test_a_bad_recipe_is_refused_before_training(tmp_path, field, value, match):
    with pytest.raises(WorkbenchError, match=match):
        train(with_train(tiny_recipe(), **{field: value}), tmp_path, progress=False)


def test_a_learning_rate_too_large_stops_before_anything_is_saved(tmp_path):
    with pytest.raises(NonFiniteLoss, match=r"optimizer step overflowed at step 0 .*no checkpoint"):
        train(with_train(tiny_recipe(), lr=1e38), tmp_path, progress=False)
    assert not (tmp_path / "state").exists()


def test_a_diverging_loss_stops_the_run_naming_the_last_good_checkpoint(tmp_path):
    # A huge but representable step: the next forward pass overflows (the trainer had no finite check at all).
    recipe = with_train(tiny_recipe(), lr=1e36, warmup=10**6, checkpoint_every=1)
    with pytest.raises(NonFiniteLoss, match=r"training loss became nan at step 1; the last good checkpoint \(step 1\)"):
        train(recipe, tmp_path, progress=False)


def test_nan_weights_after_a_finite_loss_stop_before_the_next_checkpoint(tmp_path, monkeypatch):
    real, calls = torch.nn.utils.clip_grad_norm_, {"n": 0}

    def nan_grads_at_step_5(params, max_norm):
        params = list(params)
        calls["n"] += 1
        if calls["n"] == 6:
            for p in params:
                p.grad.fill_(float("nan"))
        return real(params, max_norm)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", nan_grads_at_step_5)
    with pytest.raises(NonFiniteLoss, match=r"weights became nan/inf in the optimizer step at step 5 .*"
                                            r"the last good checkpoint \(step 4\)"):
        train(tiny_recipe(), tmp_path, progress=False)
    assert json.loads((tmp_path / "state" / "state.json").read_text())["step"] == 4
    monkeypatch.undo()
    _, summary = train(tiny_recipe(), tmp_path, progress=False)  # the kept checkpoint resumes
    assert summary["resumed_from_step"] == 4 and summary["steps"] == 12


@pytest.fixture
def killed(tmp_path):
    train(tiny_recipe(), tmp_path, progress=False, stop_after=8)  # checkpoints at 4 and 8
    return tmp_path


@pytest.mark.parametrize("name, damage, match", [
    ("model.safetensors", lambda f: f.write_bytes(f.read_bytes()[:100]), r"model\.safetensors is damaged"),
    ("optimizer.safetensors", lambda f: f.write_bytes(b"not safetensors"), r"optimizer\.safetensors is damaged"),
    ("state.json", lambda f: f.write_text('{"step": 8, "seco'), r"state\.json is unreadable"),
])
def test_a_damaged_state_is_refused_and_no_resume_starts_over(killed, name, damage, match):
    damage(killed / "state" / name)
    with pytest.raises(WorkbenchError, match=match) as e:
        train(tiny_recipe(), killed, progress=False)
    assert "--no-resume" in str(e.value)
    _, summary = train(tiny_recipe(), killed, progress=False, resume=False)
    assert summary["resumed_from_step"] == 0 and summary["steps"] == 12


def test_a_state_without_digests_still_resumes_to_the_same_weights(killed, tmp_path_factory):
    meta_path = killed / "state" / "state.json"
    meta = json.loads(meta_path.read_text())
    del meta["files"]  # written before digests were recorded
    meta_path.write_text(json.dumps(meta))
    straight, _ = train(tiny_recipe(), tmp_path_factory.mktemp("straight"), progress=False)
    resumed, summary = train(tiny_recipe(), killed, progress=False)
    assert summary["resumed_from_step"] == 8 and weights_sha256(resumed) == weights_sha256(straight)


def test_a_garbage_recipe_marker_is_refused(killed):
    (killed / "recipe.json").write_bytes(b"\x00\x01")
    with pytest.raises(WorkbenchError, match=r"recipe\.json is unreadable.*--no-resume"):
        train(tiny_recipe(), killed, progress=False)
