import pytest
import torch

from tests.helpers import tiny_hf_dir, tiny_model
from workbench.errors import WorkbenchError
from workbench.models.checkpoint import save_checkpoint
from workbench.models.loader import ModelNotFound, load_model


def test_local_hf_dir_matches_hf_logits(tmp_path):
    hf = tiny_hf_dir(tmp_path)
    model = load_model(tmp_path)
    toks = model.to_tokens(["36+59= 6+9", "1+2="], padding_side="right")
    ours = model(toks).log_softmax(-1)
    theirs = hf(toks).logits.log_softmax(-1)
    # TransformerLens folds LayerNorm and centres the unembedding: logits move by a per-position constant,
    # log-probabilities do not.
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert model.tokenizer is not None and model.to_string(model.to_tokens("7+8=")[0, 1:]) == "7+8="


def test_our_checkpoint_dir(tmp_path):
    save_checkpoint(tiny_model(seed=4), tmp_path / "ck")
    toks = tiny_model().to_tokens("1+2=")
    assert torch.equal(load_model(tmp_path / "ck")(toks), tiny_model(seed=4)(toks))


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "weights.pkl"])
def test_hf_dir_with_only_pickles_is_refused(tmp_path, name):
    tiny_hf_dir(tmp_path)
    (tmp_path / "model.safetensors").rename(tmp_path / name)
    with pytest.raises(WorkbenchError, match="refusing to load .*pickle"):
        load_model(tmp_path)


def test_pickle_file_path_is_refused(tmp_path):
    (tmp_path / "model.ckpt").write_bytes(b"\x80\x04")
    with pytest.raises(WorkbenchError, match="refusing to load model.ckpt"):
        load_model(tmp_path / "model.ckpt")


def test_unknown_name_lists_every_form_tried():
    with pytest.raises(ModelNotFound) as err:
        load_model("adder-drect")
    msg = str(err.value)
    assert "Did you mean adder-direct" in msg
    for form in ("organism name", "Hugging Face dir", "TransformerLens name"):
        assert form in msg


def test_directory_that_is_neither_form(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelNotFound, match="config.json lacks .*no model_type"):
        load_model(tmp_path)


def test_hub_name_offline_fails_fast_with_advice(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelNotFound, match="needs the Hugging Face hub.*HF_HUB_OFFLINE.*local directory"):
        load_model("gpt2")


@pytest.mark.parametrize("inner", ["model", "policy"])
def test_a_training_runs_directory_loads_its_model(tmp_path, inner):
    model = tiny_model()
    save_checkpoint(model, tmp_path / inner)
    (tmp_path / "run.json").write_text("{}")
    loaded = load_model(tmp_path)
    toks = model.to_tokens("12+34=")
    torch.testing.assert_close(loaded(toks), model(toks))


def test_a_reward_runs_directory_is_refused_as_not_a_language_model(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text('{"format": "workbench-reward-model"}')
    (tmp_path / "run.json").write_text("{}")
    with pytest.raises(ModelNotFound, match="reward-model run"):
        load_model(tmp_path)
