"""The addition task's intermediate variables, as labels a probe can be trained on.

For problems with ``n`` columns (ones column = index 0), the variables are the operand digits ``a{i}``, ``b{i}``,
the column totals ``total{i}`` (0..19), the carries out ``carry{i}``, the answer digits ``ans{i}`` (``ans{n}`` is
the top digit, 0 or 1) and the final ``answer`` (a number, probed by regression).

Control tasks (Hewitt & Liang 2019, "Designing and Interpreting Probes with Control Tasks"): each variable gets a
control whose labels are a *random* function of the same inputs that determine it (the digits and carry in of
its column), with the same number of classes and class frequencies. A probe that reads those inputs and can
express arbitrary functions of them scores well on the control too; selectivity = accuracy - control accuracy is
high only when the variable itself is linearly readable.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from workbench.errors import WorkbenchError
from workbench.tasks.addition import Problem


@dataclass(frozen=True)
class Variable:
    name: str
    labels: np.ndarray
    """One label per problem: a class index, or a number for the regression variable ``answer``."""
    n_classes: int
    """0 for a regression variable."""
    column: int | None
    """The column whose inputs determine the variable (None for ``answer``)."""


def _columns(problems: list[Problem]) -> int:
    widths = {len(p.columns) for p in problems}
    if len(widths) != 1:
        raise WorkbenchError(f"probing needs problems with one number of columns (aligned positions), got {sorted(widths)}")
    return widths.pop()


def task_variables(problems: list[Problem]) -> list[Variable]:
    """Every intermediate variable of the column algorithm, for problems with one number of columns."""
    n = _columns(problems)
    cols = [p.columns for p in problems]
    out: list[Variable] = []
    for i in range(n):
        out.append(Variable(f"a{i}", np.array([c[i].a for c in cols]), 10, i))
        out.append(Variable(f"b{i}", np.array([c[i].b for c in cols]), 10, i))
    for i in range(n):
        out.append(Variable(f"total{i}", np.array([c[i].total for c in cols]), 20, i))
        out.append(Variable(f"carry{i}", np.array([c[i].carry_out for c in cols]), 2, i))
    for i in range(n):
        out.append(Variable(f"ans{i}", np.array([c[i].digit for c in cols]), 10, i))
    out.append(Variable(f"ans{n}", np.array([c[n - 1].carry_out for c in cols]), 2, n - 1))
    out.append(Variable("answer", np.array([p.total for p in problems], dtype=float), 0, None))
    return out


def column_inputs(problems: list[Problem], column: int) -> np.ndarray:
    """``[n]`` integer code of (a digit, b digit, carry in) of ``column``: what determines its variables."""
    return np.array([(c.a * 10 + c.b) * 2 + c.carry_in for c in (p.columns[column] for p in problems)])


def control_labels(variable: Variable, problems: list[Problem], seed: int = 0) -> np.ndarray:
    """Hewitt & Liang control labels: a seeded random map from the column's inputs to classes drawn with the
    variable's own class frequencies. For the regression variable, the answers shuffled across problems."""
    rng = np.random.default_rng([seed, sum(map(ord, variable.name))])
    if variable.n_classes == 0:
        return rng.permutation(variable.labels)
    codes = column_inputs(problems, variable.column)
    freq = np.bincount(variable.labels, minlength=variable.n_classes) / len(variable.labels)
    table = rng.choice(variable.n_classes, size=200, p=freq)  # 10 * 10 * 2 input codes
    return table[codes]
