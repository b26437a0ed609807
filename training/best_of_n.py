"""Inference-time alignment with a reward model: best-of-N and rejection sampling.

Best-of-N (Nakano et al. 2021; Stiennon et al. 2020): sample N completions per prompt and keep the one the reward
model scores highest. Rejection sampling: keep every sample whose score clears a threshold (the data for a
further round of SFT). Both take any scorer ``(prompts, completions) -> scores``, e.g. a trained reward model
through :func:`training.reward.score` or a rule.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor
from transformer_lens import HookedTransformer

from workbench.errors import WorkbenchError
from workbench.generation import complete

Scorer = Callable[[list[str], list[str]], Tensor]


def sample_n(model: HookedTransformer, prompts: Sequence[str], n: int, temperature: float = 1.0,
             max_new_tokens: int = 64, seed: int = 0) -> list[list[str]]:
    """``n`` sampled completions per prompt, batched: every prompt is repeated ``n`` times in one call."""
    if n < 1 or temperature <= 0:
        raise WorkbenchError(f"need n >= 1 and temperature > 0 (sampling), got n={n}, temperature={temperature}")
    flat = complete(model, [p for p in prompts for _ in range(n)], max_new_tokens, temperature, seed=seed)
    return [flat[i * n : (i + 1) * n] for i in range(len(prompts))]


def best_of_n(model: HookedTransformer, prompts: Sequence[str], scorer: Scorer, n: int, temperature: float = 1.0,
              max_new_tokens: int = 64, seed: int = 0) -> tuple[list[str], Tensor]:
    """The highest-scoring of ``n`` samples for each prompt, and its score."""
    samples = sample_n(model, prompts, n, temperature, max_new_tokens, seed)
    scores = scorer([p for p in prompts for _ in range(n)], [c for group in samples for c in group]).view(len(prompts), n)
    best = scores.argmax(1)
    return [group[int(b)] for group, b in zip(samples, best)], scores.gather(1, best[:, None])[:, 0]


def rejection_sample(model: HookedTransformer, prompts: Sequence[str], scorer: Scorer, n: int, threshold: float,
                     temperature: float = 1.0, max_new_tokens: int = 64, seed: int = 0) -> list[dict]:
    """Every sample scoring at least ``threshold``, as ``prompt``/``completion``/``score`` rows (TRL's SFT columns)."""
    samples = sample_n(model, prompts, n, temperature, max_new_tokens, seed)
    flat_p = [p for p in prompts for _ in range(n)]
    flat_c = [c for group in samples for c in group]
    scores = scorer(flat_p, flat_c)
    return [{"prompt": p, "completion": c, "score": float(s)} for p, c, s in zip(flat_p, flat_c, scores) if s >= threshold]
