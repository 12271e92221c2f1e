"""Unit rules of operating a secured cluster: what a joining node takes from --config FILE
(node/peers/join.py ``secured``), and how an operator command decides token and TLS
(node/security/node_access.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from raftstate.node.config import ClusterConfig, NodeConfig, Settings, load_config
from raftstate.node.peers.bootstrap import settings_from_wire
from raftstate.node.peers.join import JoinRefused, secured
from raftstate.node.peers.peer_auth import PROOF_HEADER, PeerAuth
from raftstate.node.security.node_access import MEMBERS_RECEIVER, NodeAccess


def cluster_file(
    tmp_path: Path, cluster_id: str = "prod", tls: dict[str, Any] | None = None
) -> ClusterConfig:
    doc: dict[str, Any] = {
        "cluster_id": cluster_id,
        "nodes": [{"id": "n1", "address": "127.0.0.1:7101", "data_dir": "./d1"}],
        "auth": {
            "enabled": True,
            "cluster_secret": {"env": "S"},
            "tokens": [{"name": "ops", "role": "admin", "env": "T"}],
        },
    }
    if tls:
        doc["tls"] = tls
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(doc))
    return load_config(path)


def joined(cluster_id: str = "prod") -> ClusterConfig:
    settings = settings_from_wire({"heartbeat_ms": Settings().heartbeat_ms})
    node = NodeConfig("n4", "127.0.0.1:7104", Path("/data/n4"))
    return ClusterConfig(Path("--join x"), cluster_id, (node,), settings)


def test_a_joined_node_takes_auth_and_tls_from_the_file_and_nothing_else(tmp_path: Path) -> None:
    file = cluster_file(tmp_path, tls={"ca": "ca.pem", "cert": "all.pem", "key": "all.key"})
    cfg = secured(joined(), file, "n4")
    assert cfg.auth == file.auth and cfg.path == file.path
    assert cfg.tls is not None and cfg.tls["n4"].cert == tmp_path / "all.pem"  # one cert for all nodes
    assert cfg.nodes == joined().nodes and cfg.settings == joined().settings  # the member's view
    assert secured(joined(), None, "n4") == joined()  # no file: as before (auth off)


def test_a_joined_node_refuses_a_file_of_another_cluster_or_without_its_certificate(tmp_path: Path) -> None:
    with pytest.raises(JoinRefused, match="is for cluster prod, but this node joins cluster other"):
        secured(joined("other"), cluster_file(tmp_path), "n4")
    per_node = {"ca": "ca.pem", "cert": {"n1": "n1.pem"}, "key": {"n1": "n1.key"}}
    with pytest.raises(JoinRefused, match="none for n4; add n4: PATH"):
        secured(joined(), cluster_file(tmp_path, tls=per_node), "n4")
    # a per-node entry for a node not (yet) under nodes: is kept for it
    per_node = {
        "ca": "ca.pem",
        "cert": {"n1": "n1.pem", "n4": "n4.pem"},
        "key": {"n1": "n1.key", "n4": "n4.key"},
    }
    cfg = secured(joined(), cluster_file(tmp_path, tls=per_node), "n4")
    assert cfg.tls is not None and cfg.tls["n4"].key == tmp_path / "n4.key"


def test_operator_access_token_and_tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAFTSTATE_CA", raising=False)
    monkeypatch.setenv("RAFTSTATE_TOKEN", "from-env-0123456789")
    plain = NodeAccess.for_operator(cluster_file(tmp_path))
    assert plain.url("10.0.0.1:7001", "/v1/members") == "http://10.0.0.1:7001/v1/members"
    assert plain.headers() == {"Authorization": "Bearer from-env-0123456789"}
    assert NodeAccess.for_operator(None, token="given-0123456789").token == "given-0123456789"
    ca = Path(__file__).resolve().parent / "no-such-ca.pem"
    with pytest.raises(FileNotFoundError):  # a wrong --ca fails before any request
        NodeAccess.for_operator(None, ca=ca)


def test_a_node_sends_a_members_proof_not_a_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAFTSTATE_TOKEN", "an-operator-token-0123")
    peer = PeerAuth(b"s" * 32, "prod", "n4", members=frozenset)
    access = NodeAccess.for_operator(None, token="").with_peer(peer)
    h = access.headers()
    assert "Authorization" not in h and h["X-Raftstate-Node"] == "n4" and h["X-Raftstate-Cluster"] == "prod"
    checker = PeerAuth(b"s" * 32, "prod", MEMBERS_RECEIVER, members=frozenset)
    first = checker.check(h, "n4", "prod")  # a valid proof of a non-member: members_auth accepts it
    assert first is not None and first.reason == "not_member"
    replayed = checker.check(h, "n4", "prod")
    assert replayed is not None and replayed.reason == "replayed_proof"
    stream_proof = {**h, PROOF_HEADER: peer.sign("n1")[PROOF_HEADER]}
    refusal = checker.check(stream_proof, "n4", "prod")
    assert refusal is not None and refusal.reason == "bad_proof"
