"""The probe sweep (every variable and its control task at every layer x position) against a per-kind solve.

On the organism ``adder-cot-posthoc``, the residual stream of N CoT texts of 3-digit test problems (cached once),
two arms compute the same held-out scores:

* ours: :func:`probes.sweep.probe_sweep` (one standardisation and one Cholesky-factored Gram matrix per site for
  the regression and the classification targets, scores a few sites at a time);
* baseline: the direct way to write it, and this module's sweep before: the regression targets and the
  classification targets each standardise the activations and build and solve (``torch.linalg.solve``) their own
  Gram matrix per site; the classifiers' scores are one ``[site, n, classes]`` tensor, read by an arg max over
  each variable's slice.

The rounds interleave the arms; each arm's median is reported with every run's seconds, and the ratio is the
baseline's median over ours ("spread": its range within rounds). The two arms' scores must agree (the largest
absolute difference is printed; over 1e-5 the script exits 1). Prints one JSON object on stdout, a summary on stderr.

    python bench/probe_sweep.py            # 5000 prompts, 3 rounds
    python bench/probe_sweep.py --quick    # 1000 prompts, 3 rounds
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import einops
import torch
import torch.nn.functional as F

from probes.linear import ProbeConfig, _standardise, split
from probes.study import probe_texts
from probes.sweep import collect_resid, probe_sweep, select_variables
from probes.variables import control_labels
from workbench.models.loader import load_model

MODEL = "adder-cot-posthoc"
BASELINE = "per-kind ridge solves (own standardisation and Gram matrix each, linalg.solve, all sites' scores at once)"


def _standardised(x, train):
    mean, std = _standardise(x, train)
    return (x - mean[:, None]) / std[:, None]


def _solve(z, train, targets, alpha):
    zt, yt = z[:, train].double(), targets[train].double()
    y_mean = yt.mean(0)
    gram = torch.bmm(zt.transpose(1, 2), zt) + alpha * torch.eye(z.shape[2], dtype=torch.float64)
    rhs = einops.einsum(zt, yt - y_mean, "site n d, n k -> site d k")
    return torch.linalg.solve(gram, rhs).float(), y_mean.float()


def baseline_scores(stack, problems, cfg: ProbeConfig = ProbeConfig()) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per variable: held-out score and control score per site (layer-major, as the sweep's rows)."""
    n_layer, n, n_pos, d = stack.acts.shape
    x = stack.acts.permute(0, 2, 1, 3).reshape(n_layer * n_pos, n, d).float()
    train, test = split(n, cfg.test_fraction, cfg.seed)
    variables = select_variables(problems, None)
    controls = [control_labels(v, problems, cfg.seed) for v in variables]
    out = {}
    reg = [(v, c) for v, c in zip(variables, controls) if not v.n_classes]
    if reg:
        z = _standardised(x, train)
        y = torch.stack([torch.as_tensor(v.labels, dtype=torch.float64) for v, _ in reg]
                        + [torch.as_tensor(c, dtype=torch.float64) for _, c in reg], 1)
        w, b = _solve(z, train, y, cfg.ridge)
        pred = (torch.bmm(z[:, test], w) + b).double()
        r2 = (1 - ((pred - y[test]) ** 2).sum(1) / ((y[test] - y[test].mean(0)) ** 2).sum(0).clamp_min(1e-12)).T.float()
        for k, (v, _) in enumerate(reg):
            out[v.name] = (r2[k], r2[k + len(reg)])
    cls = [(v, c) for v, c in zip(variables, controls) if v.n_classes]
    if cls:
        ys = [torch.as_tensor(v.labels, dtype=torch.long) for v, _ in cls] + \
             [torch.as_tensor(c, dtype=torch.long) for _, c in cls]
        classes = [v.n_classes for v, _ in cls] * 2
        z = _standardised(x, train)
        w, b = _solve(z, train, torch.cat([F.one_hot(y, c).float() for y, c in zip(ys, classes)], 1), cfg.ridge)
        scores = torch.bmm(z, w) + b
        acc, start = [], 0
        for y, c in zip(ys, classes):
            acc.append((scores[..., start : start + c].argmax(-1) == y).float()[:, test].mean(1))
            start += c
        for k, (v, _) in enumerate(cls):
            out[v.name] = (acc[k], acc[k + len(cls)])
    return out


def ours_scores(stack, problems) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    rows = probe_sweep(stack, problems)
    out: dict[str, tuple[list, list]] = {}
    for r in rows:  # rows come variable by variable, sites in layer-major order
        s, c = out.setdefault(r["variable"], ([], []))
        s.append(r["score"])
        c.append(r["control"])
    return {k: (torch.tensor(s), torch.tensor(c)) for k, (s, c) in out.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--quick", action="store_true", help="1000 prompts")
    args = ap.parse_args()
    n = 1000 if args.quick else args.n
    torch.set_num_threads(args.threads)
    model = load_model(MODEL)
    problems, texts = probe_texts(3, n, "cot")
    stack = collect_resid(model, texts)
    ours_scores(stack, problems), baseline_scores(stack, problems)  # warm-up
    times, got = {"ours": [], "baseline": []}, {}
    for _ in range(args.repeats):
        for arm, fn in (("baseline", baseline_scores), ("ours", ours_scores)):
            t0 = time.perf_counter()
            got[arm] = fn(stack, problems)
            times[arm].append(time.perf_counter() - t0)
    base, mine = got["baseline"], got["ours"]
    diff = max(float((mine[k][i] - base[k][i]).abs().max()) for k in base for i in (0, 1))
    med = {k: statistics.median(v) for k, v in times.items()}
    per_round = [b / o for b, o in zip(times["baseline"], times["ours"])]
    result = {"model": MODEL, "n_prompts": n, "sites": int(stack.acts.shape[0] * stack.acts.shape[2]),
              "threads": args.threads, "baseline": BASELINE,
              "seconds": {k: round(v, 3) for k, v in med.items()},
              "seconds_each_run": {k: [round(t, 3) for t in v] for k, v in times.items()},
              "speedup": round(med["baseline"] / med["ours"], 2),
              "spread": [round(min(per_round), 2), round(max(per_round), 2)],
              "max_abs_score_difference": diff}
    print(json.dumps(result, indent=2))
    print(f"probe sweep, {n} prompts x {result['sites']} sites, {args.threads} threads: ours {med['ours']:.2f} s, "
          f"baseline ({BASELINE}) {med['baseline']:.2f} s: {result['speedup']}x (spread {result['spread'][0]}-"
          f"{result['spread'][1]}); largest score difference {diff:.2g}", file=sys.stderr)
    return 0 if diff <= 1e-5 else 1


if __name__ == "__main__":
    raise SystemExit(main())
