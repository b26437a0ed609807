import numpy as np
import pytest

from workbench.errors import WorkbenchError
from workbench.tasks.addition import Problem, edge_cases, is_test_pair, sample_operands, sample_problems


@pytest.mark.parametrize("a", range(0, 120, 7))
@pytest.mark.parametrize("b", [0, 1, 9, 10, 55, 99, 101, 999])
def test_columns_reconstruct_the_sum(a, b):
    p = Problem(a, b)
    digits = "".join(str(c.digit) for c in reversed(p.columns))
    assert int(str(p.columns[-1].carry_out) + digits) == a + b
    for lower, upper in zip(p.columns, p.columns[1:]):
        assert upper.carry_in == lower.carry_out


def test_all_carry_patterns_of_two_columns():
    seen = set()
    for a in range(10, 100):
        for b in range(10, 100):
            seen.add(Problem(a, b).carries)
    assert seen == {(0, 0), (0, 1), (1, 0), (1, 1)}


def test_full_carry_chain():
    p = Problem(999, 1)
    assert p.carries == (1, 1, 1)
    assert [c.b for c in p.columns] == [1, 0, 0]  # missing digits of the shorter operand count as 0
    assert p.total == 1000


def test_bad_operands_are_refused():
    with pytest.raises(WorkbenchError):
        Problem(-1, 3)
    with pytest.raises(WorkbenchError):
        Problem(123456, 1)


def test_split_is_by_unordered_pair_and_about_ten_percent():
    a, b = np.meshgrid(np.arange(10, 1000), np.arange(10, 1000))
    test = is_test_pair(a.ravel(), b.ravel())
    assert 0.09 < test.mean() < 0.11
    assert np.array_equal(test, is_test_pair(b.ravel(), a.ravel()))


def test_train_and_test_samples_are_disjoint():
    rng = np.random.default_rng(0)
    tr = set(map(tuple, np.sort(np.stack(sample_operands(5000, (2, 3), "train", rng), 1), 1).tolist()))
    te = set(map(tuple, np.sort(np.stack(sample_operands(5000, (2, 3), "test", rng), 1), 1).tolist()))
    assert tr and te and not tr & te


@pytest.mark.parametrize("digits", [(1,), (2,), (5,), (2, 3), (1, 5)])
def test_sampled_digit_counts(digits):
    a, b = sample_operands(2000, digits, "all", np.random.default_rng(1))
    lens = {len(str(x)) for x in np.concatenate([a, b])}
    assert lens == set(digits)


def test_sampling_is_seeded():
    assert sample_problems(50, (2, 3), "test", 3) == sample_problems(50, (2, 3), "test", 3)
    assert sample_problems(50, (2, 3), "test", 3) != sample_problems(50, (2, 3), "test", 4)


@pytest.mark.parametrize("digits", [(), (0,), (6,)])
def test_digit_range_is_checked(digits):
    with pytest.raises(WorkbenchError, match="1..5"):
        sample_operands(3, digits, "all", np.random.default_rng(0))


def test_edge_cases_include_worst_carry_chains():
    cases = {(p.a, p.b) for p in edge_cases(3)}
    assert (999, 1) in cases and (999, 999) in cases and (99, 1) in cases
