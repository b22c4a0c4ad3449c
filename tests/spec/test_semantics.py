"""Checks across stages and across pipelines."""

from collections.abc import Callable
from pathlib import Path

from gennaker.spec.loader import LoadedSpec, load_folder
from gennaker.spec.semantics import find_cycle

Write = Callable[[str, str], Path]
Load = Callable[..., LoadedSpec]
Errors = Callable[..., list[str]]

HEAD = "application: hello\nname: p\nstages:\n"


def test_duplicate_stage_ids(errors: Errors) -> None:
    text = HEAD + "  - {id: a, type: wait, duration: 1s}\n  - {id: b, type: wait, duration: 1s}\n"
    text += "  - {id: a, type: wait, duration: 2s}\n"
    assert errors(text) == ["spec.yaml:6:10 stages[2].id: duplicate stage id 'a' (first on line 4)"]


def test_depends_on_unknown_stage_suggests(errors: Errors) -> None:
    text = (
        HEAD
        + "  - {id: build, type: wait, duration: 1s}\n  - {id: test, type: wait, duration: 1s, dependsOn: [biuld]}\n"
    )
    assert errors(text) == ["spec.yaml:5:54 stages[1].dependsOn[0]: no stage with id 'biuld' (did you mean 'build'?)"]


def test_depends_on_itself(errors: Errors) -> None:
    assert errors(HEAD + "  - {id: a, type: wait, duration: 1s, dependsOn: [a]}\n") == [
        "spec.yaml:4:51 stages[0].dependsOn[0]: a stage cannot depend on itself"
    ]


def test_cycle(errors: Errors) -> None:
    text = HEAD + (
        "  - {id: a, type: wait, duration: 1s}\n"
        "  - {id: b, type: wait, duration: 1s, dependsOn: [a, d]}\n"
        "  - {id: c, type: wait, duration: 1s, dependsOn: [b]}\n"
        "  - {id: d, type: wait, duration: 1s, dependsOn: [c]}\n"
    )
    assert errors(text) == ["spec.yaml:7:50 stages[3].dependsOn: dependency cycle: b -> c -> d -> b"]


def test_cycle_through_an_implicit_previous_stage(errors: Errors) -> None:
    text = HEAD + "  - {id: a, type: wait, duration: 1s, dependsOn: [b]}\n  - {id: b, type: wait, duration: 1s}\n"
    (err,) = errors(text)
    assert "dependency cycle: a -> b -> a" in err


def test_find_cycle_none_for_a_diamond() -> None:
    assert find_cycle({"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]}) is None


def _chain_listed_backwards(n: int) -> str:
    """n stages, each depending on the one listed after it: the walk from the first goes n deep."""
    lines = [f"  - {{id: s{i}, type: wait, duration: 1s, dependsOn: [s{i + 1}]}}\n" for i in range(n - 1)]
    return HEAD + "".join(lines) + f"  - {{id: s{n - 1}, type: wait, duration: 1s, dependsOn: []}}\n"


def test_a_long_chain_is_checked_without_exhausting_the_recursion_limit(load: Load, errors: Errors) -> None:
    spec = load(_chain_listed_backwards(1500))
    assert spec.pipeline.parents()["s0"] == ["s1"]
    # The same chain closed into a loop at its far end.
    looped = _chain_listed_backwards(1500).replace(
        "id: s1499, type: wait, duration: 1s, dependsOn: []", "id: s1499, type: wait, duration: 1s, dependsOn: [s0]"
    )
    (err,) = errors(looped)
    assert err == (  # at the dependsOn that closes the loop; a long loop is shortened
        "spec.yaml:5:51 stages[1].dependsOn: dependency cycle: "
        "s0 -> s1499 -> s1498 -> s1497 -> s1496 -> s1495 -> ... (1500 stages) -> s2 -> s1 -> s0"
    )


def test_promote_without_deploy_upstream(errors: Errors) -> None:
    text = HEAD + (
        "  - {id: bake, type: bake, package: x}\n"
        "  - {id: deploy, type: deploy}\n"
        "  - {id: promote, type: promote, dependsOn: [bake]}\n"
    )
    assert errors(text) == [
        "spec.yaml:6:25 stages[2]: a promote stage needs a deploy stage before it (in its dependsOn chain) "
        "or an explicit serverGroup"
    ]


def test_promote_with_a_deploy_further_up_or_an_explicit_server_group(load: Load) -> None:
    load(
        HEAD + "  - {id: b, type: bake, package: x}\n  - {id: d, type: deploy}\n  - {id: w, type: wait, duration: 1s}\n"
        "  - {id: p, type: promote}\n"
    )
    load(HEAD + "  - {id: p, type: promote, serverGroup: hello-v003}\n")


def test_canary_without_deploy(errors: Errors) -> None:
    text = HEAD + "  - {id: k, type: canary, metrics: [{name: e, query: error_rate}]}\n"
    assert errors(text) == [
        "spec.yaml:4:19 stages[0]: a canary stage needs a deploy stage before it, "
        "or explicit baseline and canary server groups"
    ]


def test_canary_with_explicit_groups_needs_no_deploy(load: Load) -> None:
    load(HEAD + "  - {id: k, type: canary, baseline: a-v1, canary: a-v2, metrics: [{name: e, query: q}]}\n")


def test_deploy_without_an_image_source(errors: Errors) -> None:
    text = HEAD + "  - {id: w, type: wait, duration: 1s}\n  - {id: deploy, type: deploy}\n"
    assert errors(text) == [
        "spec.yaml:5:24 stages[1]: a deploy stage needs an image: a bake or findImage stage before it, or 'image'"
    ]


def test_deploy_image_stage_must_be_upstream(errors: Errors) -> None:
    text = HEAD + ("  - {id: bake, type: bake, package: x}\n  - {id: deploy, type: deploy, image: {stage: bkae}}\n")
    assert errors(text) == [
        "spec.yaml:5:47 stages[1].image.stage: image stage 'bkae' is not a stage this deploy depends on "
        "(did you mean 'bake'?)"
    ]


def test_deploy_image_from_a_named_image_or_a_find_image(load: Load) -> None:
    load(HEAD + "  - {id: deploy, type: deploy, image: {name: 'ami-123'}}\n")
    load(HEAD + "  - {id: find, type: findImage, package: x}\n  - {id: deploy, type: deploy}\n")


def test_duplicate_parameter(errors: Errors) -> None:
    text = "application: hello\nname: p\nparameters:\n  - {name: v}\n  - {name: v}\nstages:\n"
    text += "  - {id: w, type: wait, duration: 1s}\n"
    assert errors(text) == ["spec.yaml:5:12 parameters[1].name: duplicate parameter 'v'"]


def test_required_parameter_of_a_triggered_pipeline_needs_a_default(errors: Errors) -> None:
    # Airflow refuses a scheduled DAG with a required param that has no default: the factory would crash.
    text = (
        "application: hello\nname: p\nparameters:\n  - {name: version, required: true}\n"
        "triggers:\n  - {type: cron, expression: '0 1 * * *'}\nstages:\n  - {id: w, type: wait, duration: 1s}\n"
    )
    assert errors(text) == [
        "spec.yaml:4:5 parameters[0]: required parameter 'version' needs a 'default': triggered runs have nobody to ask"
    ]


# --------------------------------------------------------------------------- across pipelines


def _folder(write: Write, files: dict[str, str]) -> Path:
    write("pipelines/defaults.yaml", "application: hello\n")
    for name, body in files.items():
        write(f"pipelines/{name}.yaml", f"name: {name}\n{body}stages:\n  - {{id: w, type: wait, duration: 1s}}\n")
    return Path("pipelines")


def _headlines(result: object, display: str) -> list[str]:
    return [e.headline() for e in result.errors[display].errors]  # type: ignore[attr-defined]


def test_trigger_on_an_unknown_pipeline(write: Write) -> None:
    root = _folder(
        write,
        {
            "build": "",
            "deploy": "triggers:\n  - {type: pipeline, pipeline: hello.biuld}\n",
        },
    )
    result = load_folder(root)
    assert sorted(result.specs) == ["hello.build"]
    assert _headlines(result, "pipelines/deploy.yaml") == [
        "pipelines/deploy.yaml:3:32 triggers[0].pipeline: unknown pipeline 'hello.biuld' (did you mean 'hello.build'?)"
    ]


def test_trigger_on_a_known_pipeline_loads(write: Write) -> None:
    root = _folder(write, {"build": "", "deploy": "triggers:\n  - {type: pipeline, pipeline: hello.build}\n"})
    assert sorted(load_folder(root).specs) == ["hello.build", "hello.deploy"]


def test_a_pipeline_cannot_trigger_itself(write: Write) -> None:
    root = _folder(write, {"loop": "triggers:\n  - {type: pipeline, pipeline: hello.loop}\n"})
    assert _headlines(load_folder(root), "pipelines/loop.yaml") == [
        "pipelines/loop.yaml:3:32 triggers[0].pipeline: a pipeline cannot trigger itself"
    ]


def test_run_pipeline_naming_an_unknown_pipeline(write: Write) -> None:
    write("pipelines/defaults.yaml", "application: hello\n")
    write("pipelines/smoke.yaml", "name: smoke\nstages:\n  - {id: w, type: wait, duration: 1s}\n")
    write("pipelines/release.yaml", "name: release\nstages:\n  - {id: run, type: runPipeline, pipeline: hello.smok}\n")
    result = load_folder(Path("pipelines"))
    assert sorted(result.specs) == ["hello.smoke"]
    assert _headlines(result, "pipelines/release.yaml") == [
        "pipelines/release.yaml:3:44 stages[0].pipeline: unknown pipeline 'hello.smok' (did you mean 'hello.smoke'?)"
    ]


def test_a_broken_pipeline_still_counts_as_known(write: Write) -> None:
    # One mistake must not cascade: the listener of a broken pipeline is not "unknown pipeline" too.
    write("pipelines/defaults.yaml", "application: hello\n")
    write("pipelines/build.yaml", "name: build\nstages:\n  - {id: w, type: wait, duration: never}\n")
    write("pipelines/sub/defaults.yaml", "owner: sub-team\n")
    write("pipelines/sub/deploy.yaml", "name: deploy\nstages:\n  - {id: w, type: wiat}\n")
    write(
        "pipelines/listener.yaml",
        "name: listener\ntriggers:\n  - {type: pipeline, pipeline: hello.build}\n"
        "  - {type: pipeline, pipeline: hello.deploy}\n"
        "stages:\n  - {id: run, type: runPipeline, pipeline: hello.build}\n",
    )
    result = load_folder(Path("pipelines"))
    assert sorted(result.specs) == ["hello.listener"]
    assert sorted(result.errors) == ["pipelines/build.yaml", "pipelines/sub/deploy.yaml"]


def test_unknown_trigger_pipeline_never_suggests_itself(write: Write) -> None:
    # "did you mean" the pipeline itself would lead straight to "a pipeline cannot trigger itself".
    root = _folder(write, {"smoke": "", "deploy": "triggers:\n  - {type: pipeline, pipeline: hello.deplo}\n"})
    assert _headlines(load_folder(root), "pipelines/deploy.yaml") == [
        "pipelines/deploy.yaml:3:32 triggers[0].pipeline: unknown pipeline 'hello.deplo' (did you mean 'hello.smoke'?)"
    ]


def test_run_pipeline_cannot_run_its_own_pipeline(write: Write) -> None:
    # With concurrency 1 the child run would wait for its parent forever.
    write("pipelines/defaults.yaml", "application: hello\n")
    write(
        "pipelines/release.yaml", "name: release\nstages:\n  - {id: run, type: runPipeline, pipeline: hello.release}\n"
    )
    assert _headlines(load_folder(Path("pipelines")), "pipelines/release.yaml") == [
        "pipelines/release.yaml:3:44 stages[0].pipeline: a runPipeline stage cannot run its own pipeline"
    ]
