"""What `pip install gennaker` brings, and whether it is enough for gennaker's own imports.

The cloud providers (amazon, google, jenkins) are extras: the google one alone pulls ~1.1 GB. So the core
requirements in setup.cfg must cover every third-party module that plugin/gennaker imports, at module level
or inside a function, except where the importing module guards the import with a clear
``pip install 'gennaker[aws]'`` error. "Covered" means: a core requirement, what a core requirement itself
requires (pydantic -> pydantic-core), or Airflow's own dependencies (apache-airflow -> apache-airflow-core ->
fastapi, sqlalchemy, ...), as the installed metadata says.
"""

from __future__ import annotations

import ast
import configparser
import functools
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = ROOT / "plugin" / "gennaker"
TESTS = ROOT / "tests"

CLOUD_PROVIDERS = {
    "aws": "apache-airflow-providers-amazon",
    "gcp": "apache-airflow-providers-google",
    "jenkins": "apache-airflow-providers-jenkins",
}
# The modules of the cloud providers and of the SDKs they bring: no plugin code imports them yet.
CLOUD_MODULES = (
    "airflow.providers.amazon",
    "airflow.providers.google",
    "airflow.providers.jenkins",
    "boto3",
    "botocore",
    "google",
    "googleapiclient",
    "jenkins",
)
# A module that guards an extra's import says how to get it, e.g. pip install 'gennaker[aws]'.
GUARD = re.compile(r"""pip install ['"]?gennaker\[([\w,-]+)\]""")


def _name(name: str) -> str:
    """A distribution's name as pip compares them (PyYAML -> pyyaml)."""
    return str(canonicalize_name(name))


def _requirements(text: str) -> list[Requirement]:
    return [Requirement(line) for line in (raw.strip() for raw in text.splitlines()) if line and line[0] != "#"]


def _setup_cfg() -> tuple[list[Requirement], dict[str, list[Requirement]]]:
    """The core requirements and the extras, as setup.cfg declares them (the installed copy may be older)."""
    config = configparser.ConfigParser(interpolation=None)
    config.read(ROOT / "setup.cfg")
    core = _requirements(config["options"]["install_requires"])
    extras = {name: _requirements(value) for name, value in config["options.extras_require"].items()}
    return core, extras


def _requires(dist: str) -> list[str] | None:
    """The names an installed distribution requires without extras; None when it is not installed."""
    try:
        listed = metadata.requires(dist) or []
    except metadata.PackageNotFoundError:
        return None
    names = []
    for text in listed:
        requirement = Requirement(text)
        if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
            names.append(_name(requirement.name))
    return names


def _provided(requirements: Iterable[Requirement]) -> tuple[set[str], bool]:
    """What installing these requirements brings, as far as installed metadata tells, and whether it all told.

    Each requirement, with its own extras, and what it requires directly; Airflow's packages
    (apache-airflow*) are followed all the way down: their dependencies are Airflow's promise.
    """
    provided: set[str] = set()
    complete = True
    pending: list[tuple[str, bool]] = []
    for requirement in requirements:
        name = _name(requirement.name)
        pending.append((name, True))
        for extra in requirement.extras:  # e.g. moto[ec2]: the extra's own requirements
            try:
                listed = metadata.requires(name) or []
            except metadata.PackageNotFoundError:
                complete = False
                continue
            for text in listed:
                sub = Requirement(text)
                if sub.marker is not None and sub.marker.evaluate({"extra": extra}):
                    pending.append((_name(sub.name), False))
    while pending:
        name, expand = pending.pop()
        if name in provided:
            continue
        provided.add(name)
        if expand or name.startswith("apache-airflow"):
            requires = _requires(name)
            if requires is None:
                complete = False
                continue
            pending.extend((sub, False) for sub in requires)
    return provided, complete


@functools.cache
def _packages_distributions() -> Mapping[str, list[str]]:
    return metadata.packages_distributions()


def _distributions(module: str) -> set[str] | None:
    """The distributions that install a module: empty for the standard library and gennaker; None if unknown."""
    parts = module.split(".")
    if parts[0] in sys.stdlib_module_names or parts[0] in {"gennaker", "__future__"}:
        return set()
    if parts[0] == "airflow":
        if len(parts) > 2 and parts[1] == "providers":
            # Airflow's naming: airflow.providers.common.sql is apache-airflow-providers-common-sql.
            name = "-".join(parts[2:4]) if parts[2] == "common" and len(parts) > 3 else parts[2]
            return {_name(f"apache-airflow-providers-{name}")}
        return {"apache-airflow-core", "apache-airflow-task-sdk"}
    found = _packages_distributions().get(parts[0])
    return {_name(dist) for dist in found} if found else None


def _imports(source: str) -> list[tuple[str, int]]:
    """Every absolute import in a module, at module level or inside functions, except under TYPE_CHECKING.

    A test's ``pytest.importorskip("x")`` counts as an import: a missing module would skip the test quietly.
    """
    tree = ast.parse(source)
    typing_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing_only.update(id(sub) for stmt in node.body for sub in ast.walk(stmt))
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found.extend((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, node.lineno))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "importorskip"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.args[0].value, node.lineno))
    return found


def import_problems(
    sources: dict[str, str],
    core: set[str],
    extras: dict[str, tuple[set[str], bool]],
    distributions: Callable[[str], set[str] | None] = _distributions,
) -> list[str]:
    """Each third-party import that neither the core provides nor a guarded extra does, as `file:line: why`.

    ``extras`` maps an extra's name to what it provides and whether installed metadata told it all
    (an extra that is not installed can only be taken at its word).
    """
    problems = []
    for path, source in sources.items():
        guarded = {name for found in GUARD.findall(source) for name in found.split(",")}
        for module, line in _imports(source):
            dists = distributions(module)
            if dists is not None and (not dists or dists & core):
                continue
            unknown = [name for name in sorted(guarded) if name not in extras]
            if unknown:
                problems.append(f"{path}:{line}: {module}: its guard names no extra of setup.cfg: {unknown}")
                continue
            if guarded and any(dists is None or dists & extras[name][0] or not extras[name][1] for name in guarded):
                continue
            what = "nothing installed here" if dists is None else ", ".join(sorted(dists))
            problems.append(
                f"{path}:{line}: imports {module} ({what}), which no core requirement provides: declare it in "
                "setup.cfg's install_requires, or make it an extra and guard the import with an error that says "
                "pip install 'gennaker[<extra>]'"
            )
    return problems


def _sources(root: Path) -> dict[str, str]:
    return {str(path.relative_to(ROOT)): path.read_text(encoding="utf-8") for path in sorted(root.rglob("*.py"))}


def test_the_core_leaves_out_the_cloud_providers_and_the_test_tools() -> None:
    core, _ = _setup_cfg()
    names = {_name(requirement.name) for requirement in core}
    assert not names & set(CLOUD_PROVIDERS.values())
    assert not names & {"playwright", "moto", "pytest"}
    assert {"apache-airflow", "apache-airflow-providers-standard", "pydantic", "pyyaml", "numpy"} <= names


def test_each_cloud_is_an_extra_and_all_is_every_cloud() -> None:
    _, extras = _setup_cfg()
    for extra, provider in CLOUD_PROVIDERS.items():
        assert [_name(requirement.name) for requirement in extras[extra]] == [provider]
    assert {_name(requirement.name) for requirement in extras["all"]} == set(CLOUD_PROVIDERS.values())
    assert not {_name(requirement.name) for requirement in extras["test"]} & set(CLOUD_PROVIDERS.values())


def test_the_test_extra_brings_playwright_and_a_slim_moto() -> None:
    _, extras = _setup_cfg()
    test = {_name(requirement.name): requirement for requirement in extras["test"]}
    assert "playwright" in test
    # moto[server] and moto[all] pull cfn-lint, docker, aws-xray-sdk, graphql...: only the services used.
    assert test["moto"].extras and not test["moto"].extras & {"server", "all"}
    assert {"flask", "flask-cors"} <= set(test)  # moto's server mode, which moto[server] brought


def test_every_import_of_the_plugin_is_provided_by_the_core() -> None:
    core, extras = _setup_cfg()
    provided = {name: _provided(requirements) for name, requirements in extras.items()}
    assert import_problems(_sources(PLUGIN), _provided(core)[0], provided) == []


def test_no_plugin_code_imports_a_cloud_provider_yet() -> None:
    found = [
        f"{path}:{line}: {module}"
        for path, source in _sources(PLUGIN).items()
        for module, line in _imports(source)
        if any(module == prefix or module.startswith(prefix + ".") for prefix in CLOUD_MODULES)
    ]
    assert found == []


def test_the_core_and_the_test_extra_give_the_test_suite_what_it_imports() -> None:
    core, extras = _setup_cfg()
    # The tests' own helpers (fakecloud, localcloud, browser.chromium, ...), imported from tests/ on sys.path.
    local = {path.stem for path in TESTS.rglob("*.py")} | {path.name for path in TESTS.rglob("*") if path.is_dir()}

    def distributions(module: str) -> set[str] | None:
        return set() if module.split(".")[0] in local else _distributions(module)

    provided = _provided(core)[0] | _provided(extras["test"])[0]
    assert import_problems(_sources(TESTS), provided, {}, distributions) == []


# The check itself, on made-up modules: it must be able to fail.
CORE = {"numpy"}
AWS = ({"apache-airflow-providers-amazon", "boto3"}, True)


def _dists(module: str) -> set[str] | None:
    top = module.split(".")[0]
    return set() if top in sys.stdlib_module_names else {"numpy": {"numpy"}, "boto3": {"boto3"}}.get(top)


def test_the_check_accepts_the_core_the_standard_library_and_a_guarded_extra() -> None:
    source = (
        "import os\nimport numpy\n\ndef client():\n    try:\n        import boto3\n"
        "    except ImportError as error:\n        raise RuntimeError(\"pip install 'gennaker[aws]'\") from error\n"
    )
    assert import_problems({"m.py": source}, CORE, {"aws": AWS}, _dists) == []


@pytest.mark.parametrize(
    ("source", "why"),
    [
        ("def client():\n    import boto3\n", "m.py:2: imports boto3 (boto3), which no core requirement provides"),
        ("import yaml\n", "m.py:1: imports yaml (nothing installed here)"),
        ("import boto3  # pip install 'gennaker[gcp]'\n", "m.py:1: imports boto3 (boto3)"),
        ("import boto3  # pip install 'gennaker[azure]'\n", "its guard names no extra of setup.cfg: ['azure']"),
    ],
)
def test_the_check_finds_an_import_nothing_provides(source: str, why: str) -> None:
    gcp = ({"apache-airflow-providers-google"}, True)
    problems = import_problems({"m.py": source}, CORE, {"aws": AWS, "gcp": gcp}, _dists)
    assert len(problems) == 1 and why in problems[0]


def test_the_check_counts_importorskip_as_an_import() -> None:
    source = 'parser = pytest.importorskip("yaml")\n'
    problems = import_problems({"m.py": source}, CORE, {}, _dists)
    assert len(problems) == 1 and "m.py:1: imports yaml" in problems[0]


def test_the_check_ignores_imports_for_type_checking_only() -> None:
    source = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import boto3\n"
    assert import_problems({"m.py": source}, CORE, {"aws": AWS}, _dists) == []
