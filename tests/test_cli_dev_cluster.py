"""Starting without a checkout (issue 19, item 4), on real processes: `raftstate cluster up --dev`
starts three nodes, prints where they are, serves a set and a get through the CLI, and stops cleanly
on Ctrl-C (SIGINT to the terminal's process group) or SIGTERM; `raftstate init --auth` writes a
file that `raftstate node` starts from."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import IO, Any

import pytest

from raftstate.node.ops.local_cluster import free_ports, wait_until

pytestmark = pytest.mark.cluster

RAFTSTATE = [sys.executable, "-m", "raftstate.node"]


def _first_json_line(stream: IO[str], timeout: float) -> dict[str, Any]:
    """cluster up's JSON line: the first object with "endpoints" (node logs come before it)."""
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            break
        seen.append(line)
        if line.startswith('{"endpoints"'):
            doc: dict[str, Any] = json.loads(line)
            return doc
    raise AssertionError("no JSON line from cluster up --dev --json:\n" + "".join(seen[-40:]))


def _cli(*argv: str, endpoints: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RAFTSTATE_ENDPOINTS": ",".join(endpoints)}
    return subprocess.run([*RAFTSTATE, *argv], capture_output=True, text=True, timeout=60, env=env)


def _start_dev(*extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*RAFTSTATE, "cluster", "up", "--dev", "--port", "0", "--json", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, like a terminal's job
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _no_process_serves(endpoints: list[str]) -> None:
    for e in endpoints:
        with pytest.raises(OSError):
            urllib.request.urlopen(e + "/status", timeout=1)


def test_dev_cluster_serves_the_cli_and_stops_on_ctrl_c() -> None:
    proc = _start_dev("--log-format", "json")
    try:
        assert proc.stdout is not None
        doc = _first_json_line(proc.stdout, timeout=60)
        endpoints, config = doc["endpoints"], Path(doc["config"])
        assert len(endpoints) == 3 and doc["leader"] in {"n1", "n2", "n3"}
        assert config.exists() and "enabled: false" in config.read_text()  # auth off, explicitly
        out = _cli("set", "greeting", "hello", endpoints=endpoints)
        assert out.returncode == 0, out.stderr
        out = _cli("get", "greeting", endpoints=endpoints)
        assert (out.returncode, out.stdout.strip()) == (0, "hello"), out.stderr
        out = _cli("status", endpoints=endpoints)
        assert out.returncode == 0 and out.stdout.count("leader") >= 1, out.stdout + out.stderr
        with urllib.request.urlopen(endpoints[0] + "/metrics", timeout=5) as resp:
            assert resp.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
            assert b"_created" not in resp.read()
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the whole group, nodes included
        rest, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, rest
    assert "Traceback" not in rest
    node_lines = [json.loads(line) for line in rest.splitlines() if line.startswith('{"time"')]
    assert node_lines and all(line["node"] in {"n1", "n2", "n3"} for line in node_lines)
    assert not config.parent.exists(), "the temp dir is removed on exit"
    _no_process_serves(endpoints)


def test_dev_cluster_with_a_data_dir_stops_on_sigterm_and_keeps_its_data(tmp_path: Path) -> None:
    data = tmp_path / "dev"
    proc = _start_dev("--data-dir", str(data))
    try:
        assert proc.stdout is not None
        doc = _first_json_line(proc.stdout, timeout=60)
        endpoints = doc["endpoints"]
        assert _cli("incr", "runs", endpoints=endpoints).stdout.strip() == "1"
        proc.send_signal(signal.SIGTERM)  # to cluster up alone: it stops its nodes
        rest, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, rest
    assert "stopping the cluster" in rest and "Traceback" not in rest
    assert " n1 INFO " in rest, "text log lines name their node"
    assert "handed leadership to None" not in rest
    _no_process_serves(endpoints)
    assert (data / "cluster.yaml").exists() and (data / "data" / "n1").is_dir()
    # the kept cluster starts again from the same file and data
    proc = _start_dev("--data-dir", str(data))
    try:
        assert proc.stdout is not None
        assert _first_json_line(proc.stdout, timeout=60)["endpoints"] == endpoints
        assert _cli("incr", "runs", endpoints=endpoints).stdout.strip() == "2"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.communicate(timeout=30)


def test_init_with_auth_writes_a_file_raftstate_node_starts_from(tmp_path: Path) -> None:
    base = free_ports(1)[0]
    path = tmp_path / "cluster.yaml"
    out = subprocess.run(
        [*RAFTSTATE, "init", str(path), "--auth", "--nodes", "1", "--port", str(base)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    node = subprocess.Popen(
        [*RAFTSTATE, "node", "--config", str(path), "--id", "n1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        token = (tmp_path / "secrets" / "read.token").read_text().strip()
        url = f"http://127.0.0.1:{base}/status"

        def leader() -> bool:
            req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
            with urllib.request.urlopen(req, timeout=1) as resp:
                return bool(json.loads(resp.read())["role"] == "leader")

        wait_until(leader, 30, "the one-node cluster of `raftstate init` to elect itself")
        with pytest.raises(urllib.error.HTTPError) as refused:  # auth is on: no token, no answer
            urllib.request.urlopen(url, timeout=2)
        assert refused.value.code == 401
    finally:
        node.send_signal(signal.SIGTERM)
        log, _ = node.communicate(timeout=30)
    assert node.returncode == 0, log
