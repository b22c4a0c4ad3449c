"""One error tree: every public exception gennaker defines lives in gennaker.errors, under GennakerError."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import gennaker
from gennaker import errors
from gennaker.errors import GennakerError

# Modules that run only as processes' entry points (importing them would run them) are skipped.
ENTRY_POINTS = {"gennaker.cloud.local_supervisor", "gennaker.cloud.local_proxy"}


def _modules() -> list[str]:
    names = [info.name for info in pkgutil.walk_packages(gennaker.__path__, "gennaker.")]
    return sorted(name for name in names if name not in ENTRY_POINTS)


def _stage_outcome(cls: type[BaseException]) -> bool:
    """A stage's own failure is an Airflow exception (so Airflow fails or retries the task): it lives with the
    operators, since gennaker.errors imports no Airflow."""
    from airflow.exceptions import AirflowException

    return cls.__module__.startswith("gennaker.operators.") and issubclass(cls, AirflowException)


def test_every_public_exception_is_in_the_one_tree() -> None:
    outside = []
    for name in _modules():
        module = importlib.import_module(name)
        for attr, value in vars(module).items():
            if not (inspect.isclass(value) and issubclass(value, BaseException)):
                continue
            if not value.__module__.startswith("gennaker") or attr.startswith("_") or value.__name__.startswith("_"):
                continue
            if not issubclass(value, GennakerError):
                outside.append(f"{value.__module__}.{value.__name__} is not a GennakerError")
            elif value.__module__ != "gennaker.errors" and not _stage_outcome(value):
                outside.append(f"{value.__module__}.{value.__name__} is defined outside gennaker.errors")
    assert sorted(set(outside)) == []


def test_the_tree_drawn_in_the_docstring_names_every_class() -> None:
    classes = [
        value
        for value in vars(errors).values()
        if inspect.isclass(value) and issubclass(value, GennakerError) and value.__module__ == "gennaker.errors"
    ]
    assert len(classes) > 20
    for cls in classes:
        assert cls.__name__ in (errors.__doc__ or ""), cls.__name__
