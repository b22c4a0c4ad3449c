"""The processes of a server group's instances, as its supervisor records them, and how to start one.

What the supervisor knows about a process lives in ``<home>/local/run/<A>/<R>/<NAME>/<instance-id>.json``
(pid, start time, boot id, port, argv, state, crash and health counters), so any pass, in any process, picks
up where the last one stopped. A recorded process is "still ours" (:func:`is_ours`) if ``/proc/<pid>`` exists
and is not a zombie, its start time and the machine's boot id are the recorded ones, and its ``cmdline``
ends with the recorded argv's last word (or its environment names the instance): a reused pid is never adopted.

An instance's command (:func:`image_command`): ``image.manifest``'s ``path`` (the image directory, absolute or
relative to ``<home>/local/images``), ``start_command`` (an argv list or a shell-like string; argv[0] and any
argument naming a file of the image directory are made absolute) and ``env``; cwd = the image directory; the
environment is built by :mod:`procenv`, never inherited.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from gennaker.cloud.local import privfiles, procenv, processes
from gennaker.cloud.local.supervisor_options import MODULE, SupervisorPaths
from gennaker.cloud.model import Image, ServerGroup
from gennaker.errors import InvalidRequest

log = logging.getLogger(MODULE)


@dataclass
class ProcessRecord:
    """What the supervisor knows about one instance's process (a JSON file per instance)."""

    instance_id: str
    state: str = "new"  # new | running | backoff | failed | stopped
    pid: int | None = None
    proc_start: int | None = None
    boot_id: str | None = None
    port: int | None = None
    argv: list[str] = field(default_factory=list)
    log: str = ""
    started_at: float = 0.0
    next_start: float = 0.0
    crashes: int = 0
    last_exit: str = ""
    count_restart: bool = False
    passes: int = 0
    fails: int = 0

    @classmethod
    def from_json(cls, text: str) -> ProcessRecord:
        """Read a record file's text (keys this version does not know are ignored)."""
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})

    def to_json(self) -> str:
        """The record file's text."""
        return json.dumps(asdict(self), sort_keys=True)


def is_ours(record: ProcessRecord) -> bool:
    """The recorded process still runs and is the one we started (not a reused pid)."""
    pid = record.pid
    if record.state != "running" or not processes.pid_alive(pid):
        return False
    assert pid is not None
    if pid in processes.CHILDREN:
        return True
    stat = processes.proc_stat(pid)
    if stat is None:
        return not processes.has_proc()
    if record.proc_start is not None and stat[1] != record.proc_start:
        return False
    if record.boot_id is not None and processes.boot_id() not in (None, record.boot_id):
        return False
    cmdline = processes.cmdline(pid)
    if cmdline and record.argv and cmdline[-1] == record.argv[-1]:
        return True
    return processes.environ_has(pid, f"GENNAKER_INSTANCE_ID={record.instance_id}")


def load_records(paths: SupervisorPaths) -> dict[str, ProcessRecord]:
    """Every readable record of the group, by instance id (an unreadable one is logged and skipped)."""
    records: dict[str, ProcessRecord] = {}
    if not paths.records_dir.is_dir():
        return records
    for file in sorted(paths.records_dir.glob("*.json")):
        try:
            record = ProcessRecord.from_json(file.read_text())
        except (OSError, ValueError, TypeError) as error:
            log.warning("ignoring unreadable process record %s: %s", file, error)
            continue
        records[record.instance_id] = record
    return records


def save_record(paths: SupervisorPaths, record: ProcessRecord) -> None:
    """Write the record atomically (0600 in 0700 folders: only our user reads the run files)."""
    privfiles.write_private(paths.record_file(record.instance_id), record.to_json())


def drop_record(paths: SupervisorPaths, instance_id: str) -> None:
    """Forget an instance's record (its process was stopped)."""
    with contextlib.suppress(FileNotFoundError):
        paths.record_file(instance_id).unlink()


def process_ended(paths: SupervisorPaths, instance_id: str) -> str | None:
    """Why the instance's recorded process is not running, if it is not; None if it runs or nothing is recorded.

    Cheap enough for every read and every routing refresh: the record, then ``/proc/<pid>/stat``
    (alive, not a zombie, and the recorded start time: a reused pid does not count).
    """
    try:
        record = ProcessRecord.from_json(paths.record_file(instance_id).read_text())
    except (OSError, ValueError, TypeError):
        return None
    if record.state != "running" or record.pid is None:
        return f"its process is not running ({record.state})"
    stat = processes.proc_stat(record.pid)  # not pid_alive(): a reader's own old child may have had this pid
    if stat is None and (processes.has_proc() or not processes.pid_alive(record.pid)):
        return f"its process (pid {record.pid}) has ended"
    if stat is not None and stat[0] in ("Z", "X", "x"):
        return f"its process (pid {record.pid}) has ended"
    if stat is not None and record.proc_start is not None and stat[1] != record.proc_start:
        return f"its process (pid {record.pid}) has ended (the pid now names another process)"
    return None


def instance_pids(home: str | os.PathLike[str], account: str, region: str, name: str) -> dict[str, int]:
    """Instance id -> pid of every recorded instance process of the group that still runs."""
    paths = SupervisorPaths.of(home, account, region, name)
    return {
        iid: record.pid for iid, record in load_records(paths).items() if record.pid is not None and is_ours(record)
    }


def stop_instances(
    home: str | os.PathLike[str], account: str, region: str, name: str, *, grace: float = 5.0
) -> list[str]:
    """Stop every recorded instance process of the group now (no store writes); the ids stopped.

    For a group with no supervisor (killed, or never restarted); a running supervisor
    would start them again: use :func:`~gennaker.cloud.local.supervisor.stop` instead.
    """
    paths = SupervisorPaths.of(home, account, region, name)
    with processes.flock(paths.pass_lock, timeout=60.0):
        records = load_records(paths)
        live = {iid: record for iid, record in records.items() if is_ours(record)}
        processes.stop_pids([record.pid for record in live.values() if record.pid], grace)
        for record in live.values():
            record.state, record.pid, record.next_start = "stopped", None, 0.0
            save_record(paths, record)
        return sorted(live)


@dataclass(frozen=True)
class Command:
    """How to start an instance of an image: argv, working directory, environment (without the instance's)."""

    argv: list[str]
    cwd: Path
    env: dict[str, str]


def image_command(image: Image, group: ServerGroup, home: str | os.PathLike[str]) -> Command:
    """The image's start command for the group: manifest ``path``, ``start_command`` and ``env``."""
    manifest = image.manifest
    where = manifest.get("path")
    if not where:
        raise InvalidRequest(f"image {image.id} has no manifest path (its directory)")
    image_dir = Path(str(where)).expanduser()
    if not image_dir.is_absolute():
        image_dir = Path(home).expanduser().absolute() / "local" / "images" / image_dir
    if not image_dir.is_dir():
        raise InvalidRequest(f"the directory {image_dir} of image {image.id} does not exist")
    raw = manifest.get("start_command", manifest.get("startCommand"))
    if isinstance(raw, str):
        argv = shlex.split(raw)
    elif isinstance(raw, list | tuple) and all(isinstance(arg, str | int | float) for arg in raw):
        argv = [str(arg) for arg in raw]
    else:
        raise InvalidRequest(f"image {image.id} has no start_command (an argv list) in its manifest")
    if not argv:
        raise InvalidRequest(f"image {image.id} has an empty start_command")
    argv = [_resolve(arg, image_dir, first=index == 0) for index, arg in enumerate(argv)]
    # Built from named parts, never the caller's environment (see procenv): no secret of Airflow's.
    env = procenv.instance_env(manifest.get("env"), group.environment)
    return Command(argv=argv, cwd=image_dir, env=env)


def _resolve(arg: str, image_dir: Path, *, first: bool) -> str:
    """An argument that names a file of the image directory, made absolute (argv[0] if it has a ``/``)."""
    if not arg or os.path.isabs(arg) or arg.startswith("-"):
        return arg
    candidate = image_dir / arg
    if candidate.exists() or (first and "/" in arg):
        return str(candidate)
    return arg


__all__ = [
    "Command",
    "ProcessRecord",
    "drop_record",
    "image_command",
    "instance_pids",
    "is_ours",
    "load_records",
    "process_ended",
    "save_record",
    "stop_instances",
]
