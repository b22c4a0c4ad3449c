"""Stage expressions (``when``, preconditions) in Airflow's own Jinja.

``params.env == 'prod'`` and ``{{ params.env == 'prod' }}`` mean the same: a bare
expression is wrapped in ``{{ }}``. Earlier stages' outputs are ``stages.<id>.<key>``.
"""

from __future__ import annotations

from typing import Any

from gennaker.errors import ExpressionError

_FALSE = {"", "false", "0", "no", "off", "none", "null"}


def as_template(expression: str) -> str:
    text = expression.strip()
    if "{{" in text or "{%" in text:
        return text
    return "{{ (" + text + ") }}"


def evaluate(operator: Any, expression: str, context: Any) -> Any:
    """Render ``expression`` with the task's Jinja environment and context."""
    import jinja2

    try:
        return operator.render_template(as_template(expression), context)
    except jinja2.TemplateError as exc:
        raise ExpressionError(f"cannot evaluate {expression!r}: {exc}") from exc


def is_true(value: Any) -> bool:
    """Truth of a rendered expression: 'False', '0', 'no', '' and None are false."""
    if isinstance(value, str):
        return value.strip().lower() not in _FALSE
    return bool(value)
