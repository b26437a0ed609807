import json

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import tiny_model
from training.common import encode, load_rows, sequence_logprob, token_logprobs
from training.sft import SFTConfig, sft_loss, train_sft
from workbench.errors import WorkbenchError

ROWS = [{"prompt": f"{a}+{b}=", "completion": str(a + b)} for a in range(1, 9) for b in range(1, 9)]


def test_loss_is_mean_nll_over_completion_tokens_only():
    logp = torch.tensor([[-9.0, -9.0, -1.0, -3.0], [-9.0, -2.0, 0.0, 0.0]])
    mask = torch.tensor([[False, False, True, True], [False, True, False, False]])
    loss, m = sft_loss(logp, mask)
    assert loss.item() == pytest.approx((1 + 3 + 2) / 3) and m["num_tokens"] == 3
    with pytest.raises(WorkbenchError, match="no completion tokens"):
        sft_loss(logp, torch.zeros_like(mask))


def test_padding_and_prompt_do_not_change_a_sequence_logprob():
    model = tiny_model()
    alone = sequence_logprob(model, encode(model, ["1+2="], ["3"]))
    padded = sequence_logprob(model, encode(model, ["1+2=", "12+34="], ["3", "46"]))
    torch.testing.assert_close(alone[0], padded[0])
    batch = encode(model, ["1+2="], ["3"])
    logp, _ = token_logprobs(model, batch)
    # completion "3" then EOS: two scored tokens
    assert batch.completion_mask.sum() == 2 and logp[0, 0] == 0


def test_training_lowers_the_loss_and_resumes_bit_identically(tmp_path):
    cfg = SFTConfig(lr=3e-3, steps=12, batch_size=16, checkpoint_every=4)
    full = train_sft(tiny_model(), ROWS, cfg, tmp_path / "full", progress=False)
    lines = (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 12
    first, last = (json.loads(line)["loss"] for line in (lines[0], lines[-1]))
    assert last < first
    # A run killed after the step-8 checkpoint (simulated: the same run stopped at 8 by a failing step), resumed.
    part_model = tiny_model()
    calls = {"n": 0}
    import training.sft as sft

    real = sft._step_loss

    def dies_at_9(*args):
        calls["n"] += 1
        if calls["n"] == 9:
            raise KeyboardInterrupt
        return real(*args)

    sft._step_loss = dies_at_9
    try:
        with pytest.raises(KeyboardInterrupt):
            train_sft(part_model, ROWS, cfg, tmp_path / "part", progress=False)
    finally:
        sft._step_loss = real
    resumed = train_sft(tiny_model(), ROWS, cfg, tmp_path / "part", progress=False)
    for k, v in full.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    assert len((tmp_path / "part" / "metrics.jsonl").read_text().splitlines()) == 12
    assert set(load_file(str(tmp_path / "full" / "model" / "model.safetensors")))
    # Another starting model in the same directory is refused, not silently resumed.
    with pytest.raises(WorkbenchError, match="different run"):
        train_sft(tiny_model(seed=7), ROWS, cfg, tmp_path / "part", progress=False)


def test_bad_data_names_the_columns(tmp_path):
    with pytest.raises(WorkbenchError, match="prompt"):
        load_rows([{"prompt": "1+1="}], ("prompt", "completion"))
    with pytest.raises(WorkbenchError, match="no data file"):
        load_rows(tmp_path / "none.jsonl", ("prompt", "completion"))


def test_the_tuned_model_is_also_saved_for_transformers(tmp_path):
    from transformers import AutoModelForCausalLM

    model = train_sft(tiny_model(), ROWS, SFTConfig(lr=3e-3, steps=2, batch_size=8), tmp_path / "run", progress=False)
    hf_dir = tmp_path / "run" / "model" / "hf"
    assert json.loads((hf_dir / "config.json").read_text())["model_type"] == "gpt2"
    hf = AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    tokens = model.to_tokens("12+34=")
    with torch.no_grad():
        torch.testing.assert_close(hf(tokens).logits, model(tokens), atol=1e-4, rtol=0)
