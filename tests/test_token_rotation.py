"""Token rotation without a restart (issue 18; issue 8's notes): a node reads its tokens again on
SIGHUP, and refuses the old ones after it — on a real node process.

Before: tokens were read once at start; a leaked token stayed good until every node restarted.
"""

from __future__ import annotations

import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from raftstate.node.ops.local_cluster import HttpError, LocalCluster, http, wait_until

pytestmark = pytest.mark.cluster

OLD, NEW, OTHER = "old-token-" + "o" * 20, "new-token-" + "n" * 20, "ops-token-" + "a" * 20
SECRET = "rotation-secret-" + "s" * 20


def _auth(tokens: list[dict[str, str]]) -> dict[str, object]:
    return {"enabled": True, "cluster_secret": {"env": "ROT_SECRET"}, "tokens": tokens}


@pytest.fixture
def node(tmp_path: Path) -> Iterator[LocalCluster]:
    (tmp_path / "workers.token").write_text(OLD + "\n")
    tokens = [
        {"name": "workers", "role": "write", "file": "./workers.token"},
        {"name": "ops", "role": "admin", "env": "ROT_ADMIN"},
    ]
    c = LocalCluster(
        tmp_path, n=1, auth=_auth(tokens), env={"ROT_SECRET": SECRET, "ROT_ADMIN": OTHER}, token=OTHER
    )
    with c.running(leader_timeout=30):
        yield c


def status_with(c: LocalCluster, token: str) -> int:
    try:
        http("PUT", c.url("n1", "/v1/kv/rot"), {"value": 1}, token=token, timeout=5)
        return 200
    except HttpError as exc:
        return exc.status


def reloads(c: LocalCluster, outcome: str) -> float:
    """``raftstate_auth_reloads_total{outcome}`` from the node's /metrics."""
    req = urllib.request.Request(c.url("n1", "/metrics"), headers={"Authorization": f"Bearer {OTHER}"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(f'raftstate_auth_reloads_total{{outcome="{outcome}"}}'):
                return float(line.split()[-1])
    return -1.0


def test_a_rewritten_token_file_takes_effect_on_sighup_and_the_old_token_is_refused(
    node: LocalCluster, tmp_path: Path
) -> None:
    assert status_with(node, OLD) == 200 and status_with(node, NEW) == 401
    (tmp_path / "workers.token").write_text(NEW + "\n")
    assert status_with(node, OLD) == 200, "nothing changes before the signal"
    node.kill("n1", signal.SIGHUP)
    wait_until(lambda: status_with(node, NEW) == 200, 10, "the new token accepted")
    assert status_with(node, OLD) == 401
    assert status_with(node, OTHER) == 200  # the other tokens are untouched
    assert "reloaded 2 tokens" in node.log_text("n1") and NEW not in node.log_text("n1")
    assert reloads(node, "ok") == 1.0
    assert node.alive("n1")


def test_a_token_removed_from_the_file_is_refused_and_a_broken_reload_changes_nothing(
    node: LocalCluster, tmp_path: Path
) -> None:
    doc = yaml.safe_load(node.config.read_text())
    # A broken reload: the token file is gone. The node keeps its tokens and says why.
    (tmp_path / "workers.token").rename(tmp_path / "moved.token")
    node.kill("n1", signal.SIGHUP)
    wait_until(lambda: "token reload failed" in node.log_text("n1"), 10, "the failed reload logged")
    assert "workers.token" in node.log_text("n1")
    assert status_with(node, OLD) == 200 and reloads(node, "failed") == 1.0
    # Rotation by the cluster file: the workers' entry removed, a new one added.
    (tmp_path / "next.token").write_text(NEW)
    doc["auth"]["tokens"] = [
        {"name": "workers-2", "role": "write", "file": "./next.token"},
        {"name": "ops", "role": "admin", "env": "ROT_ADMIN"},
    ]
    node.config.write_text(yaml.safe_dump(doc))
    node.kill("n1", signal.SIGHUP)
    wait_until(lambda: status_with(node, NEW) == 200, 10, "the new entry's token accepted")
    assert status_with(node, OLD) == 401
    assert node.alive("n1")
