"""Attribution graphs of adder-direct with transcoders fitted here (a few hundred Adam steps on the model's own
activations): the graph explains the answer digit mostly through features, its direct edges are exact, and
zeroing its most influential features moves the answer logit the way the graph says, also through paths
that run through later features (where the real MLPs, not the transcoders, respond)."""

import pytest
import torch
from sae_lens import Transcoder, TranscoderConfig

from workbench.circuits import attribute_prompt, replacement_model, top_features, validate_by_intervention
from workbench.generation import complete
from workbench.models.loader import load_model
from workbench.models.tokenizer import tokenize_prompts

PROMPTS = ["36+59=", "12+34=", "87+65="]


def fit_transcoders(model, d_sae: int = 256, n_problems: int = 64, steps: int = 150, l1: float = 1e-3,
                    seed: int = 0) -> dict[int, Transcoder]:
    """ReLU transcoders resid_mid -> mlp_out for every layer, trained on "a+b=c" texts (BOS position left out,
    as circuit-tracer leaves it out of graphs)."""
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randint(10, 100, (2, n_problems), generator=g).tolist()
    tokens = tokenize_prompts(model, [f"{x}+{y}={x + y}" for x, y in zip(a, b)])
    xs, ys = {}, {}
    with torch.no_grad():
        for length in sorted({len(t) for t in tokens}):
            batch = torch.stack([t for t in tokens if len(t) == length])
            _, cache = model.run_with_cache(batch, names_filter=lambda n: n.endswith(("resid_mid", "mlp_out")))
            for layer in range(model.cfg.n_layers):
                xs.setdefault(layer, []).append(cache[f"blocks.{layer}.hook_resid_mid"][:, 1:].flatten(0, 1))
                ys.setdefault(layer, []).append(cache[f"blocks.{layer}.hook_mlp_out"][:, 1:].flatten(0, 1))
    d = model.cfg.d_model
    out = {}
    for layer in range(model.cfg.n_layers):
        x, y = torch.cat(xs[layer]), torch.cat(ys[layer])
        W_enc = (torch.randn(d, d_sae, generator=g) / d**0.5).requires_grad_()
        b_enc = torch.zeros(d_sae, requires_grad=True)
        W_dec = (torch.randn(d_sae, d, generator=g) * 0.05).requires_grad_()
        b_dec = y.mean(0).clone().requires_grad_()
        opt = torch.optim.Adam([W_enc, b_enc, W_dec, b_dec], lr=3e-3)
        for _ in range(steps):
            acts = torch.relu(x @ W_enc + b_enc)
            loss = ((acts @ W_dec + b_dec - y) ** 2).sum(-1).mean() + l1 * (acts * W_dec.norm(dim=1)).sum(-1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        tc = Transcoder(TranscoderConfig(d_in=d, d_sae=d_sae, d_out=d, dtype="float32", device="cpu",
                                         apply_b_dec_to_input=False))
        with torch.no_grad():
            for name, value in (("W_enc", W_enc), ("b_enc", b_enc), ("W_dec", W_dec), ("b_dec", b_dec)):
                getattr(tc, name).copy_(value)
        out[layer] = tc
    return out


@pytest.fixture(scope="module")
def fitted():
    model = load_model("adder-direct")
    return model, replacement_model(model, fit_transcoders(model))


@pytest.mark.parametrize("prompt", PROMPTS)
def test_fitted_transcoders_explain_the_answer_digit(fitted, prompt):
    model, rm = fitted
    result = attribute_prompt(rm, prompt)
    assert result.top_token == complete(model, [prompt], max_new_tokens=1)[0]  # the graph explains the answer
    assert result.replacement_score > 0.8 and result.completeness_score > 0.9
    rows = top_features(result, n=5)
    assert rows and all(r["pos"] > 0 for r in rows)

    report = validate_by_intervention(rm, result, n_features=10)
    assert report["direct_max_abs_error"] < 1e-4  # the graph's direct edges are exact
    # Measured 1.0 and 0.88-0.98 on these prompts (0.7-1.0 on others: misses are small predicted effects).
    assert report["agreement_rate"] >= 0.8 and report["spearman"] > 0.5
    # Last-layer features are exact by construction once LayerNorm is frozen; the test is in those whose
    # predicted effect flows through later features, where the real MLPs replace the transcoders.
    indirect = [r for r in report["features"] if abs(r["indirect"]) > 1e-6]
    agree = [(r["predicted_total"] > 0) == (r["measured_total"] > 0) for r in indirect]
    assert indirect and sum(agree) >= 0.75 * len(agree)
