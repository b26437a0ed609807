import json

import pytest
import torch

from tests.helpers import tiny_model
from workbench.models.checkpoint import UnsafeCheckpoint, load_checkpoint, save_checkpoint


def test_round_trip_is_exact(tmp_path):
    model = tiny_model(seed=3)
    save_checkpoint(model, tmp_path / "ck", extra_files={"card.json": {"name": "x"}})
    again = load_checkpoint(tmp_path / "ck")
    toks = model.to_tokens(["12+34=", "56+78="])
    assert torch.equal(model(toks), again(toks))
    assert again.cfg.n_layers == model.cfg.n_layers and again.cfg.d_vocab == model.cfg.d_vocab
    assert json.loads((tmp_path / "ck" / "card.json").read_text()) == {"name": "x"}
    assert sorted(p.name for p in (tmp_path / "ck").iterdir() if p.suffix in (".pt", ".bin", ".pkl")) == []


def test_overwrite_is_atomic_swap(tmp_path):
    save_checkpoint(tiny_model(seed=1), tmp_path / "ck")
    save_checkpoint(tiny_model(seed=2), tmp_path / "ck")
    assert not [p for p in tmp_path.iterdir() if p.name != "ck"]  # no temporary or old directories left
    toks = tiny_model().to_tokens("1+1=")
    assert torch.equal(load_checkpoint(tmp_path / "ck")(toks), tiny_model(seed=2)(toks))


def test_pickle_weights_are_refused(tmp_path):
    save_checkpoint(tiny_model(), tmp_path / "ck")
    (tmp_path / "ck" / "model.safetensors").rename(tmp_path / "ck" / "model.pt")
    with pytest.raises(UnsafeCheckpoint, match="pickle"):
        load_checkpoint(tmp_path / "ck")


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="not a workbench checkpoint"):
        load_checkpoint(tmp_path)
