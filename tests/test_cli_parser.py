"""One CLI (issue 19, item 3): every command that talks to a cluster shares the same options and
environment variables, exit codes are the same everywhere and in --help, a typo gets a suggestion,
a bad option value is a usage error (never a traceback), and `raftstate init` writes a file the
node accepts. No cluster here: the commands meet a missing file or a port nothing listens on."""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import raftstate
from raftstate.client.cli_options import EXIT_CODES_HELP
from raftstate.node.cli import build_parser
from raftstate.node.cli import main as raftstate_main
from raftstate.node.config import load_config
from raftstate.node.ops.local_cluster import free_ports
from raftstate.node.security.config import resolve_auth

SHARED = ("--endpoints", "--config", "--token", "--ca", "--json", "--timeout")
ENV = ("RAFTSTATE_ENDPOINTS", "RAFTSTATE_CONFIG", "RAFTSTATE_TOKEN", "RAFTSTATE_CA", "RAFTSTATE_TIMEOUT")

#: every command that talks to a running cluster, as words after `raftstate`
REMOTE = [
    ["status"],
    ["cluster", "up"],
    ["get", "k"],
    ["set", "k", "v"],
    ["delete", "k"],
    ["incr", "k"],
    ["keys"],
    ["lock", "L"],
    ["member", "list"],
    ["member", "add", "--id", "n9", "--address", "127.0.0.1:1"],
    ["member", "remove", "--id", "n9"],
    ["leader", "transfer"],
    ["snapshot", "save", "backup.rsb"],
]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no cluster.yaml here


def _leaf_parsers(parser: argparse.ArgumentParser, words: list[str]) -> argparse.ArgumentParser:
    """The sub-parser ``words`` (command names, then arguments) ends up in."""
    for word in words:
        sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        if sub is None or word not in sub.choices:
            break
        parser = sub.choices[word]
    return parser


def _all_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    out = [parser]
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            for sp in a.choices.values():
                out.extend(_all_parsers(sp))
    return out


def run(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "raftstate.node", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_version_is_the_package_metadata(capsys: pytest.CaptureFixture[str]) -> None:
    assert raftstate.__version__ == importlib.metadata.version("raftstate")
    with pytest.raises(SystemExit) as exc:
        raftstate_main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"raftstate {raftstate.__version__}"


@pytest.mark.parametrize("words", REMOTE, ids=lambda w: " ".join(w[:2]))
def test_every_remote_command_shares_the_cluster_options(words: list[str]) -> None:
    leaf = _leaf_parsers(build_parser(), words)
    options = {s for a in leaf._actions for s in a.option_strings}
    assert set(SHARED) <= options, f"raftstate {' '.join(words)} lacks {set(SHARED) - options}"
    help_text = leaf.format_help()
    assert "exit codes:" in help_text and "RAFTSTATE_ENDPOINTS" in help_text


def test_every_option_and_argument_has_help() -> None:
    missing = [
        f"{p.prog}: {a.option_strings or a.dest}"
        for p in _all_parsers(build_parser())
        for a in p._actions
        if not isinstance(a, argparse._SubParsersAction) and not a.help
    ]
    assert not missing, "no help text:\n" + "\n".join(missing)


@pytest.mark.parametrize("words", [w for w in REMOTE if w[:2] != ["cluster", "up"]], ids=lambda w: w[0])
def test_a_missing_cluster_file_exits_2_everywhere(
    words: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert raftstate_main([*words, "--timeout", "1"]) == 2
    err = capsys.readouterr().err
    assert "no cluster file at cluster.yaml" in err and "raftstate cluster up --dev" in err, err
    assert "repository root" not in err


def test_cluster_up_without_a_file_points_at_dev_and_init(capsys: pytest.CaptureFixture[str]) -> None:
    assert raftstate_main(["cluster", "up"]) == 2
    err = capsys.readouterr().err
    assert "raftstate cluster up --dev" in err and "raftstate init" in err, err
    assert raftstate_main(["cluster", "up", "--endpoints", "127.0.0.1:1"]) == 2
    assert "--endpoints names nodes that already run" in capsys.readouterr().err


@pytest.mark.parametrize(
    "words", [["status"], ["member", "list"], ["get", "k"], ["leader", "transfer"]], ids=lambda w: w[0]
)
def test_raftstate_endpoints_reaches_every_command(
    words: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nothing listens on the port: the command used the variable (exit 3: the cluster could not
    answer), rather than looking for a cluster file (exit 2)."""
    port = free_ports(1)[0]
    monkeypatch.setenv("RAFTSTATE_ENDPOINTS", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("RAFTSTATE_TIMEOUT", "1")
    assert raftstate_main(words) == 3, capsys.readouterr().err
    out = capsys.readouterr()
    assert f"127.0.0.1:{port}" in out.out + out.err
    assert "ssl:default" not in out.out + out.err


def test_raftstate_config_names_the_file(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("RAFTSTATE_CONFIG", str(tmp_path / "elsewhere.yaml"))
    assert raftstate_main(["member", "list"]) == 2
    assert "elsewhere.yaml" in capsys.readouterr().err


def test_a_bad_timeout_variable_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RAFTSTATE_ENDPOINTS", "http://127.0.0.1:1")
    monkeypatch.setenv("RAFTSTATE_TIMEOUT", "soon")
    assert raftstate_main(["get", "k"]) == 2
    assert "RAFTSTATE_TIMEOUT" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "suggestion"),
    [(["stauts"], "'status'"), (["member", "lsit"], "'list'"), (["snapshot", "sav", "f"], "'save'")],
)
def test_unknown_commands_get_a_did_you_mean(argv: list[str], suggestion: str) -> None:
    out = run(*argv)
    assert out.returncode == 2
    assert f"did you mean {suggestion}?" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_a_bad_log_level_is_a_usage_error_not_a_traceback() -> None:
    out = run("node", "--id", "n1", "--log-level", "loud")
    assert out.returncode == 2
    assert "--log-level" in out.stderr and "DEBUG, INFO, WARNING, ERROR" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    out = run("node", "--id", "n1", "--log-format", "xml")
    assert out.returncode == 2 and "Traceback" not in out.stderr


def test_help_documents_exit_codes_and_the_lock_variables() -> None:
    top = build_parser().format_help()
    assert EXIT_CODES_HELP in top and "exit codes of `raftstate node`" in top
    assert "cluster up --dev" in top
    lock = _leaf_parsers(build_parser(), ["lock"]).format_help()
    assert "RAFTSTATE_LOCK_NAME" in lock and "RAFTSTATE_LOCK_TOKEN" in lock


def test_init_writes_a_file_the_node_accepts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c" / "cluster.yaml"
    assert raftstate_main(["init", str(path), "--port", "17001"]) == 0
    config = load_config(path)
    assert [n.address for n in config.nodes] == ["127.0.0.1:17001", "127.0.0.1:17002", "127.0.0.1:17003"]
    assert not config.auth.enabled
    text = path.read_text()
    assert text.count("\n#") >= 3, "the file explains itself"
    # never overwritten
    assert raftstate_main(["init", str(path)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_init_with_auth_writes_secrets_only_the_owner_can_read(tmp_path: Path) -> None:
    path = tmp_path / "cluster.yaml"
    assert raftstate_main(["init", str(path), "--auth"]) == 0
    secrets = tmp_path / "secrets"
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o700
    files = sorted(p.name for p in secrets.iterdir())
    assert files == ["admin.token", "cluster_secret", "read.token", "write.token"]
    for f in secrets.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    config = load_config(path)
    assert config.auth.enabled
    resolved = resolve_auth(config.auth, path, env={})  # as a node at start: every secret readable
    assert resolved.enabled and len(resolved.tokens) == 3
    doc = yaml.safe_load(path.read_text())
    assert {t["role"] for t in doc["auth"]["tokens"]} == {"admin", "write", "read"}
    assert (secrets / "admin.token").read_text().strip() not in path.read_text()


def test_a_port_left_in_time_wait_by_a_stopped_cluster_is_free() -> None:
    """`cluster up --dev` right after another cluster stopped: its connections sit in TIME_WAIT on
    the ports for a minute; the nodes bind with SO_REUSEADDR, so the check must too (it refused
    to start before the fix)."""
    import socket

    from raftstate.node.cli import _port_free

    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    port = srv.getsockname()[1]
    cli = socket.create_connection(("127.0.0.1", port))
    conn, _ = srv.accept()
    conn.close()  # the server side closes first: its end goes to TIME_WAIT
    cli.close()
    srv.close()
    assert _port_free(port)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert not _port_free(busy.getsockname()[1])
