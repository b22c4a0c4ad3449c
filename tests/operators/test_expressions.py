import pytest

from gennaker.operators.expressions import as_template, is_true


@pytest.mark.parametrize(
    ("expression", "template"),
    [
        ("params.env == 'prod'", "{{ (params.env == 'prod') }}"),
        ("{{ params.env == 'prod' }}", "{{ params.env == 'prod' }}"),
        ("  stages.a.judgment  ", "{{ (stages.a.judgment) }}"),
    ],
)
def test_bare_expressions_are_wrapped(expression, template):
    assert as_template(expression) == template


@pytest.mark.parametrize("value", ["False", "false", " 0 ", "no", "", "None", "off", None, 0, False, []])
def test_false_values(value):
    assert not is_true(value)


@pytest.mark.parametrize("value", ["True", "yes", "1", "prod", 1, True, [1]])
def test_true_values(value):
    assert is_true(value)
