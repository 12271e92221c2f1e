"""Test hooks are armed only on purpose (issue 18, item 7): a variable alone arms nothing.

Before: any of the four variables armed its hook on any node — auth on or off — and nothing in
``/status`` or ``/metrics`` showed it. Now a hook needs ``settings.test_hooks: true`` in the cluster
file, that setting is refused with auth on, and a hooked node shows its hooks in both places.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest
from test_transport import free_port

from raftstate.node.config import ClusterConfig, NodeConfig, Settings, load_config
from raftstate.node.errors import ConfigError
from raftstate.node.security.config import AuthConfig, Role, SecretRef, TokenConfig
from raftstate.node.server import NodeServer
from raftstate.node.test_hooks import (
    BUG_ENV,
    HOOK_ENVS,
    SLOW_FSYNC_ENV,
    STALE_READS,
    TestHookError,
    TestHooks,
)
from raftstate.raft import Role as RaftRole

OPEN = "nodes:\n  - {id: a, address: 'h:9000', data_dir: d}\nauth: {enabled: false}\n"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in HOOK_ENVS:
        monkeypatch.delenv(name, raising=False)


def _config(tmp_path: Path, *, test_hooks: bool, auth: bool = False) -> ClusterConfig:
    node = NodeConfig("n1", f"127.0.0.1:{free_port()}", tmp_path / "n1")
    a = (
        AuthConfig(
            True,
            SecretRef("env", "ARMED_SECRET", "auth.cluster_secret"),
            (TokenConfig("ops", Role.ADMIN, SecretRef("env", "ARMED_TOKEN", "auth.tokens[0]")),),
        )
        if auth
        else AuthConfig(False)
    )
    return ClusterConfig(tmp_path / "cluster.yaml", "armed", (node,), Settings(test_hooks=test_hooks), auth=a)


@pytest.mark.parametrize("name", HOOK_ENVS)
def test_a_hook_variable_without_the_setting_refuses_start_naming_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    value = {SLOW_FSYNC_ENV: "5", BUG_ENV: STALE_READS}.get(name, str(tmp_path / "f"))
    monkeypatch.setenv(name, value)
    with pytest.raises(TestHookError) as err:
        NodeServer(_config(tmp_path, test_hooks=False), "n1")
    assert name in str(err.value) and "settings.test_hooks: true" in str(err.value)
    assert not (tmp_path / "n1").exists(), "refused before the data dir is touched"
    NodeServer(_config(tmp_path, test_hooks=True), "n1")  # allowed with the setting


def test_hooks_handed_in_code_need_the_setting_too(tmp_path: Path) -> None:
    with pytest.raises(TestHookError, match=r"settings\.test_hooks: true"):
        NodeServer(_config(tmp_path, test_hooks=False), "n1", hooks=TestHooks(injected_bug=STALE_READS))
    NodeServer(_config(tmp_path, test_hooks=False), "n1", hooks=TestHooks())  # none on: fine


def test_the_setting_is_refused_with_auth_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARMED_SECRET", "s" * 32)
    monkeypatch.setenv("ARMED_TOKEN", "t" * 32)
    with pytest.raises(TestHookError) as err:
        NodeServer(_config(tmp_path, test_hooks=True, auth=True), "n1", hooks=TestHooks())
    assert "settings.test_hooks" in str(err.value) and "auth.enabled" in str(err.value)
    # With auth on and no setting, a hook's variable is refused as anywhere else.
    monkeypatch.setenv(BUG_ENV, STALE_READS)
    with pytest.raises(TestHookError, match=BUG_ENV):
        NodeServer(_config(tmp_path, test_hooks=False, auth=True), "n1")


def test_the_config_loader_refuses_the_setting_with_auth_on(tmp_path: Path) -> None:
    f = tmp_path / "cluster.yaml"
    f.write_text(
        "nodes:\n  - {id: a, address: 'h:9000', data_dir: d}\n"
        "auth: {enabled: true, cluster_secret: {env: S}, tokens: [{name: o, role: admin, env: T}]}\n"
        "settings: {test_hooks: true}\n"
    )
    with pytest.raises(ConfigError) as err:
        load_config(f)
    assert "settings.test_hooks" in str(err.value) and "auth.enabled is true" in str(err.value)
    f.write_text(OPEN + "settings: {test_hooks: 1}\n")
    with pytest.raises(ConfigError, match=r"settings\.test_hooks: expected true or false"):
        load_config(f)
    f.write_text(OPEN + "settings: {test_hooks: true}\n")
    assert load_config(f).settings.test_hooks is True


async def _status_and_metrics(server: NodeServer) -> tuple[dict, str]:  # type: ignore[type-arg]
    base = f"http://{server.node.address}"
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{base}/status") as r:
            status = await r.json()
        async with s.get(f"{base}/metrics") as r:
            metrics = await r.text()
    return status, metrics


async def _running(server: NodeServer) -> None:
    await server.start()
    assert server.driver is not None
    deadline = time.monotonic() + 10
    while server.driver.raft.role != RaftRole.LEADER:
        assert time.monotonic() < deadline, "a one-node cluster elected no leader"
        await asyncio.sleep(0.02)


async def test_status_and_metrics_list_the_hooks_that_are_on(tmp_path: Path) -> None:
    (tmp_path / "on").mkdir()
    hooks = TestHooks(clock_offset_file=tmp_path / "on" / "clock", injected_bug=STALE_READS)
    server = NodeServer(_config(tmp_path / "on", test_hooks=True), "n1", hooks=hooks)
    await _running(server)
    try:
        status, metrics = await _status_and_metrics(server)
    finally:
        await server.stop()
    assert status["test_hooks"] == {
        "clock_offset_file": str(tmp_path / "on" / "clock"),
        "injected_bug": STALE_READS,
    }
    assert 'raftstate_test_hooks_active{hook="injected_bug"} 1.0' in metrics
    assert 'raftstate_test_hooks_active{hook="clock_offset_file"} 1.0' in metrics
    assert 'raftstate_test_hooks_active{hook="slow_fsync_ms"} 0.0' in metrics
    # The production node: an empty list, every hook 0.
    server = NodeServer(_config(tmp_path / "off", test_hooks=False), "n1")
    await _running(server)
    try:
        status, metrics = await _status_and_metrics(server)
    finally:
        await server.stop()
    assert status["test_hooks"] == {}
    assert metrics.count("raftstate_test_hooks_active{") == len(HOOK_ENVS)
    assert "raftstate_test_hooks_active{" in metrics and " 1.0" not in "".join(
        line for line in metrics.splitlines() if line.startswith("raftstate_test_hooks_active{")
    )
