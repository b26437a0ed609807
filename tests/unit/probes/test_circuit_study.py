from probes.circuit_study import group_shares, token_roles
from workbench.tasks.addition import Problem


def test_token_roles_name_each_operand_digit_by_its_column():
    p = Problem(36, 159)
    prefix = "36+159= 6+9+0=15 ans 19"
    roles = token_roles(p, prefix, prompt_len=7, answer_start=len(prefix) - 2)
    assert roles[:8] == ["bos", "a1", "a0", "op", "b2", "b1", "b0", "op"]
    assert roles[8:-2] == ["cot"] * (len(prefix) - 9) and roles[-2:] == ["answer", "answer"]


def test_group_shares_splits_columns_around_the_target():
    shares = {"a0": 0.2, "b0": 0.2, "a1": 0.3, "b2": 0.1, "cot": 0.15, "op": 0.05}
    g = group_shares(shares, column=1)
    assert g == {"lower columns": 0.4, "own column": 0.3, "higher columns": 0.1, "CoT": 0.15, "other": 0.05}
