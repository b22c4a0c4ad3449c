"""One broken spec is an import error of its own file in Airflow; the other pipelines still load."""

import shutil
import textwrap
from pathlib import Path

import pytest

from gennaker.factory import load_dags

REPO = Path(__file__).resolve().parents[2]

GOOD_A = """
name: alpha
stages:
  - {id: check, type: checkPreconditions, preconditions: [{expression: "true"}]}
  - {id: soak, type: wait, duration: 1s}
"""
GOOD_B = """
name: beta
triggers:
  - {type: pipeline, pipeline: hello.alpha}
stages:
  - {id: pause, type: wait, duration: 1s}
"""
BROKEN = """
name: broken
stages:
  - id: pause
    type: wait
    duration: soon
"""


@pytest.fixture
def bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A DAG bundle: repo/dags/ with the shipped DAG file and a pipelines/ folder of two good and one broken spec."""
    for var in ("GENNAKER_PIPELINES", "_AIRFLOW_PARSING_CONTEXT_DAG_ID", "_AIRFLOW_PARSING_CONTEXT_TASK_ID"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    dags = tmp_path / "repo" / "dags"
    hello = dags / "pipelines" / "hello"
    hello.mkdir(parents=True)
    shutil.copy(REPO / "dags" / "gennaker_pipelines.py", dags / "gennaker_pipelines.py")
    for name, text in {"defaults": "application: hello\n", "alpha": GOOD_A, "beta": GOOD_B, "broken": BROKEN}.items():
        (hello / f"{name}.yaml").write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return dags


def test_dagbag_loads_the_good_pipelines_and_reports_the_broken_spec(bundle: Path) -> None:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=bundle, bundle_path=bundle)
    assert sorted(bag.dag_ids) == ["hello.alpha", "hello.beta"]
    # The DAG file itself imported fine; the broken spec is an import error of its own path in the bundle.
    assert "gennaker_pipelines.py" not in bag.import_errors
    assert list(bag.import_errors) == ["pipelines/hello/broken.yaml"]
    message = bag.import_errors["pipelines/hello/broken.yaml"]
    assert message.splitlines() == [
        "dags/pipelines/hello/broken.yaml:5:15 stages[0].duration: 'soon' is not a duration such as 30s, 5m, 2h, "
        "1h30m, 1d or ISO 8601 PT30M",
        "    5 |     duration: soon",
        "      |               ^",
    ]
    # A pipeline that another one listens to publishes its status; the listener has an asset schedule.
    assert "gennaker_pipeline_status" in bag.dags["hello.alpha"].task_ids
    assert "gennaker_pipeline_status" not in bag.dags["hello.beta"].task_ids


def test_a_bundle_with_only_good_specs_has_no_import_errors(bundle: Path) -> None:
    from airflow.dag_processing.dagbag import DagBag

    (bundle / "pipelines" / "hello" / "broken.yaml").unlink()
    bag = DagBag(dag_folder=bundle, bundle_path=bundle)
    assert bag.import_errors == {}
    assert sorted(bag.dag_ids) == ["hello.alpha", "hello.beta"]


def _load(bundle: Path) -> dict[str, object]:
    namespace: dict[str, object] = {"__file__": str(bundle / "gennaker_pipelines.py")}
    load_dags(namespace)
    return {k: v for k, v in namespace.items() if k != "__file__"}


def test_load_dags_outside_a_dagbag_builds_everything(bundle: Path) -> None:
    built = _load(bundle)
    assert sorted(dag.dag_id for dag in built.values()) == ["hello.alpha", "hello.beta"]


def test_parsing_context_builds_only_the_wanted_pipeline(bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.sdk import get_parsing_context

    monkeypatch.setenv("_AIRFLOW_PARSING_CONTEXT_DAG_ID", "hello.beta")
    monkeypatch.setenv("_AIRFLOW_PARSING_CONTEXT_TASK_ID", "pause")
    assert get_parsing_context().dag_id == "hello.beta"
    built = _load(bundle)
    assert [dag.dag_id for dag in built.values()] == ["hello.beta"]


def test_parsing_context_build_matches_the_full_build(bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A task runs the DAG its worker parsed: the task and everything upstream of it must be as the DAG
    # processor stored them. The publish-status task (a teardown leaf nothing depends on) is only built
    # when it is the task to run, so that finding out whether anyone listens costs no read of other specs.
    from airflow.serialization.serialized_objects import DagSerialization

    full = {dag.dag_id: DagSerialization.to_dict(dag) for dag in _load(bundle).values()}
    monkeypatch.setenv("_AIRFLOW_PARSING_CONTEXT_DAG_ID", "hello.alpha")
    monkeypatch.setenv("_AIRFLOW_PARSING_CONTEXT_TASK_ID", "gennaker_pipeline_status")
    (dag,) = _load(bundle).values()
    assert DagSerialization.to_dict(dag) == full["hello.alpha"]

    monkeypatch.setenv("_AIRFLOW_PARSING_CONTEXT_DAG_ID", "hello.beta")
    monkeypatch.setenv("_AIRFLOW_PARSING_CONTEXT_TASK_ID", "pause")
    (dag,) = _load(bundle).values()
    assert DagSerialization.to_dict(dag) == full["hello.beta"]


def test_task_start_parse_of_a_stage_has_the_same_stages(bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    full = _load(bundle)["gennaker_dag__hello.alpha"]
    monkeypatch.setenv("_AIRFLOW_PARSING_CONTEXT_DAG_ID", "hello.alpha")
    for task_id in full.task_ids:  # type: ignore[attr-defined]
        if task_id == "gennaker_pipeline_status":
            continue
        monkeypatch.setenv("_AIRFLOW_PARSING_CONTEXT_TASK_ID", task_id)
        (dag,) = _load(bundle).values()
        stages = {t: full.get_task(t).upstream_task_ids for t in full.task_ids if t != "gennaker_pipeline_status"}  # type: ignore[attr-defined]
        assert {t: dag.get_task(t).upstream_task_ids for t in dag.task_ids} == stages  # type: ignore[attr-defined]


def test_parsing_context_of_an_unknown_dag_builds_everything(bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("_AIRFLOW_PARSING_CONTEXT_DAG_ID", "someone.else")
    assert sorted(dag.dag_id for dag in _load(bundle).values()) == ["hello.alpha", "hello.beta"]


def test_parsing_context_of_a_broken_pipeline_builds_no_broken_dag(
    bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("_AIRFLOW_PARSING_CONTEXT_DAG_ID", "hello.broken")
    assert sorted(dag.dag_id for dag in _load(bundle).values()) == ["hello.alpha", "hello.beta"]


NO_ALIASES = "YAML aliases/anchors are not allowed in pipeline specs (use templates or defaults.yaml)"
# A few hundred bytes that expand to a million strings, and an alias that refers to itself.
LAUGHS = "name: laughs\nl0: &l0 lol\n" + "".join(
    f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]\n" for i in range(1, 7)
)
SELF_ALIAS = "name: loop\nstages: &s\n  - *s\n"


def test_alias_bombs_are_import_errors_at_their_line_and_the_good_pipelines_load(bundle: Path) -> None:
    from airflow.dag_processing.dagbag import DagBag

    hello = bundle / "pipelines" / "hello"
    (hello / "broken.yaml").unlink()
    (hello / "laughs.yaml").write_text(LAUGHS, encoding="utf-8")
    (hello / "loop.yaml").write_text(SELF_ALIAS, encoding="utf-8")
    bag = DagBag(dag_folder=bundle, bundle_path=bundle)
    assert sorted(bag.dag_ids) == ["hello.alpha", "hello.beta"]
    assert sorted(bag.import_errors) == ["pipelines/hello/laughs.yaml", "pipelines/hello/loop.yaml"]
    assert bag.import_errors["pipelines/hello/laughs.yaml"].splitlines()[0] == (
        f"dags/pipelines/hello/laughs.yaml:2:5 {NO_ALIASES}"
    )
    assert bag.import_errors["pipelines/hello/loop.yaml"].splitlines()[0] == (
        f"dags/pipelines/hello/loop.yaml:2:9 {NO_ALIASES}"
    )


@pytest.mark.parametrize("error", [RecursionError, MemoryError, RuntimeError])
def test_an_unexpected_error_loading_one_spec_is_that_files_import_error(
    bundle: Path, monkeypatch: pytest.MonkeyPatch, error: type[Exception]
) -> None:
    from airflow.dag_processing.dagbag import DagBag

    from gennaker.spec import loader

    real = loader.load_spec

    def load_spec(path: Path, **kwargs: object) -> loader.LoadedSpec:
        if Path(path).name == "beta.yaml":
            raise error("simulated")
        return real(path, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(loader, "load_spec", load_spec)
    bag = DagBag(dag_folder=bundle, bundle_path=bundle)
    assert "gennaker_pipelines.py" not in bag.import_errors  # the DAG file itself imported
    assert sorted(bag.dag_ids) == ["hello.alpha"]
    assert sorted(bag.import_errors) == ["pipelines/hello/beta.yaml", "pipelines/hello/broken.yaml"]
    assert bag.import_errors["pipelines/hello/beta.yaml"].splitlines()[0] == (
        f"dags/pipelines/hello/beta.yaml:1:1 gennaker could not load this spec ({error.__name__}: simulated); "
        "if the spec looks fine, please report it"
    )


def test_an_unexpected_error_building_one_dag_is_that_files_import_error(
    bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.dag_processing.dagbag import DagBag

    import gennaker.factory as factory

    real = factory.build_dag

    def build_dag(spec: object, **kwargs: object) -> object:
        if spec.pipeline.dag_id == "hello.alpha":  # type: ignore[attr-defined]
            raise RecursionError("maximum recursion depth exceeded")
        return real(spec, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(factory, "build_dag", build_dag)
    bag = DagBag(dag_folder=bundle, bundle_path=bundle)
    assert sorted(bag.dag_ids) == ["hello.beta"]
    assert sorted(bag.import_errors) == ["pipelines/hello/alpha.yaml", "pipelines/hello/broken.yaml"]
    assert "RecursionError: maximum recursion depth exceeded" in bag.import_errors["pipelines/hello/alpha.yaml"]


def test_an_unexpected_error_in_a_task_start_parse_falls_back_to_the_full_build(
    bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gennaker.factory as factory

    monkeypatch.setenv("_AIRFLOW_PARSING_CONTEXT_DAG_ID", "hello.beta")
    monkeypatch.setenv("_AIRFLOW_PARSING_CONTEXT_TASK_ID", "pause")

    def load_spec(path: Path, **kwargs: object) -> object:
        raise RuntimeError("a bug of ours")

    monkeypatch.setattr(factory, "load_spec", load_spec)
    built = _load(bundle)  # the one-spec path failed: the folder is built the DAG processor's way
    assert sorted(dag.dag_id for dag in built.values()) == ["hello.alpha", "hello.beta"]  # type: ignore[attr-defined]
