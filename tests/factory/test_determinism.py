"""Same specs, same DAGs: Airflow re-serialises (and re-stores) a DAG whenever its serialisation changes."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from gennaker.factory import build_all

REPO = Path(__file__).resolve().parents[2]

_SERIALISE = """
import hashlib, json, sys
from pathlib import Path
from airflow.serialization.serialized_objects import DagSerialization
from gennaker.factory import build_all

folder, base = Path(sys.argv[1]), Path(sys.argv[2])
result = build_all(folder, base=base)
assert not result.errors, result.errors
for dag_id in sorted(result.dags):
    text = json.dumps(DagSerialization.to_dict(result.dags[dag_id]), sort_keys=True, default=str)
    print(dag_id, hashlib.sha256(text.encode()).hexdigest())
"""


def _serialised(folder: Path, base: Path) -> dict[str, str]:
    from airflow.serialization.serialized_objects import DagSerialization

    result = build_all(folder, base=base)
    assert result.errors == {}
    return {
        dag_id: json.dumps(DagSerialization.to_dict(dag), sort_keys=True, default=str)
        for dag_id, dag in result.dags.items()
    }


def _in_subprocess(folder: Path, base: Path, seed: str) -> dict[str, str]:
    out = subprocess.run(
        [sys.executable, "-c", _SERIALISE, str(folder), str(base)],
        check=True,
        capture_output=True,
        text=True,
        cwd=base,
        env={**os.environ, "PYTHONHASHSEED": seed},
    ).stdout
    return dict(line.split(" ", 1) for line in out.splitlines() if line.strip())


def test_two_builds_serialise_identically() -> None:
    folder = REPO / "dags/pipelines"
    first = _serialised(folder, REPO)
    second = _serialised(folder, REPO)
    assert sorted(first) == ["hello.deploy-prod", "hello.nightly", "hello.release-checks", "hello.smoke"]
    assert first == second


def test_serialisation_changes_when_the_spec_does(tmp_path: Path) -> None:
    # Guards the test above: the comparison does see a change in a spec.
    folder = tmp_path / "pipelines"
    folder.mkdir()
    spec = folder / "p.yaml"
    spec.write_text("application: a\nname: p\nstages:\n  - {id: w, type: wait, duration: 1s}\n")
    before = _serialised(folder, tmp_path)
    spec.write_text("application: a\nname: p\nstages:\n  - {id: w, type: wait, duration: 2s}\n")
    assert _serialised(folder, tmp_path) != before


def test_two_processes_serialise_identically() -> None:
    # Separate interpreters: different hash seeds, import orders and clock readings must not matter.
    folder = REPO / "dags/pipelines"
    first = _in_subprocess(folder, REPO, "1")
    second = _in_subprocess(folder, REPO, "2")
    assert sorted(first) == ["hello.deploy-prod", "hello.nightly", "hello.release-checks", "hello.smoke"]
    assert first == second
    here = {dag_id: hashlib.sha256(text.encode()).hexdigest() for dag_id, text in _serialised(folder, REPO).items()}
    assert here == first
