"""Damaged or inconsistent SAE and transcoder directories are refused as one-line WorkbenchErrors naming the file.

SAEs are built in memory (SAELens classes) and saved with SAELens's own ``save_model``; transcoder sets are copies
of a shipped organism's, with one layer damaged.
"""

import json
import shutil

import pytest
import sae_lens
import torch
from safetensors.torch import load_file, save_file
from sae_lens.saes.sae import SAEMetadata

from tests.helpers import tiny_model
from tests.unit.test_saes import HOOK, _identity_sae
from workbench.circuits import transcoder_set
from tests.helpers import edit_json, edit_tensors, truncate
from workbench.errors import WorkbenchError
from workbench.models.loader import load_model
from workbench.models.zoo import organism_dir
from workbench.sae_eval import evaluate_sae
from workbench.saes import load_sae, load_transcoders


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def _refused(load, path, name: str) -> str:
    with pytest.raises(WorkbenchError) as err:
        load()
    msg = str(err.value)
    assert "\n" not in msg
    assert str(path / name) in msg, msg
    return msg





def _cfg(edit):
    return lambda d: edit_json(d / "cfg.json", edit)


def _weights(edit):
    return lambda d: edit_tensors(d / "sae_weights.safetensors", edit)


def _topk_sae(path, d_in: int = 32, d_sae: int = 64, k: int = 4):
    sae_lens.TopKSAE(sae_lens.TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=k, metadata=SAEMetadata(hook_name=HOOK))
                     ).save_model(path)
    return path


W, C = "sae_weights.safetensors", "cfg.json"
SAE_DAMAGE = {
    "truncated weights": (W, lambda d: truncate(d / W), "truncated"),
    "empty weights": (W, lambda d: (d / W).write_bytes(b""), "truncated"),
    "cfg not JSON": (C, lambda d: (d / C).write_text("garbage"), "not valid JSON"),
    "cfg a list": (C, lambda d: (d / C).write_text("[]"), "JSON list"),
    "cfg not UTF-8": (C, lambda d: (d / C).write_bytes(b"\xff{"), "not UTF-8"),
    "cfg lacks d_in": (C, _cfg(lambda c: c.pop("d_in")), "lacks d_in"),
    "cfg lacks architecture": (C, _cfg(lambda c: c.pop("architecture")), "lacks architecture"),
    "unknown architecture": (C, _cfg(lambda c: c.update(architecture="gated-foo")), "'gated-foo' is not one"),
    "d_sae a string": (C, _cfg(lambda c: c.update(d_sae="64")), "d_sae must be a positive integer"),
    "metadata a list": (C, _cfg(lambda c: c.update(metadata=[])), "metadata must be a JSON object"),
    "hook_name a number": (C, _cfg(lambda c: c["metadata"].update(hook_name=5)), "metadata.hook_name"),
    "bad sae_lens_version": (C, _cfg(lambda c: c["metadata"].update(sae_lens_version="x.y")), "InvalidVersion"),
    "d_sae contradicts weights": (W, _cfg(lambda c: c.update(d_sae=32)), "wrong shapes: W_enc is [32, 64] not"),
    "d_in contradicts weights": (W, _cfg(lambda c: c.update(d_in=16)), "wrong shapes: W_enc is [32, 64] not"),
    "W_dec missing": (W, _weights(lambda s: s.pop("W_dec")), "missing tensors W_dec"),
    "b_enc missing": (W, _weights(lambda s: s.pop("b_enc")), "Missing key(s)"),
    "tensor extra": (W, _weights(lambda s: s.update(stray=torch.zeros(2))), "Unexpected key(s)"),
    "nan weights": (W, _weights(lambda s: s["W_enc"].fill_(float("nan"))), "nan or inf"),
    "bad dtype": (W, _cfg(lambda c: c.update(dtype="float99")), "float99"),
    "workbench.json garbage": ("workbench.json", lambda d: (d / "workbench.json").write_text("{"), "not valid JSON"),
}


@pytest.mark.parametrize("case", list(SAE_DAMAGE))
def test_damaged_sae_is_refused_naming_the_file(model, tmp_path, case):
    name, damage, says = SAE_DAMAGE[case]
    out = _topk_sae(tmp_path / "sae")
    damage(out)
    assert says in _refused(lambda: load_sae(out, model), out, name)


@pytest.mark.parametrize("k, says", [(65, "k (65) exceeds d_sae (64)"), (0, "k must be a positive integer"),
                                     (-2, "k must be a positive integer"), ("4", "k must be a positive integer"),
                                     (None, "k (100) exceeds d_sae (64)")])  # None: SAELens's default k, 100
def test_topk_k_outside_1_to_d_sae_is_refused(model, tmp_path, k, says):
    out = _topk_sae(tmp_path / "sae")
    edit_json(out / C, lambda c: c.pop("k") if k is None else c.update(k=k))
    assert says in _refused(lambda: load_sae(out), out, C)


def test_sae_of_another_width_is_refused_at_load_and_at_eval(model, tmp_path):
    out = _topk_sae(tmp_path / "sae", d_in=16)
    says = f"has d_in 16 but {HOOK} in this model has width 32"
    assert says in _refused(lambda: load_sae(out, model), out, C)
    loaded = load_sae(out)  # without a model nothing says it does not fit ...
    assert says in _refused(lambda: evaluate_sae(model, loaded, ["12+34=46"]), out, C)  # ... until it meets one


def test_undamaged_saes_still_load(model, tmp_path):
    assert load_sae(_topk_sae(tmp_path / "topk"), model).sae.cfg.k == 4
    _identity_sae(32, HOOK).save_model(tmp_path / "id")
    assert load_sae(tmp_path / "id", model).hook == HOOK


# ---- transcoder sets ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def organism():
    return load_model("adder-direct")


def _tc_copy(tmp_path):
    out = tmp_path / "tc"
    shutil.copytree(organism_dir("adder-direct") / "transcoders", out)
    return out


def _narrow_decoder(d):
    edit_json(d / C, lambda c: c.update(d_out=64))
    edit_tensors(d / W, lambda s: s.update(W_dec=s["W_dec"][:, :64].contiguous(), b_dec=s["b_dec"][:64].contiguous()))


TC_DAMAGE = {
    "truncated weights": (W, lambda d: truncate(d / W), "truncated"),
    "cfg not JSON": (C, lambda d: (d / C).write_text("nope"), "not valid JSON"),
    "cfg lacks d_sae": (C, _cfg(lambda c: c.pop("d_sae")), "lacks d_sae"),
    "d_sae contradicts weights": (W, _cfg(lambda c: c.update(d_sae=256)), "wrong shapes"),
    "d_out not mlp_out's width": (C, _narrow_decoder,
                                  "has d_out 64 but blocks.1.hook_mlp_out in this model has width 128"),
    "an SAE, not a transcoder": (C, _cfg(lambda c: c.update(architecture="standard")), "not a transcoder"),
    "output hook missing": (C, _cfg(lambda c: c["metadata"].update(hook_name_out="blocks.9.hook_mlp_out")),
                            "writes hook blocks.9.hook_mlp_out, which this model does not have"),
    "nan weights": (W, _weights(lambda s: s["b_enc"].fill_(float("inf"))), "nan or inf"),
}


@pytest.mark.parametrize("case", list(TC_DAMAGE))
def test_damaged_transcoder_set_is_refused_naming_the_file(organism, tmp_path, case):
    name, damage, says = TC_DAMAGE[case]
    tc = _tc_copy(tmp_path)
    damage(tc / "layer_1")
    assert says in _refused(lambda: load_transcoders(tc, organism), tc / "layer_1", name)


def test_transcoder_set_refuses_non_finite_weights_in_memory(organism, tmp_path):
    transcoders = load_transcoders(_tc_copy(tmp_path), organism)
    assert sorted(transcoders) == [0, 1, 2]
    with torch.no_grad():
        transcoders[2].W_dec[0, 0] = float("nan")
    with pytest.raises(WorkbenchError, match="layer 2: the transcoder's weights hold nan or inf"):
        transcoder_set(transcoders)
