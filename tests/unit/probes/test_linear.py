"""Probe fitting on hand-built data: planted signal is found, noise is not, batching changes nothing."""

import numpy as np
import pytest
import torch

from probes.linear import (
    ProbeConfig, fit_logistic, fit_logistic_many, fit_ridge, fit_ridge_classifiers, majority_accuracy, split,
)
from workbench.errors import WorkbenchError


def _planted(n=600, d=16, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    means = torch.randn(classes, d, generator=g) * 3
    x_signal = means[y] + torch.randn(n, d, generator=g)
    x_noise = torch.randn(n, d, generator=g)
    return torch.stack([x_signal, x_noise]), y  # site 0 holds the label, site 1 does not


def test_ridge_classifier_finds_planted_signal_only_where_planted():
    x, y = _planted()
    train, test = split(len(y), 0.25, 0)
    fit = fit_ridge_classifiers(x, [y], [4], train, test)[0]
    assert fit.test_accuracy[0] > 0.95
    assert abs(fit.test_accuracy[1] - 0.25) < 0.1  # chance on the noise site


def test_batched_fits_equal_separate_fits():
    x, y = _planted()
    y2 = (y + 1) % 4
    train, test = split(len(y), 0.25, 0)
    both = fit_ridge_classifiers(x, [y, y2], [4, 4], train, test)
    alone = fit_ridge_classifiers(x[:1], [y2], [4], train, test)[0]
    torch.testing.assert_close(both[1].weight[:1], alone.weight, atol=1e-5, rtol=1e-5)
    cfg = ProbeConfig(steps=20)
    many = fit_logistic_many(x, [y, (y > 1).long()], [4, 2], train, test, cfg)
    single = fit_logistic(x, (y > 1).long(), 2, train, test, cfg)
    torch.testing.assert_close(many[1].weight, single.weight, atol=1e-5, rtol=1e-4)


def test_logistic_and_ridge_agree_on_planted_signal():
    x, y = _planted()
    train, test = split(len(y), 0.25, 0)
    log = fit_logistic(x, y, 4, train, test)
    ridge = fit_ridge_classifiers(x, [y], [4], train, test)[0]
    assert abs(log.test_accuracy[0] - ridge.test_accuracy[0]) < 0.05


def test_direction_moves_towards_target_class():
    x, y = _planted()
    train, test = split(len(y), 0.25, 0)
    fit = fit_ridge_classifiers(x, [y], [4], train, test)[0]
    u = fit.direction(0, 0, 2)
    before = fit.logits(x[:1, :5])[0]
    after = fit.logits(x[:1, :5] + u)[0]
    assert ((after[:, 2] - after[:, 0]) > (before[:, 2] - before[:, 0])).all()


def test_ridge_regression_r2():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 500, 8, generator=g)
    target = x[0] @ torch.arange(8.0) + 0.01 * torch.randn(500, generator=g)
    train, test = split(500, 0.2, 0)
    r2 = fit_ridge(x, [target, torch.randn(500, generator=g)], train, test)
    assert r2[0, 0] > 0.99 and r2[1, 0] < 0.05


def test_split_and_bad_labels():
    train, test = split(100, 0.25, 3)
    assert len(test) == 25 and len(set(train.tolist()) | set(test.tolist())) == 100
    assert torch.equal(split(100, 0.25, 3)[1], test)
    with pytest.raises(WorkbenchError, match="test_fraction"):
        split(100, 1.5, 0)
    x, y = _planted()
    with pytest.raises(WorkbenchError, match="labels must be in 0..1"):
        fit_ridge_classifiers(x, [y], [2], train[:10], test[:10])
    assert majority_accuracy(np.array([1, 1, 1, 0]), torch.tensor([0, 1, 3]), torch.tensor([2])) == 1.0
