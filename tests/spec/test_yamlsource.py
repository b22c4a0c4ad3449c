from pathlib import Path

import pytest

from gennaker.errors import Position, SpecError
from gennaker.spec.yamlsource import load_file, parse_text

SPEC = """\
application: hello
name: deploy
stages:
  - id: bake
    type: bake
  - {id: wait, type: wait, duration: 5m}
"""


def test_values_and_keys_keep_their_line_and_column() -> None:
    doc = parse_text(SPEC, "p.yaml")
    assert doc.data["stages"][1] == {"id": "wait", "type": "wait", "duration": "5m"}
    pos = doc.positions
    assert pos.values[("application",)] == Position("p.yaml", 1, 14)
    assert pos.keys[("stages",)] == Position("p.yaml", 3, 1)
    assert pos.values[("stages", 0)] == Position("p.yaml", 4, 5)
    assert pos.values[("stages", 0, "type")] == Position("p.yaml", 5, 11)
    assert pos.keys[("stages", 1, "duration")] == Position("p.yaml", 6, 28)
    assert pos.values[("stages", 1, "duration")] == Position("p.yaml", 6, 38)


def test_find_falls_back_to_the_nearest_ancestor() -> None:
    pos = parse_text(SPEC, "p.yaml").positions
    # A field that is not written (e.g. a missing one) is reported where its parent is.
    assert pos.find(("stages", 0, "package")) == Position("p.yaml", 4, 5)
    assert pos.find(("stages", 0, "package"), key=True) == Position("p.yaml", 4, 5)
    assert pos.find(("nothing",)) == Position("p.yaml", 1, 1)


def test_duplicate_keys_are_rejected_at_the_second_one() -> None:
    text = "application: hello\nname: a\nstages: []\nname: b\n"
    with pytest.raises(SpecError) as info:
        parse_text(text, "dup.yaml")
    assert info.value.headline() == "dup.yaml:4:1 name: duplicate key 'name' (first defined on line 2)"


def test_duplicate_keys_nested_in_a_flow_mapping() -> None:
    with pytest.raises(SpecError) as info:
        parse_text("stages:\n  - {id: a, type: wait, id: b}\n", "dup.yaml")
    assert info.value.headline() == "dup.yaml:2:25 stages[0].id: duplicate key 'id' (first defined on line 2)"


@pytest.mark.parametrize(
    ("text", "tag", "column"),
    [
        ("a: !!python/object:os.system {}\n", "tag:yaml.org,2002:python/object:os.system", 4),
        ("a: !!python/object/apply:os.system [echo hi]\n", "tag:yaml.org,2002:python/object/apply:os.system", 4),
        ("a: !!python/name:os.system ''\n", "tag:yaml.org,2002:python/name:os.system", 4),
        ("a: !secret db-password\n", "!secret", 4),
        ("a: !include other.yaml\n", "!include", 4),
        ("a: !!binary aGVsbG8=\n", "tag:yaml.org,2002:binary", 4),
        ("a: !!set {x, y}\n", "tag:yaml.org,2002:set", 4),
        ("a:\n  - !env [HOME]\n", "!env", 5),
    ],
)
def test_non_core_tags_are_rejected_with_their_position(text: str, tag: str, column: int) -> None:
    with pytest.raises(SpecError) as info:
        parse_text(text, "t.yaml")
    err = info.value
    assert f"unsupported YAML tag {tag!r}" in err.message
    assert err.position is not None
    assert (err.position.line, err.position.column) == (text.count("\n", 0, text.index("!")) + 1, column)


def test_timestamps_stay_the_strings_written() -> None:
    doc = parse_text("date: 2024-01-01\nat: 2024-01-01T10:00:00Z\nversion: 1.10\n", "t.yaml")
    assert doc.data == {"date": "2024-01-01", "at": "2024-01-01T10:00:00Z", "version": 1.1}


def test_merge_keys_are_rejected() -> None:
    text = "base: {x: 1}\nother:\n  <<: {x: 1}\n  y: 2\n"
    with pytest.raises(SpecError) as info:
        parse_text(text, "m.yaml")
    assert info.value.headline() == (
        "m.yaml:3:3 other: YAML merge keys (<<) are not supported; use defaults.yaml or a template instead"
    )


NO_ALIASES = "YAML aliases/anchors are not allowed in pipeline specs (use templates or defaults.yaml)"

# "Billion laughs": ~300 bytes; each level repeats the one above ten times, so it expands to 10**6 strings.
LAUGHS = 'l0: &l0 "lol"\n' + "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]\n" for i in range(1, 7))


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("application: hello\nname: a\nstages: &s [*s]\n", (3, 9)),  # an alias that refers to itself
        ("application: hello\nname: a\nx: &x [1, 2]\ny: *x\n", (3, 4)),  # an anchor, even a harmless one
        ("application: hello\nname: a\n" + LAUGHS, (3, 5)),
    ],
    ids=["self-reference", "plain-anchor", "billion-laughs"],
)
def test_anchors_and_aliases_are_refused_at_their_line(text: str, where: tuple[int, int]) -> None:
    with pytest.raises(SpecError) as info:
        parse_text(text, "a.yaml")
    assert info.value.headline() == f"a.yaml:{where[0]}:{where[1]} {NO_ALIASES}"


def test_asterisks_and_ampersands_in_strings_are_not_aliases() -> None:
    text = 'cron: "0 * * * *"\nglob: "*.whl"\nq: a&b\nstageDefaults: {"*": {retries: 1}}\n'
    assert parse_text(text, "s.yaml").data["stageDefaults"] == {"*": {"retries": 1}}


def test_nesting_is_bounded_instead_of_exhausting_the_recursion_limit() -> None:
    text = "application: hello\nstages: " + "[" * 900 + "]" * 900 + "\n"
    with pytest.raises(SpecError) as info:
        parse_text(text, "deep.yaml")
    assert info.value.headline() == "deep.yaml:2:73 stages: nested more than 64 levels deep"


def test_syntax_errors_have_a_position_and_a_snippet() -> None:
    text = "application: hello\ndescription: Deploy: the app\n"
    with pytest.raises(SpecError) as info:
        parse_text(text, "s.yaml")
    assert info.value.render().splitlines() == [
        "s.yaml:2:20 invalid YAML: mapping values are not allowed in this context",
        "    2 | description: Deploy: the app",
        "      |                    ^",
    ]


def test_several_documents_are_an_error() -> None:
    with pytest.raises(SpecError, match="invalid YAML") as info:
        parse_text("a: 1\n---\nb: 2\n", "d.yaml")
    assert info.value.position == Position("d.yaml", 2, 1)


def test_complex_keys_are_rejected() -> None:
    with pytest.raises(SpecError, match="mapping keys must be plain strings"):
        parse_text("? [a, b]\n: c\n", "k.yaml")


def test_an_empty_document_is_none() -> None:
    assert parse_text("# nothing\n", "e.yaml").data is None


def test_load_file_names_the_file_as_asked(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text("a: [1\n", encoding="utf-8")
    with pytest.raises(SpecError) as info:
        load_file(path, "pipelines/x.yaml")
    assert info.value.file == "pipelines/x.yaml"


def test_load_file_reports_non_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(SpecError, match="not UTF-8 text") as info:
        load_file(path, "latin1.yaml")
    assert info.value.position == Position("latin1.yaml", 1, 1)


def test_yes_no_on_off_are_strings_as_in_yaml_1_2():
    from gennaker.spec.yamlsource import parse_text

    doc = parse_text("on: yes\nflag: true\noptions: [yes, no, off]\nother: False\n1: one\n", "x.yaml")
    assert doc.data == {"on": "yes", "flag": True, "options": ["yes", "no", "off"], "other": False, "1": "one"}
