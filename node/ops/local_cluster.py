"""Real node processes on 127.0.0.1 for cluster tests, scripts and benchmarks.

``LocalCluster`` writes a cluster file into a temp dir (free ports, data dirs inside it), starts
every node as ``python -m raftstate.node node`` and offers kill -9 / SIGTERM / SIGSTOP / restart and
small blocking HTTP helpers. Nothing here is mocked: these are the processes users run.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from raftstate.client import protocol
from raftstate.node.config import ClusterConfig
from raftstate.node.errors import RemoteFault
from raftstate.node.ops.status_fetcher import StatusFetcher


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def already_running(config: ClusterConfig, fetcher: StatusFetcher) -> str | None:
    """Why ``raftstate cluster up`` must not start the nodes of ``config``: a process holds one of
    their data dirs, or something answers at one of their addresses (another ``cluster up`` of the
    same file, or of another file with the same ports) — or None when the way is clear. Checked
    before starting anything, so a second ``cluster up`` neither prints the other cluster's leader
    as its own nor leaves half-started nodes behind."""
    found: list[str] = []
    pids: set[int] = set()
    for n in config.nodes:
        pid = _lock_holder(Path(n.data_dir))
        if pid is not None:
            pids.add(pid)
            found.append(f"node {n.id}'s data dir {n.data_dir} is in use (pid {pid or '?'})")
        st = fetcher.fetch(n.address, timeout=0.5)
        if st is not None:
            found.append(
                f"node {st.get('id', '?')} of cluster {st.get('cluster_id', '?')!r} answers at "
                f"{fetcher.url(n.address)} ({st.get('role', '?')}, leader {st.get('leader') or 'unknown'})"
            )
        elif n.address in fetcher.refusals:
            found.append(
                f"a node answers at {fetcher.url(n.address)} ({fetcher.refusals[n.address]} for /status)"
            )
        elif _listening(n.address):
            found.append(f"something else listens at {n.address}")
    if not found:
        return None
    stop = f"kill {' '.join(str(p) for p in sorted(pids) if p)}" if any(pids) else "stop it"
    return (
        "a cluster is already running: " + "; ".join(found) + f". Stop it first (Ctrl-C where it runs, "
        f"or {stop}), or give this one other addresses and data dirs in {config.path}"
    )


def _lock_holder(data_dir: Path) -> int | None:
    """The PID in ``data_dir/LOCK`` while a process holds its flock (0: held, PID unreadable);
    None when no process holds it. Never creates the file."""
    try:
        fd = os.open(data_dir / "LOCK", os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        with contextlib.suppress(OSError, ValueError):
            return int(os.pread(fd, 32, 0).decode("ascii", "replace").strip())
        return 0
    finally:
        os.close(fd)  # also releases a shared lock taken above
    return None


def _listening(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=0.3):
            return True
    except (OSError, ValueError):
        return False


class HttpError(RemoteFault):
    """A node answered non-2xx; ``body`` is its decoded answer (``code`` its error code, if any)."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status = status
        self.body = body

    @property
    def code(self) -> str | None:
        err = self.body.get("error")
        return err.get("code") if isinstance(err, dict) else None


def http(
    method: str,
    url: str,
    body: Any = None,
    timeout: float = 5.0,
    *,
    token: str | None = None,
    context: ssl.SSLContext | None = None,
    headers: dict[str, str] | None = None,
) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json", **(headers or {})}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:
            raw = resp.read()
            return json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = {"raw": raw.decode(errors="replace")}
        raise HttpError(exc.code, parsed) from None


def wait_until(cond: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            v = cond()
            if v:
                return v
        except (OSError, HttpError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)


class LocalCluster:
    """``auth``/``tls``: those sections of the cluster file (default: auth explicitly off);
    ``env``: variables every node gets (the secrets auth refers to); ``token``/``context``: what
    the HTTP helpers send and trust; ``ports``: the nodes' ports (default: free ones)."""

    def __init__(
        self,
        root: Path,
        n: int = 3,
        settings: dict[str, Any] | None = None,
        *,
        auth: dict[str, Any] | None = None,
        tls: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
        token: str | None = None,
        context: ssl.SSLContext | None = None,
        cluster_id: str = "test",
        ports: list[int] | None = None,
    ) -> None:
        self.root = root
        self.env = dict(env or {})
        self.token = token
        self.context = context
        self.scheme = "https" if tls else "http"
        ports = ports or free_ports(n)
        assert len(ports) == n, f"{n} nodes need {n} ports, got {ports}"
        self.ids = [f"n{i + 1}" for i in range(n)]
        self.addr = {nid: f"127.0.0.1:{port}" for nid, port in zip(self.ids, ports, strict=True)}
        doc: dict[str, Any] = {
            "cluster_id": cluster_id,
            "nodes": [
                {"id": nid, "address": self.addr[nid], "data_dir": f"./data/{nid}"} for nid in self.ids
            ],
            "auth": auth if auth is not None else {"enabled": False},
        }
        if tls:
            doc["tls"] = tls
        if settings:
            doc["settings"] = settings
        self.config = root / "cluster.yaml"
        self.config.write_text(yaml.safe_dump(doc))
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}

    # ----------------------------------------------------------------- processes

    def start(self, nid: str | None = None, env: dict[str, str] | None = None) -> None:
        """Start one node (or all); ``env`` adds environment variables (fault-injection hooks)."""
        for i in [nid] if nid else self.ids:
            self._spawn(i, ["--config", str(self.config), "--id", i], env)

    def join(
        self, nid: str, member: str, data_dir: Path, env: dict[str, str] | None = None, *extra: str
    ) -> subprocess.Popen[bytes]:
        """``raftstate node --join`` through ``member`` (an id of this cluster), serving on
        ``self.addr[nid]`` (set it first for a new id); kill/stop_all/log_text work on it."""
        if nid not in self.ids:
            self.ids.append(nid)
        argv = [
            "--join",
            self.addr[member],
            "--id",
            nid,
            "--address",
            self.addr[nid],
            "--data-dir",
            str(data_dir),
        ]
        return self._spawn(nid, [*argv, *extra], env)

    def _spawn(self, nid: str, argv: list[str], env: dict[str, str] | None) -> subprocess.Popen[bytes]:
        log = self.root / f"{nid}.log"
        self.logs[nid] = log
        with open(log, "ab") as out:
            self.procs[nid] = subprocess.Popen(
                [sys.executable, "-m", "raftstate.node", "node", *argv],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env, **(env or {})},
            )
        return self.procs[nid]

    @contextlib.contextmanager
    def running(self, leader_timeout: float = 30.0) -> Iterator[LocalCluster]:
        """Start every node and wait for a leader; stop them all on exit."""
        self.start()
        try:
            self.wait_leader(timeout=leader_timeout)
            yield self
        finally:
            self.stop_all()

    def kill(self, nid: str, sig: int = signal.SIGKILL) -> None:
        p = self.procs[nid]
        if p.poll() is None:
            p.send_signal(sig)
            if sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT):
                p.wait(timeout=30)

    def alive(self, nid: str) -> bool:
        return nid in self.procs and self.procs[nid].poll() is None

    def stop_all(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.kill()
                p.wait(timeout=10)

    def log_text(self, nid: str) -> str:
        return self.logs[nid].read_text(errors="replace") if nid in self.logs else ""

    # ----------------------------------------------------------------- HTTP

    def url(self, nid: str, path: str) -> str:
        return f"{self.scheme}://{self.addr[nid]}{path}"

    def request(self, method: str, nid: str, path: str, body: Any = None, timeout: float = 5.0) -> Any:
        """One request to ``nid`` with this cluster's token and TLS trust."""
        return http(method, self.url(nid, path), body, timeout, token=self.token, context=self.context)

    def status(self, nid: str, timeout: float = 1.0) -> dict[str, Any]:
        st: dict[str, Any] = self.request(protocol.STATUS.method, nid, protocol.STATUS.path, timeout=timeout)
        return st

    def leader(self, among: list[str] | None = None) -> str | None:
        best: tuple[int, str] | None = None
        for nid in among or self.ids:
            if not self.alive(nid):
                continue
            try:
                st = self.status(nid, timeout=0.5)
            except (OSError, HttpError, ValueError):
                continue
            if st["role"] == "leader" and (best is None or st["term"] > best[0]):
                best = (st["term"], nid)
        return best[1] if best else None

    def wait_leader(self, timeout: float = 20.0, among: list[str] | None = None) -> str:
        leader: str = wait_until(lambda: self.leader(among), timeout, "a leader")
        return leader

    def put(self, key: str, value: Any, nid: str | None = None, timeout: float = 5.0) -> dict[str, Any]:
        """PUT through ``nid`` (default: the leader), following one not_leader redirect."""
        target = nid or self.wait_leader()
        put = protocol.KV_SET
        try:
            out: dict[str, Any] = self.request(
                put.method, target, put.path_for(key), {"value": value}, timeout
            )
            return out
        except HttpError as exc:
            if exc.code == "not_leader" and exc.body["error"].get("leader_address"):
                addr = exc.body["error"]["leader_address"]
                out = http(
                    put.method,
                    f"{self.scheme}://{addr}{put.path_for(key)}",
                    {"value": value},
                    timeout,
                    token=self.token,
                    context=self.context,
                )
                return out
            raise

    def get(self, key: str, nid: str | None = None, stale: bool = False, timeout: float = 5.0) -> Any:
        target = nid or self.wait_leader()
        q = "?consistency=stale" if stale else ""
        get = protocol.KV_GET
        return self.request(get.method, target, get.path_for(key) + q, timeout=timeout)

    def put_retry(self, key: str, value: Any, timeout: float = 30.0) -> dict[str, Any]:
        """Retry until acknowledged (idempotent for plain sets)."""
        out: dict[str, Any] = wait_until(lambda: self.put(key, value, timeout=2.0), timeout, f"PUT {key}")
        return out

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()
