"""The ``gennaker`` command: validate, schema, reference, render, graph, local-stop, db migrate."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from gennaker import __version__

if TYPE_CHECKING:
    from gennaker.spec.loader import FolderResult


def _cmd_validate(args: argparse.Namespace) -> int:
    from gennaker.spec.loader import is_spec_file, load_folder

    failed = 0
    ok = 0
    for raw in args.paths:
        path = Path(raw)
        if path.is_dir():
            result = load_folder(path)
        elif path.is_file() and is_spec_file(path):
            root = Path(args.root) if args.root else _guess_root(path)
            result = load_folder(root, files=[path])
        else:
            print(f"{raw}: no such spec file or folder", file=sys.stderr)
            failed += 1
            continue
        if not args.no_build:
            _check_build(result)
        for _display, errs in sorted(result.errors.items()):
            print(errs.render(), end="\n\n", file=sys.stderr)
            failed += 1
        for dag_id, spec in sorted(result.specs.items()):
            ok += 1
            if args.verbose:
                print(f"ok  {spec.display}  ({dag_id}, {len(spec.pipeline.stages)} stages)")
    print(f"{ok} valid, {failed} invalid", file=sys.stderr if failed else sys.stdout)
    return 1 if failed else 0


def _check_build(result: FolderResult) -> None:
    """Also refuse what the factory cannot build yet (stage types without an operator)."""
    from gennaker.errors import SpecErrors
    from gennaker.factory.stages import check_supported

    for dag_id, spec in list(result.specs.items()):
        problems = check_supported(spec)
        if problems:
            result.errors[spec.display] = SpecErrors(problems)
            del result.specs[dag_id]


def _guess_root(path: Path) -> Path:
    """The pipelines folder a spec belongs to: the nearest ancestor called 'pipelines', else its folder."""
    for parent in path.resolve().parents:
        if parent.name == "pipelines":
            return parent
    return path.resolve().parent


def _emit(text: str, output: str | None) -> int:
    """Write ``text`` to ``output`` (saying so), or to stdout."""
    if output:
        Path(output).write_text(text, encoding="utf-8")
        print(f"wrote {output}")
    else:
        sys.stdout.write(text)
    return 0


def _cmd_schema(args: argparse.Namespace) -> int:
    from gennaker.spec.schema import pipeline_schema

    text = json.dumps(pipeline_schema(), indent=2, sort_keys=False) + "\n"
    return _emit(text, args.output)


def _load_one(raw: str, root: str | None) -> object:
    from gennaker.errors import SpecErrors
    from gennaker.spec.loader import load_spec

    path = Path(raw)
    try:
        return load_spec(path, root=Path(root) if root else _guess_root(path))
    except SpecErrors as exc:
        print(exc.render(), file=sys.stderr)
        return None


def _cmd_render(args: argparse.Namespace) -> int:
    import yaml

    spec = _load_one(args.spec, args.root)
    if spec is None:
        return 1
    data = spec.pipeline.model_dump(mode="json", by_alias=True, exclude_defaults=not args.full)  # type: ignore[attr-defined]
    sys.stdout.write(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return 0


def _cmd_graph(args: argparse.Namespace) -> int:
    from gennaker.spec.graph import render_graph

    spec = _load_one(args.spec, args.root)
    if spec is None:
        return 1
    sys.stdout.write(render_graph(spec.pipeline))  # type: ignore[attr-defined]
    return 0


def _cmd_local_stop(args: argparse.Namespace) -> int:
    from gennaker.cloud.local.provider import stop_everything

    home = Path(args.home).expanduser() if args.home else None
    stopped = stop_everything(home)
    for line in stopped:
        print(line)
    print(f"stopped {len(stopped)} supervisor(s) and load balancer(s)")
    return 0


def _cmd_db_migrate(args: argparse.Namespace) -> int:
    from gennaker.db.migrate import migrate
    from gennaker.errors import GennakerError

    try:
        print(migrate(args.url).describe())
        if not args.no_legacy_audit:
            from gennaker.db.engine import get_engine
            from gennaker.db.legacy import import_audit
            from gennaker.paths import gennaker_home

            state_file = gennaker_home() / "local" / "state.db"
            copied = import_audit(get_engine(args.url), state_file)
            if copied:
                print(f"copied {copied} audit trail entries of an earlier version from {state_file}")
    except GennakerError as error:
        print(f"gennaker db migrate: {error}", file=sys.stderr)
        return 1
    return 0


def _cmd_reference(args: argparse.Namespace) -> int:
    from gennaker.spec.reference import render_reference

    text = render_reference()
    return _emit(text, args.output)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gennaker", description="Continuous delivery on Apache Airflow.")
    parser.add_argument("--version", action="version", version=f"gennaker {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    v = sub.add_parser("validate", help="check pipeline specs; exit 1 on any error")
    v.add_argument("paths", nargs="+", help="spec files or folders of specs")
    v.add_argument("--root", help="the pipelines folder (for defaults.yaml); default: guessed")
    v.add_argument("--no-build", action="store_true", help="check the language only, not what can run")
    v.add_argument("-v", "--verbose", action="store_true", help="list the valid specs too")
    v.set_defaults(func=_cmd_validate)

    s = sub.add_parser("schema", help="write the JSON Schema of the spec language")
    s.add_argument("-o", "--output", help="file to write (default: stdout)")
    s.set_defaults(func=_cmd_schema)

    d = sub.add_parser("reference", help="write the Markdown reference of the spec language")
    d.add_argument("-o", "--output", help="file to write (default: stdout)")
    d.set_defaults(func=_cmd_reference)

    r = sub.add_parser("render", help="print a spec after templates and defaults, as YAML")
    r.add_argument("spec")
    r.add_argument("--root", help="the pipelines folder (for defaults.yaml)")
    r.add_argument("--full", action="store_true", help="include fields left at their defaults")
    r.set_defaults(func=_cmd_render)

    k = sub.add_parser(
        "local-stop", help="stop the local provider's processes (instances, load balancers); state is kept"
    )
    k.add_argument("--home", help="the gennaker home (default: $GENNAKER_HOME, else $AIRFLOW_HOME/gennaker)")
    k.set_defaults(func=_cmd_local_stop)
    db = sub.add_parser("db", help="gennaker's shared tables (cluster locks, audit trail)")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    mig = db_sub.add_parser(
        "migrate",
        help="create or upgrade the gennaker_ tables (run after `airflow db migrate`, with Airflow's environment)",
    )
    mig.add_argument(
        "--url",
        help="a SQLAlchemy URL (default: $GENNAKER_STATE_DB, else [gennaker] state_db, else Airflow's database)",
    )
    mig.add_argument(
        "--no-legacy-audit",
        action="store_true",
        help="do not copy the audit trail of earlier versions from $GENNAKER_HOME/local/state.db",
    )
    mig.set_defaults(func=_cmd_db_migrate)
    g = sub.add_parser("graph", help="print the stage graph as text")
    g.add_argument("spec")
    g.add_argument("--root", help="the pipelines folder (for defaults.yaml)")
    g.set_defaults(func=_cmd_graph)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
