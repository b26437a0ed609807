"""The explorer's claims reference kept on disk: read back, it marks a prompt exactly as the reference built in
memory does; another model's weights or a damaged file are never read as it."""

from dataclasses import asdict

import pytest
import torch

from probes.faithfulness.per_prompt import claims_for_prompt, reference_problems, shape_of
from probes.faithfulness.reference_store import load_reference, reference_key, stored_reference
from workbench.models.loader import load_model
from workbench.tasks.parse import parse_prompt

N = 80


def _lists(x):
    if isinstance(x, dict):
        return {k: _lists(v) for k, v in x.items()}
    return [_lists(v) for v in x] if isinstance(x, (list, tuple)) else x


@pytest.mark.parametrize("organism,source", [("adder-cot-faithful", "cot"), ("adder-direct", "explanation")])
def test_a_stored_reference_marks_a_prompt_as_the_built_one(tmp_path, organism, source):
    model = load_model(organism)
    prompt = "36+59="
    problem = parse_prompt(prompt).problem
    shape = shape_of(problem)
    exclude = problem if problem in reference_problems(shape, N, None) else None
    built = stored_reference(model, shape, source, exclude, tmp_path, N)  # built, then stored
    [where] = list(tmp_path.iterdir())
    assert where.name == reference_key(model, shape, source, exclude, N)
    loaded = load_reference(where)
    assert loaded is not None and loaded is not built
    assert (loaded.shape, loaded.source, loaded.problems, loaded.sites, loaded.hooks, loaded.labels) == \
        (built.shape, built.source, built.problems, built.sites, built.hooks, built.labels)
    assert loaded.claims == _lists(built.claims)  # JSON keeps every key and value; tuples come back as lists
    for var, fit in built.probes.items():
        assert all(torch.equal(getattr(fit, f), getattr(loaded.probes[var], f)) for f in ("weight", "bias", "mean", "std"))
    assert built.means.keys() == loaded.means.keys() and (source == "cot" or built.means)
    for var, m in built.means.items():
        assert torch.equal(m["mean"], loaded.means[var]["mean"]) and m["site"] == loaded.means[var]["site"]
    marked_built = claims_for_prompt(model, prompt, reference=built)
    marked_loaded = claims_for_prompt(model, prompt, reference=stored_reference(model, shape, source, exclude,
                                                                                tmp_path, N))
    assert [asdict(v) for v in marked_loaded[0].values] == [asdict(v) for v in marked_built[0].values]
    assert marked_loaded[2] == marked_built[2]


def test_other_weights_or_a_damaged_file_are_not_read(tmp_path):
    model = load_model("adder-cot-faithful")
    shape, exclude = (2, 2), None
    stored_reference(model, shape, "cot", exclude, tmp_path, N)
    [where] = list(tmp_path.iterdir())
    with torch.no_grad():
        model.W_U[0, 0] += 1.0  # one weight changed: another key
    assert reference_key(model, shape, "cot", exclude, N) != where.name
    (where / "reference.safetensors").write_bytes(b"\x00 not safetensors")
    assert load_reference(where) is None
