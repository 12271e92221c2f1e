"""Issue 19, item 7: ``Client.from_config`` on a broken cluster file says what the node says — one
line naming the file, the line and column, and the fix — not a raw PyYAML dump. One reader
(client/config.py ``read_cluster_file``) serves both."""

from __future__ import annotations

from pathlib import Path

import pytest

from raftstate.client import AsyncClient, Client, InvalidRequest
from raftstate.node.config import ConfigError, load_config

BROKEN = {
    "bad syntax": "nodes:\n  - {id: n1, address: 127.0.0.1:7001\n",
    "duplicate key": "nodes: []\nnodes: []\n",
    "tab indent": "nodes:\n\t- id: n1\n",
}


@pytest.mark.parametrize("text", BROKEN.values(), ids=list(BROKEN))
def test_client_and_node_say_the_same_one_line(tmp_path: Path, text: str) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as node_err:
        load_config(path)
    for from_config in (Client.from_config, AsyncClient.from_config):
        with pytest.raises(InvalidRequest) as client_err:
            from_config(path)
        assert str(client_err.value) == str(node_err.value)
    message = str(node_err.value)
    assert "\n" not in message and message.startswith(f"{path}: line ")
    assert "fix the YAML there" in message or "keep one of them" in message


def test_a_missing_file_is_one_line_too(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as node_err:
        load_config(path)
    with pytest.raises(InvalidRequest) as client_err:
        Client.from_config(path)
    assert str(client_err.value) == str(node_err.value)
    assert "cannot read the cluster file" in str(node_err.value) and "check the path" in str(node_err.value)
