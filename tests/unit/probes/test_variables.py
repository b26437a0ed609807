import numpy as np
import pytest

from probes.causal import answer_of, place_value
from probes.variables import column_inputs, control_labels, task_variables
from workbench.errors import WorkbenchError
from workbench.tasks.addition import Problem, sample_problems


def test_variables_of_36_plus_59():
    v = {x.name: x for x in task_variables([Problem(36, 59), Problem(10, 20)])}
    assert [v[k].labels[0] for k in ("a0", "b0", "a1", "b1", "total0", "carry0", "total1", "carry1")] == [6, 9, 3, 5, 15, 1, 9, 0]
    assert [v[k].labels[0] for k in ("ans0", "ans1", "ans2")] == [5, 9, 0]
    assert v["answer"].labels[0] == 95 and v["answer"].n_classes == 0
    assert v["total1"].n_classes == 20 and v["carry1"].n_classes == 2


def test_variables_need_one_width():
    with pytest.raises(WorkbenchError, match="one number of columns"):
        task_variables([Problem(1, 2), Problem(10, 20)])


def test_control_is_a_seeded_function_of_the_column_inputs_with_the_same_classes():
    ps = sample_problems(2000, (3,), "all", 0)
    var = next(v for v in task_variables(ps) if v.name == "total1")
    ctrl = control_labels(var, ps, seed=0)
    assert np.array_equal(ctrl, control_labels(var, ps, seed=0))
    assert not np.array_equal(ctrl, control_labels(var, ps, seed=1))
    codes = column_inputs(ps, 1)
    for code in np.unique(codes)[:20]:  # one label per input combination: a function of the column's inputs
        assert len(set(ctrl[codes == code])) == 1
    assert set(ctrl) <= set(range(20))
    assert (ctrl != var.labels).mean() > 0.5  # not the variable itself


def test_place_values_and_answer_parsing():
    assert [place_value(v) for v in ("a0", "b2", "total1", "carry0", "carry2", "ans3")] == [0, 2, 1, 1, 3, 3]
    with pytest.raises(WorkbenchError, match="column variable"):
        place_value("answer")
    assert answer_of("95") == 95 and answer_of(" 6+9+0=15 3+5+1=09 ans 95") == 95 and answer_of("x") is None
