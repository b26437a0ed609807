"""Linear probes per (layer, position), fitted for every site and variable at once.

The sweep's probe is a ridge (least-squares) classifier: one-hot targets regressed on standardised activations,
prediction = the arg max of the scores (scikit-learn's ``RidgeClassifier``). Its solution is closed form, so every
site and every variable (and its control task) is fitted from one Gram matrix per site: a full sweep costs a few
batched ``d_model x d_model`` solves instead of thousands of gradient-descent runs, and it is exactly
reproducible. A multinomial logistic probe (:func:`fit_logistic`) is there for single sites and checks; on the
organisms both give the same picture (tested).

Regression variables (the final answer) use the same ridge solve and report held-out R^2.
"""

from __future__ import annotations

from dataclasses import dataclass

import einops
import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from workbench.errors import WorkbenchError


@dataclass(frozen=True)
class ProbeConfig:
    steps: int = 150
    """Full-batch Adam steps (logistic probes only)."""
    lr: float = 0.05
    """Adam learning rate (features are standardised, so one rate fits all sites)."""
    weight_decay: float = 1e-3
    """L2 penalty on the weights, in standardised units."""
    ridge: float = 1.0
    """L2 penalty of the ridge probes (classifier and regression), in standardised units."""
    test_fraction: float = 0.25
    """Share of prompts held out for the reported accuracy."""
    seed: int = 0
    """Seed of the train/test split and of the control labels."""


@dataclass(frozen=True)
class ProbeFit:
    """Probes of several sites; ``logits = ((x - mean) / std) @ weight + bias``."""

    weight: Float[Tensor, "site d_model n_classes"]
    bias: Float[Tensor, "site n_classes"]
    mean: Float[Tensor, "site d_model"]
    std: Float[Tensor, "site d_model"]
    train_accuracy: Float[Tensor, " site"]
    test_accuracy: Float[Tensor, " site"]

    def logits(self, x: Float[Tensor, "site n d_model"]) -> Float[Tensor, "site n n_classes"]:
        z = (x - self.mean[:, None]) / self.std[:, None]
        return einops.einsum(z, self.weight, "site n d, site d c -> site n c") + self.bias[:, None]

    def direction(self, site: int, source: int, target: int) -> Float[Tensor, " d_model"]:
        """Gradient of ``logit[target] - logit[source]`` with respect to the raw activation: the direction along
        which an activation moves from the probe's class ``source`` towards ``target`` fastest."""
        return (self.weight[site, :, target] - self.weight[site, :, source]) / self.std[site]


def split(n: int, test_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Seeded train/test index split of ``n`` prompts."""
    if not 0 < test_fraction < 1:
        raise WorkbenchError(f"test_fraction must be in (0, 1), got {test_fraction}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = max(1, round(n * test_fraction))
    if n - n_test < 2:
        raise WorkbenchError(f"{n} prompts are too few to train and test a probe")
    return perm[n_test:].sort().values, perm[:n_test].sort().values


def _check_labels(ys: list[Tensor], n_classes: list[int]) -> None:
    for y, c in zip(ys, n_classes):
        if y.min() < 0 or y.max() >= c:
            raise WorkbenchError(f"labels must be in 0..{c - 1}")


def _standardise(x: Tensor, train: Tensor) -> tuple[Tensor, Tensor]:
    mean = x[:, train].mean(1)
    std = x[:, train].std(1).clamp_min(1e-6)  # a constant feature (e.g. BOS) must not divide by 0
    return mean, std


def fit_logistic(
    x: Float[Tensor, "site n d_model"],
    y: Int[Tensor, " n"],
    n_classes: int,
    train: Int[Tensor, " n_train"],
    test: Int[Tensor, " n_test"],
    cfg: ProbeConfig = ProbeConfig(),
) -> ProbeFit:
    """One multinomial logistic-regression probe per site, all sites trained in one batched loop."""
    return fit_logistic_many(x, [y], [n_classes], train, test, cfg)[0]


def fit_logistic_many(
    x: Float[Tensor, "site n d_model"],
    ys: list[Int[Tensor, " n"]],
    n_classes: list[int],
    train: Int[Tensor, " n_train"],
    test: Int[Tensor, " n_test"],
    cfg: ProbeConfig = ProbeConfig(),
) -> list[ProbeFit]:
    """Probes for several label sets on the same activations: one per label set and site.

    Label sets with the same number of classes share one ``[site, d_model, n_sets * n_classes]`` weight, so a step
    is one matmul per class count for every variable and site. The loss sums independent cross-entropies over
    label sets and sites, and Adam's update is per parameter, so each probe is the one a separate fit would give.
    """
    x = x.float()
    ys = [torch.as_tensor(y, dtype=torch.long) for y in ys]
    _check_labels(ys, n_classes)
    n_site, _, d = x.shape
    mean, std = _standardise(x, train)
    z = (x - mean[:, None]) / std[:, None]
    zt = z[:, train]
    groups: dict[int, list[int]] = {}
    for k, c in enumerate(n_classes):
        groups.setdefault(c, []).append(k)
    params = {c: (torch.zeros(n_site, d, len(ks) * c, requires_grad=True), torch.zeros(n_site, len(ks) * c, requires_grad=True))
              for c, ks in groups.items()}
    targets = {c: torch.stack([ys[k][train] for k in ks], 1) for c, ks in groups.items()}  # [n_train, n_sets]
    opt = torch.optim.Adam([t for wb in params.values() for t in wb], lr=cfg.lr)
    with torch.enable_grad():
        for _ in range(cfg.steps):
            loss = torch.zeros(())
            for c, (w, b) in params.items():
                logits = (torch.bmm(zt, w) + b[:, None]).unflatten(-1, (-1, c))  # [site, n, sets, c]
                logp = logits.log_softmax(-1)
                # Mean over examples, sum over sites and label sets: each probe's gradient is its own alone.
                nll = -logp.gather(-1, targets[c].expand(n_site, -1, -1).unsqueeze(-1)).sum() / len(train)
                loss = loss + nll + cfg.weight_decay * w.square().sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    fits: list[ProbeFit | None] = [None] * len(ys)
    for c, (w, b) in params.items():
        w, b = w.detach(), b.detach()
        pred = (torch.bmm(z, w) + b[:, None]).unflatten(-1, (-1, c)).argmax(-1)  # [site, n, sets]
        for j, k in enumerate(groups[c]):
            correct = (pred[..., j] == ys[k]).float()
            fits[k] = ProbeFit(w[..., j * c : (j + 1) * c].contiguous(), b[:, j * c : (j + 1) * c].contiguous(),
                               mean, std, correct[:, train].mean(1), correct[:, test].mean(1))
    return fits


@dataclass(frozen=True)
class RidgeDesign:
    """What every ridge solve on the same activations and training split shares: the standardisation, the
    standardised activations and the Cholesky factor of each site's Gram matrix. A sweep computes it once for
    its regression and classification targets alike."""

    mean: Float[Tensor, "site d_model"]
    std: Float[Tensor, "site d_model"]
    z: Float[Tensor, "site n d_model"]
    zt: Float[Tensor, "site n_train d_model"]
    """The training rows of ``z``, in float64."""
    chol: Float[Tensor, "site d_model d_model"]
    """Lower Cholesky factor of ``zt^T zt + alpha I`` (float64)."""
    train: Int[Tensor, " n_train"]
    alpha: float


def ridge_design(x: Float[Tensor, "site n d_model"], train: Int[Tensor, " n_train"], alpha: float = 1.0) -> RidgeDesign:
    """The shared part of ridge solves on ``x`` with these training rows and penalty (> 0: it also keeps a
    constant feature, standardised to 0, from making the Gram matrix singular)."""
    if alpha <= 0:
        raise WorkbenchError(f"the ridge penalty must be > 0, got {alpha}")
    x = x.float()
    mean, std = _standardise(x, train)
    z = (x - mean[:, None]) / std[:, None]
    zt = z[:, train].double()
    gram = torch.bmm(zt.transpose(1, 2), zt)
    gram.diagonal(dim1=1, dim2=2).add_(alpha)
    return RidgeDesign(mean, std, z, zt, torch.linalg.cholesky(gram), train, alpha)


def _ridge_solve(design: RidgeDesign, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Weights ``[site, d, k]`` and intercepts ``[k]`` of ridge regressions of ``targets`` ``[n, k]`` on the
    design's standardised activations (the Gram matrix is symmetric positive definite: a Cholesky solve)."""
    yt = targets[design.train].double()
    y_mean = yt.mean(0)
    rhs = torch.matmul(design.zt.transpose(1, 2), yt - y_mean)  # [site, d, k]
    return torch.cholesky_solve(rhs, design.chol).float(), y_mean.float()


def _check_design(design: RidgeDesign, x: Tensor, train: Tensor, alpha: float) -> None:
    if design.z.shape != x.shape or not torch.equal(design.train, train) or design.alpha != alpha:
        raise WorkbenchError("the ridge design was computed for other activations, split or penalty")


def fit_ridge_classifiers(
    x: Float[Tensor, "site n d_model"],
    ys: list[Int[Tensor, " n"]],
    n_classes: list[int],
    train: Int[Tensor, " n_train"],
    test: Int[Tensor, " n_test"],
    alpha: float = 1.0,
    design: RidgeDesign | None = None,
) -> list[ProbeFit]:
    """Ridge classifiers for several label sets on the same activations, one per label set and site, from one
    Gram matrix per site (all one-hot targets are solved together; ``design`` shares it with other solves)."""
    ys = [torch.as_tensor(y, dtype=torch.long) for y in ys]
    _check_labels(ys, n_classes)
    if design is None:
        design = ridge_design(x, train, alpha)
    _check_design(design, x, train, alpha)
    onehot = torch.cat([F.one_hot(y, c).float() for y, c in zip(ys, n_classes)], 1)  # [n, sum classes]
    w, intercept = _ridge_solve(design, onehot)
    n_site, n = design.z.shape[:2]
    bounds = np.cumsum([0, *n_classes])
    train_acc, test_acc = torch.empty(len(ys), n_site), torch.empty(len(ys), n_site)
    # Scores a few sites at a time: all of them at once is [site, n, sum classes], a gigabyte on a big sweep.
    step = max(1, (1 << 24) // max(1, n * int(bounds[-1])))
    runs = []  # consecutive label sets with one class count: one arg max for all of them
    for k, c in enumerate(n_classes):
        if runs and runs[-1][2] == c:
            runs[-1][1] = k + 1
        else:
            runs.append([k, k + 1, c])
    labels = torch.stack(ys)  # [set, n]
    for s in range(0, n_site, step):
        scores = torch.baddbmm(intercept, design.z[s : s + step], w[s : s + step])
        for a, b, c in runs:
            pred = scores[..., bounds[a] : bounds[b]].unflatten(-1, (b - a, c)).argmax(-1)  # [site, n, sets]
            correct = (pred.permute(2, 0, 1) == labels[a:b, None]).float()  # [sets, site, n]
            train_acc[a:b, s : s + step] = correct[..., train].mean(-1)
            test_acc[a:b, s : s + step] = correct[..., test].mean(-1)
    return [ProbeFit(w[..., bounds[k] : bounds[k + 1]].contiguous(),
                     intercept[bounds[k] : bounds[k + 1]].expand(n_site, -1).contiguous(), design.mean, design.std,
                     train_acc[k], test_acc[k]) for k in range(len(ys))]


def fit_ridge(
    x: Float[Tensor, "site n d_model"],
    ys: list[Float[Tensor, " n"]],
    train: Int[Tensor, " n_train"],
    test: Int[Tensor, " n_test"],
    alpha: float = 1.0,
    design: RidgeDesign | None = None,
) -> Float[Tensor, "target site"]:
    """Held-out R^2 of a ridge regression probe per target and site (standardised features)."""
    if design is None:
        design = ridge_design(x, train, alpha)
    _check_design(design, x, train, alpha)
    y = torch.stack([torch.as_tensor(t, dtype=torch.float64) for t in ys], 1)  # [n, target]
    w, intercept = _ridge_solve(design, y)
    pred = (torch.bmm(design.z[:, test], w) + intercept).double()  # [site, n_test, target]
    resid = ((pred - y[test]) ** 2).sum(1)
    total = ((y[test] - y[test].mean(0)) ** 2).sum(0).clamp_min(1e-12)
    return (1 - resid / total).T.float()


def majority_accuracy(y: np.ndarray, train: Tensor, test: Tensor) -> float:
    """Accuracy of always answering the training split's most frequent class: the floor a probe must beat."""
    y = np.asarray(y)
    top = np.bincount(y[train.numpy()]).argmax()
    return float((y[test.numpy()] == top).mean())
