"""Spinnaker's naming convention, checked against Frigga's own test cases (NamesSpec.groovy)."""

from __future__ import annotations

import pytest

from gennaker.cloud.naming import (
    Names,
    cluster_name,
    format_server_group_name,
    is_valid_name,
    next_sequence,
    parse_server_group_name,
)
from gennaker.errors import InvalidName, InvalidRequest, SequenceExhausted

# name -> (cluster, app, stack, detail, push, sequence); "" where Frigga says null.
FRIGGA_CASES = {
    "actiondrainer": ("actiondrainer", "actiondrainer", "", "", None, None),
    "actiondrainer-v003": ("actiondrainer", "actiondrainer", "", "", "v003", 3),
    "actiondrainer--v003": ("actiondrainer-", "actiondrainer", "", "", "v003", 3),
    "actiondrainer---v003": ("actiondrainer--", "actiondrainer", "", "", "v003", 3),
    "api-test-A": ("api-test-A", "api", "test", "A", None, None),
    "api-test-A-v406": ("api-test-A", "api", "test", "A", "v406", 406),
    "api-test-~A-v004": ("api-test-~A", "api", "test", "~A", "v004", 4),
    "api--~A-v004": ("api--~A", "api", "", "~A", "v004", 4),
    "api-test101": ("api-test101", "api", "test101", "", None, None),
    "chukwacollector_1-v889": ("chukwacollector_1", "chukwacollector_1", "", "", "v889", 889),
    "chukwa.collector_1-v889": ("chukwa.collector_1", "chukwa.collector_1", "", "", "v889", 889),
    "discovery-dev": ("discovery-dev", "discovery", "dev", "", None, None),
    "discovery-us-east-1d": ("discovery-us-east-1d", "discovery", "us", "east-1d", None, None),
    "evcache-us-east-1d-0-v223": ("evcache-us-east-1d-0", "evcache", "us", "east-1d-0", "v223", 223),
    "videometadata-navigator-integration-240-CAN": (
        "videometadata-navigator-integration-240-CAN",
        "videometadata",
        "navigator",
        "integration-240-CAN",
        None,
        None,
    ),
    "hello--canary-v001": ("hello--canary", "hello", "", "canary", "v001", 1),
    "hello-prod-v000": ("hello-prod", "hello", "prod", "", "v000", 0),
    # a push has 3 to 6 digits; otherwise "v1" is just a stack
    "foo-v1": ("foo-v1", "foo", "v1", "", None, None),
    "foo-v001": ("foo", "foo", "", "", "v001", 1),
    "foo-v000001": ("foo", "foo", "", "", "v000001", 1),
    "foo-v0000001": ("foo-v0000001", "foo", "v0000001", "", None, None),
}


@pytest.mark.parametrize("name", sorted(FRIGGA_CASES))
def test_parse_matches_frigga(name: str) -> None:
    cluster, app, stack, detail, push, sequence = FRIGGA_CASES[name]
    assert parse_server_group_name(name) == Names(name, cluster, app, stack, detail, push, sequence)


@pytest.mark.parametrize("name", ["", "  ", "nccp-moviecontrol%27", "api-^test-A-v004", "api-~test-A", "-v001"])
def test_invalid_names_are_refused(name: str) -> None:
    assert not is_valid_name(name)
    with pytest.raises(InvalidName):
        parse_server_group_name(name)


def test_invalid_name_error_says_what_the_convention_is() -> None:
    with pytest.raises(InvalidName, match=r"'a b' is not an app-stack-detail-v000 name: names follow"):
        parse_server_group_name("a b")


@pytest.mark.parametrize(
    ("app", "stack", "detail", "expected"),
    [
        ("hello", "", "", "hello"),
        ("hello", "prod", "", "hello-prod"),
        ("hello", "", "canary", "hello--canary"),
        ("hello", "prod", "canary", "hello-prod-canary"),
        ("hello", "prod", "us-east-1", "hello-prod-us-east-1"),
        ("hello_world", "prod.eu", "a_b", "hello_world-prod.eu-a_b"),
    ],
)
def test_cluster_name_follows_frigga(app: str, stack: str, detail: str, expected: str) -> None:
    assert cluster_name(app, stack, detail) == expected
    parsed = parse_server_group_name(expected)
    assert (parsed.app, parsed.stack, parsed.detail, parsed.cluster) == (app, stack, detail, expected)


@pytest.mark.parametrize(
    ("app", "stack", "detail", "message"),
    [
        ("", "prod", "", "application must not be empty"),
        ("hel-lo", "", "", "application 'hel-lo'.*no '-'"),
        ("hello", "pr-od", "", "stack 'pr-od'.*no '-'"),
        ("hello", "prod", "a b", "detail 'a b'"),
        ("hello", "prod", "~A", "detail '~A'"),
        ("hello", "v001", "", "would read as a server group name"),
        ("hello", "", "v002", "would read as a server group name"),
    ],
)
def test_cluster_name_refuses_bad_parts(app: str, stack: str, detail: str, message: str) -> None:
    with pytest.raises(InvalidName, match=message):
        cluster_name(app, stack, detail)


def test_format_server_group_name_pads_to_three_digits() -> None:
    assert format_server_group_name("hello-prod", 3) == "hello-prod-v003"
    assert format_server_group_name("hello", 0) == "hello-v000"
    assert format_server_group_name("hello--canary", 999) == "hello--canary-v999"


@pytest.mark.parametrize("sequence", [-1, 1000])
def test_format_server_group_name_refuses_out_of_range(sequence: int) -> None:
    with pytest.raises(InvalidRequest, match=r"outside 0\.\.999"):
        format_server_group_name("hello", sequence)


def test_format_server_group_name_refuses_a_server_group_as_cluster() -> None:
    with pytest.raises(InvalidName, match="use 'hello-prod'"):
        format_server_group_name("hello-prod-v001", 2)


def names(*sequences: int, cluster: str = "hello-prod") -> list[str]:
    return [format_server_group_name(cluster, s) for s in sequences]


@pytest.mark.parametrize(
    ("existing", "expected"),
    [
        ([], 0),
        ([0], 1),
        ([0, 1, 2], 3),
        ([5], 6),
        ([1, 3], 4),  # a gap below the newest is not refilled
        ([999], 0),  # wraps after 999
        ([998, 999], 0),
        ([998, 999, 0, 1], 2),  # after the wrap, v001 is the newest
        ([999, 0], 1),
    ],
)
def test_next_sequence_follows_the_newest(existing: list[int], expected: int) -> None:
    assert next_sequence(names(*existing)) == expected


def test_next_sequence_uses_the_newest_it_is_told() -> None:
    assert next_sequence(names(3, 7), newest="hello-prod-v003") == 4
    # the newest was destroyed: its successor is still the next
    assert next_sequence(names(3), newest="hello-prod-v007") == 8


def test_next_sequence_never_reuses_a_name_that_exists() -> None:
    assert next_sequence(names(4, 5, 6), newest="hello-prod-v004") == 7
    assert next_sequence(names(999, 0, 1), newest="hello-prod-v998") == 2
    every_but_one = [s for s in range(1000) if s != 500]
    assert next_sequence(names(*every_but_one), newest="hello-prod-v001") == 500


def test_next_sequence_raises_when_all_1000_are_taken() -> None:
    with pytest.raises(SequenceExhausted, match=r"all 1000 server group names.*destroy old server groups"):
        next_sequence(names(*range(1000)))


def test_next_sequence_ignores_names_without_sequence_and_long_pushes() -> None:
    assert next_sequence(["hello-prod", "hello-prod-v001000", "hello-prod-v002"]) == 3


def test_next_sequence_refuses_names_of_several_clusters() -> None:
    with pytest.raises(InvalidRequest, match="several clusters"):
        next_sequence(["hello-prod-v001", "hello-staging-v001"])
