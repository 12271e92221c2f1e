"""The cluster file: every way it can be wrong names the field and says what to do."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from raftstate.node.config import ConfigError, Settings, load_config, parse_address

REPO = Path(__file__).resolve().parent.parent

GOOD = """\
cluster_id: test
nodes:
  - {id: n1, address: "127.0.0.1:7001", data_dir: ./data/n1}
  - {id: n2, address: "127.0.0.1:7002", data_dir: ./data/n2}
  - {id: n3, address: "127.0.0.1:7003", data_dir: ./data/n3}
auth: {enabled: false}
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "cluster.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def error_of(tmp_path: Path, text: str) -> str:
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(p)
    msg = str(info.value)
    assert msg.startswith(f"{p}: "), "every message names the file first"
    assert "\n" not in msg, "one message, one line"
    return msg


def with_settings(extra: str) -> str:
    return GOOD + "settings:\n" + textwrap.indent(textwrap.dedent(extra), "  ")


# --------------------------------------------------------------------------- what loads


def test_repo_cluster_yaml_is_a_working_three_node_cluster() -> None:
    cfg = load_config(REPO / "cluster.yaml")
    assert [n.id for n in cfg.nodes] == ["n1", "n2", "n3"]
    assert [n.address for n in cfg.nodes] == ["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"]
    assert [n.data_dir for n in cfg.nodes] == [REPO / "data" / i for i in ("n1", "n2", "n3")]
    assert cfg.settings == Settings(), "the repo file spells out the defaults"
    assert cfg.settings.raft_settings.election_ticks == 10


def test_defaults_apply_when_optional_parts_are_missing(tmp_path: Path) -> None:
    cfg = load_config(
        write(tmp_path, "nodes:\n  - {id: a, address: 'h:9000', data_dir: d}\nauth: {enabled: false}\n")
    )
    assert cfg.cluster_id == "raftstate"
    assert cfg.settings == Settings()
    assert (cfg.settings.heartbeat_ticks, cfg.settings.election_ticks) == (2, 10)


def test_relative_data_dir_resolves_against_the_files_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sub = tmp_path / "conf"
    sub.mkdir()
    (sub / "c.yaml").write_text(
        "nodes:\n"
        "  - {id: a, address: 'h:1', data_dir: ../state/a}\n"
        "  - {id: b, address: 'h:2', data_dir: /abs/b}\n"
        "auth: {enabled: false}\n"
    )
    monkeypatch.chdir(tmp_path)  # a relative config path, read from elsewhere
    cfg = load_config("conf/c.yaml")
    monkeypatch.chdir("/")
    assert cfg.node("a").data_dir == tmp_path / "state" / "a"
    assert cfg.node("b").data_dir == Path("/abs/b")


def test_validation_never_touches_the_data_dirs(tmp_path: Path) -> None:
    load_config(write(tmp_path, GOOD))
    assert not (tmp_path / "data").exists()


def test_ticks_are_derived_from_milliseconds(tmp_path: Path) -> None:
    cfg = load_config(
        write(tmp_path, with_settings("tick_ms: 20\nheartbeat_ms: 60\nelection_timeout_ms: 600\n"))
    )
    assert (cfg.settings.heartbeat_ticks, cfg.settings.election_ticks) == (3, 30)


def test_node_lookup_and_peers(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD))
    assert cfg.node("n2").port == 7002 and cfg.node("n2").host == "127.0.0.1"
    assert cfg.peers_of("n1") == {"n2": "127.0.0.1:7002", "n3": "127.0.0.1:7003"}
    with pytest.raises(ConfigError, match=r'no node has id "n9"; known ids: n1, n2, n3'):
        cfg.node("n9")


# --------------------------------------------------------------------------- file and syntax


def test_unreadable_file_names_the_path(tmp_path: Path) -> None:
    p = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError, match=r"missing\.yaml: cannot read the cluster file \(No such file"):
        load_config(p)


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    msg = error_of(tmp_path, "nodes:\n  - {id: n1, address: 127.0.0.1:7001\n")
    assert "line 3" in msg and "fix the YAML" in msg


def test_duplicate_key_is_refused_rather_than_silently_overwritten(tmp_path: Path) -> None:
    msg = error_of(tmp_path, with_settings("tick_ms: 50\ntick_ms: 10\n"))
    assert 'key "tick_ms" appears twice' in msg and "keep one" in msg


def test_empty_file(tmp_path: Path) -> None:
    assert "the file is empty" in error_of(tmp_path, "")


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    assert "top level is a list" in error_of(tmp_path, "- n1\n")


# --------------------------------------------------------------------------- keys

UNKNOWN_KEYS = [
    ("clusterid: x\n" + GOOD, "clusterid: unknown key; did you mean cluster_id?"),
    (
        GOOD.replace("data_dir: ./data/n2", "datadir: ./data/n2"),
        "nodes[1].datadir: unknown key; did you mean data_dir?",
    ),
    (with_settings("heartbeat: 100\n"), "settings.heartbeat: unknown key; did you mean heartbeat_ms?"),
    (with_settings("zzz: 1\n"), "settings.zzz: unknown key; known keys: tick_ms, heartbeat_ms"),
]


@pytest.mark.parametrize(("text", "expected"), UNKNOWN_KEYS)
def test_unknown_keys_suggest_the_closest_known_one(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in error_of(tmp_path, text)


MISSING = [
    ("cluster_id: x\n", "nodes: required key is missing; add it"),
    (
        GOOD.replace(", data_dir: ./data/n3", ""),
        "nodes[2].data_dir: required key is missing; add it, e.g. data_dir:",
    ),
    (GOOD.replace('address: "127.0.0.1:7001", ', ""), "nodes[0].address: required key is missing"),
    (GOOD.replace("id: n2, ", ""), "nodes[1].id: required key is missing"),
]


@pytest.mark.parametrize(("text", "expected"), MISSING)
def test_missing_fields(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in error_of(tmp_path, text)


# --------------------------------------------------------------------------- types

WRONG_TYPES = [
    (
        "cluster_id: 5\n" + GOOD.split("\n", 1)[1],
        'cluster_id: expected a string, got an integer 5; quote it: "5"',
    ),
    ("cluster_id: 'a b'\n" + GOOD.split("\n", 1)[1], 'cluster_id: "a b" is not a valid id'),
    ("nodes: n1\n", "nodes: expected a list of nodes, got a string"),
    ("nodes: []\n", "nodes: the list is empty; list at least one node"),
    ("nodes:\n  - n1\n", "nodes[0]: expected a mapping, got a string"),
    (GOOD.replace("id: n2", "id: 2"), 'nodes[1].id: expected a string, got an integer 2; quote it: "2"'),
    (
        GOOD.replace("id: n2", "id: on"),
        "nodes[1].id: expected a string, got a boolean true; quote it (YAML reads",
    ),
    (GOOD.replace('"127.0.0.1:7002"', "7002"), "nodes[1].address: expected a string, got an integer 7002"),
    (GOOD.replace("./data/n3", "[a]"), "nodes[2].data_dir: expected a directory path, got a list"),
    (GOOD + "settings: 5\n", "settings: expected a mapping, got an integer"),
    (
        with_settings("tick_ms: 50ms\n"),
        'settings.tick_ms: expected a whole number of milliseconds, got a string "50ms"',
    ),
    (
        with_settings("tick_ms: 12.5\n"),
        "settings.tick_ms: expected a whole number of milliseconds, got a number",
    ),
    (
        with_settings("snapshot_threshold: true\n"),
        "settings.snapshot_threshold: expected a whole number, got a boolean",
    ),
    (
        with_settings("max_value_bytes:\n"),
        "settings.max_value_bytes: expected a whole number of bytes, got null; use e.g. 1048576",
    ),
]


@pytest.mark.parametrize(("text", "expected"), WRONG_TYPES)
def test_wrong_types(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in error_of(tmp_path, text)


@pytest.mark.parametrize("key", ["tick_ms", "heartbeat_ms", "max_inflight_msgs", "session_idle_timeout_s"])
@pytest.mark.parametrize("value", [0, -5])
def test_non_positive_numbers(tmp_path: Path, key: str, value: int) -> None:
    msg = error_of(tmp_path, with_settings(f"{key}: {value}\n"))
    assert (
        f"settings.{key}: {value} is not positive; use e.g." in msg
        and "remove the key for that default" in msg
    )


# --------------------------------------------------------------------------- duplicates


def test_duplicate_id(tmp_path: Path) -> None:
    msg = error_of(tmp_path, GOOD.replace("id: n3", "id: n1"))
    assert msg.endswith('nodes[2].id: "n1" is already used by nodes[0]; give every node its own id')


def test_duplicate_address(tmp_path: Path) -> None:
    msg = error_of(tmp_path, GOOD.replace("7002", "7001"))
    assert msg == (
        f'{tmp_path / "cluster.yaml"}: nodes[1].address: "127.0.0.1:7001" is already used by nodes[0] (n1); '
        "give every node its own host:port"
    )


def test_duplicate_data_dir_after_resolution(tmp_path: Path) -> None:
    msg = error_of(tmp_path, GOOD.replace("./data/n2", "data/x/../n1"))
    assert "nodes[1].data_dir:" in msg and "is already used by nodes[0] (n1)" in msg


def test_nested_data_dirs(tmp_path: Path) -> None:
    msg = error_of(tmp_path, GOOD.replace("./data/n2", "./data/n1/inner"))
    d = tmp_path / "data"
    assert f"nodes[1].data_dir: {d}/n1/inner is inside {d}/n1, the data_dir of nodes[0] (n1)" in msg
    assert "must not share or nest data directories" in msg


# --------------------------------------------------------------------------- addresses

BAD_ADDRESSES = [
    ("127.0.0.1", "expected host:port"),
    ("127.0.0.1:", "port"),
    ("127.0.0.1:0", 'port "0" is not a number in 1-65535'),
    ("127.0.0.1:65536", "1-65535"),
    ("127.0.0.1:http", "1-65535"),
    (":7002", "expected host:port"),
    ("http://127.0.0.1:7002", "without the scheme"),
    ("::1:7002", "IPv6 host needs brackets"),
    ("0.0.0.0:7002", "use the node's own IP"),
    ("a b:7002", "not a hostname"),
]


@pytest.mark.parametrize(("address", "expected"), BAD_ADDRESSES)
def test_bad_address(tmp_path: Path, address: str, expected: str) -> None:
    msg = error_of(tmp_path, GOOD.replace("127.0.0.1:7002", address))
    assert f'nodes[1].address: "{address}" is not usable; ' in msg and expected in msg


def test_good_addresses() -> None:
    assert parse_address("[::1]:7001") == ("::1", 7001)
    assert parse_address("db-1.internal:65535") == ("db-1.internal", 65535)


# --------------------------------------------------------------------------- settings that must agree

DISAGREEING = [
    (
        "heartbeat_ms: 500\nelection_timeout_ms: 500\n",
        "settings.heartbeat_ms: 500 is not less than election_timeout_ms (500)",
    ),
    (
        "heartbeat_ms: 120\n",
        "settings.heartbeat_ms: 120 is not a multiple of tick_ms (50); the core counts whole ticks; use 100",
    ),
    ("election_timeout_ms: 730\n", "settings.election_timeout_ms: 730 is not a multiple of tick_ms (50)"),
    (
        "max_request_bytes: 1000\n",
        "settings.max_request_bytes: 1000 is less than max_key_bytes + max_value_bytes (1049600)",
    ),
    ("max_peer_frame_bytes: 4194304\n", "settings.max_peer_frame_bytes: 4194304 leaves no room"),
]


@pytest.mark.parametrize(("extra", "expected"), DISAGREEING)
def test_settings_must_agree(tmp_path: Path, extra: str, expected: str) -> None:
    assert expected in error_of(tmp_path, with_settings(extra))
