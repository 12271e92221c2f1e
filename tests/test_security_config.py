"""The auth: and tls: sections: secrets only by reference, explicit opt-out, errors that name the fix."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from raftstate.node.config import ConfigError, load_config
from raftstate.node.security.config import Role, resolve_auth

NODES = """\
cluster_id: test
nodes:
  - {id: n1, address: "127.0.0.1:7001", data_dir: ./data/n1}
  - {id: n2, address: "127.0.0.1:7002", data_dir: ./data/n2}
"""
AUTH_ON = """\
auth:
  enabled: true
  cluster_secret: {env: T_CLUSTER_SECRET}
  tokens:
    - {name: ops, role: admin, env: T_ADMIN}
    - {name: workers, role: write, file: ./secrets/w.token}
    - {name: dash, role: read, env: T_READ}
  open: [metrics]
"""
SECRET = "s" * 32


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "cluster.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def error_of(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    return str(info.value)


def test_a_missing_auth_section_is_an_error_that_says_how_to_opt_out(tmp_path: Path) -> None:
    msg = error_of(tmp_path, NODES)
    assert "auth: the section is missing" in msg and "auth: {enabled: false}" in msg


def test_explicitly_off(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, NODES + "auth: {enabled: false}\n"))
    assert cfg.auth.enabled is False and cfg.tls is None
    resolved = resolve_auth(cfg.auth, cfg.path, env={})
    assert not resolved.enabled and resolved.open_endpoints == {"metrics", "status"}


def test_tokens_by_reference_resolve_from_env_and_files(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "w.token").write_text("w" * 20 + "\n")  # trailing newline is stripped
    cfg = load_config(write(tmp_path, NODES + AUTH_ON))
    env = {"T_CLUSTER_SECRET": SECRET, "T_ADMIN": "a" * 16, "T_READ": "r" * 40}
    r = resolve_auth(cfg.auth, cfg.path, env=env)
    assert r.cluster_secret == SECRET.encode()
    assert [(n, role) for n, role, _ in r.tokens] == [
        ("ops", Role.ADMIN),
        ("workers", Role.WRITE),
        ("dash", Role.READ),
    ]
    assert r.tokens[1][2] == b"w" * 20
    assert r.open_endpoints == {"metrics"}
    assert SECRET not in repr(r) and "aaaa" not in repr(r), "secrets never show in a repr (or a log)"


def test_a_missing_variable_or_file_is_named(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, NODES + AUTH_ON))
    with pytest.raises(
        ConfigError, match=r"auth\.cluster_secret: environment variable T_CLUSTER_SECRET is not set"
    ):
        resolve_auth(cfg.auth, cfg.path, env={})
    env = {"T_CLUSTER_SECRET": SECRET, "T_ADMIN": "a" * 16, "T_READ": "r" * 16}
    with pytest.raises(ConfigError, match=r"auth.tokens\[1\]: cannot read file .*w.token"):
        resolve_auth(cfg.auth, cfg.path, env=env)


def test_a_short_secret_is_refused(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, NODES + AUTH_ON))
    env = {"T_CLUSTER_SECRET": "short", "T_ADMIN": "a" * 16, "T_READ": "r" * 16}
    with pytest.raises(ConfigError, match="holds 5 characters, fewer than 16"):
        resolve_auth(cfg.auth, cfg.path, env=env)


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        (
            "auth: {enabled: true, cluster_secret: hunter2, tokens: []}\n",
            "never store secrets in cluster.yaml",
        ),
        ("auth: {enabled: yes-please}\n", "auth.enabled: expected true or false"),
        ("auth: {enabled: true, tokens: [{name: a, role: read, env: X}]}\n", "auth.cluster_secret: required"),
        ("auth: {enabled: true, cluster_secret: {env: S}}\n", "auth.tokens: expected a non-empty list"),
        (
            "auth: {enabled: true, cluster_secret: {env: S}, tokens: [{name: a, role: root, env: X}]}\n",
            "auth.tokens[0].role: 'root' is not a role; use one of read, write, admin",
        ),
        (
            "auth: {enabled: true, cluster_secret: {env: S, file: f},"
            " tokens: [{name: a, role: read, env: X}]}\n",
            "give exactly one of env or file",
        ),
        (
            "auth: {enabled: true, cluster_secret: {env: S}, tokens: [{name: a, role: read, env: X},"
            " {name: a, role: read, env: Y}]}\n",
            "auth.tokens[1].name: 'a' is used twice",
        ),
        ("auth: {enabled: false, open: [everything]}\n", "auth.open"),
        ("auth: {enabled: false, tokenz: []}\n", "auth.tokenz: unknown key"),
        ("auth: {enabled: false}\ntls: {cert: a.pem, key: a.key}\n", "tls.ca: required key is missing"),
        (
            "auth: {enabled: false}\ntls: {cert: {n1: a.pem}, key: k, ca: c}\n",
            "tls.cert: no entry for node n2",
        ),
    ],
)
def test_bad_sections(tmp_path: Path, section: str, expected: str) -> None:
    assert expected in error_of(tmp_path, NODES + section)


def test_tls_paths_resolve_per_node(tmp_path: Path) -> None:
    cfg = load_config(
        write(
            tmp_path,
            NODES + "auth: {enabled: false}\n"
            "tls: {cert: {n1: c/n1.pem, n2: c/n2.pem}, key: {n1: c/n1.key, n2: c/n2.key}, ca: c/ca.pem}\n",
        )
    )
    assert cfg.tls is not None
    assert cfg.tls["n2"].cert == tmp_path / "c" / "n2.pem"
    assert cfg.tls["n1"].ca == tmp_path / "c" / "ca.pem"
