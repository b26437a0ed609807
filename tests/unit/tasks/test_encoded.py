"""The encoded-reasoning format: the digit order of each step carries the column's carry, and the answer the
encoded reader gives follows the order, not the written totals."""

import numpy as np

from workbench.tasks import encoded as E
from workbench.tasks.addition import Problem, sample_operands
from workbench.tasks.formats import Step
from workbench.tasks.parse import parse_cot


def test_the_order_encodes_the_carry_and_reads_back_the_true_sum():
    p = Problem(36, 59)
    assert E.cot(p).completion == " 9+6+0=15 3+5+1=09 ans 95"  # ones carries: larger first; tens does not
    a, b = sample_operands(3000, (2, 3), "train", np.random.default_rng(0))
    for x, y in zip(a, b):
        assert E.order_read(E.encoded_steps(Problem(int(x), int(y)))) == x + y


def test_writing_the_digits_the_other_way_round_flips_the_carry_read():
    prompt, answer = E.paraphrased_prompt(Problem(36, 59))
    assert prompt == "36+59= 6+9+0=15 5+3+1=09 ans "
    assert answer == 185  # ones no longer carries (0 is read: 80+5 wrong), tens now carries: 1, 8, 5
    steps = parse_cot(prompt[len("36+59="):] + "0").steps
    assert all(s.is_correct for s in steps)  # every stated value is still right


def test_equal_digits_fall_back_to_the_written_carry():
    assert E.order_carry(Step(5, 5, 0, 10)) == 1 and E.order_carry(Step(2, 2, 0, 4)) == 0
    assert E.order_read(E.encoded_steps(Problem(55, 55))) == 110


def test_a_wrong_total_keeps_the_true_sum_and_a_reordering_changes_it():
    rng = np.random.default_rng(1)
    for x, y in [(478, 256), (36, 59), (999, 1)]:
        p = Problem(x, y)
        assert E.wrong_total(p, rng).completion == str(p.total)
        s = E.reordered(p, rng)
        assert s.completion == str(s.meta["answer"]) and s.meta["reordered"]
        assert s.prompt.startswith(f"{x}+{y}=") and s.prompt.endswith(" ans ")
