"""Logs and metrics a newcomer reads (issue 19, item 6): every log line names its node, JSON logs
are one object per line, a refused peer connection says so without aiohttp's "ssl:default",
``/metrics`` has no ``*_created`` noise but has the process and GC collectors, and a leader that
stops without a known successor never logs "handed leadership to None"."""

from __future__ import annotations

import io
import json
import logging
import socket
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest

from raftstate.node.config import load_config
from raftstate.node.metrics import NodeMetrics
from raftstate.node.ops.local_cluster import LocalCluster
from raftstate.node.peers.conn_errors import describe_connect_error
from raftstate.node.runtime import log_format
from raftstate.node.server import NodeServer
from raftstate.raft import Role


@pytest.fixture
def restore_root_logger() -> Any:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


def test_text_lines_name_the_node(restore_root_logger: None) -> None:
    out = io.StringIO()
    log_format.setup("n2", level="INFO", fmt="text", stream=out)
    logging.getLogger("raftstate.node.x").info("hello %s", "there")
    logging.getLogger("raftstate.node.x").debug("not shown")
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    assert " n2 INFO raftstate.node.x: hello there" in lines[0]


def test_json_lines_are_one_object_each_even_with_a_traceback(restore_root_logger: None) -> None:
    out = io.StringIO()
    log_format.setup("n3", level="DEBUG", fmt="json", stream=out)
    log = logging.getLogger("raftstate.node.y")
    log.warning("disk %s", "slow")
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        log.exception("failed")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["node"] == "n3" and first["level"] == "WARNING" and first["message"] == "disk slow"
    assert first["logger"] == "raftstate.node.y" and first["time"].endswith("+00:00")
    assert second["message"] == "failed" and "RuntimeError: boom" in second["exc"]


async def test_a_refused_connection_reads_nothing_listening_without_ssl_default() -> None:
    with socket.socket() as s:  # a port that was just free: nothing listens on it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectorError) as exc:
            await session.get(f"http://127.0.0.1:{port}/status")
    assert "ssl:default" in str(exc.value)  # what aiohttp itself says (the reason for this helper)
    text = describe_connect_error(exc.value)
    assert text == f"nothing listening at 127.0.0.1:{port} (connection refused)"
    assert describe_connect_error(TimeoutError()) == "timed out"


def test_metrics_have_process_and_gc_collectors_and_no_created_series() -> None:
    m = NodeMetrics("n1", "c")
    m.proposals_total.inc()
    m.observe_request("put", "ok", 0.01)
    text = m.render().decode()
    assert "_created" not in text
    names = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if not line.startswith("#")}
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds"} <= names
    assert "python_gc_collections_total" in names and "python_info" in names
    assert "raftstate_proposals_total" in names and "raftstate_request_seconds_count" in names
    # the view drops samples only: the registry itself still has them (nothing global was switched)
    assert any(s.name.endswith("_created") for f in m.registry.collect() for s in f.samples)


@pytest.mark.parametrize(
    ("successor", "expected"),
    [
        (None, "handed leadership over before stopping (successor not heard yet)"),
        ("n1", "stops as leader: no voter took over"),
        ("n2", "handed leadership to n2 before stopping"),
    ],
)
async def test_stopping_leader_never_logs_handed_leadership_to_none(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, successor: str | None, expected: str
) -> None:
    """Regression: transfer_leadership returns None while the successor is not known yet; the log
    said "handed leadership to None"."""
    config = load_config(LocalCluster(tmp_path, 3).config)
    server = NodeServer(config, "n1")

    async def transfer(target: str | None, timeout_s: float) -> str | None:
        return successor

    async def stop() -> None:
        return None

    raft = SimpleNamespace(role=Role.LEADER, membership=SimpleNamespace(voters=("n1", "n2", "n3")))
    server.driver = SimpleNamespace(raft=raft, transfer_leadership=transfer, stop=stop)  # type: ignore[assignment]
    with caplog.at_level(logging.INFO, logger="raftstate.node"):
        await server.stop(transfer=True)
    text = caplog.text
    assert expected in text
    assert "to None" not in text
