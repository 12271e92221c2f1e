"""The systems under test, started fresh in a temp dir: raftstate (raftstate.node.ops.local_cluster)
and a 3-member etcd on loopback (Debian's etcd-server, default fsync)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

from raftstate.node.ops.local_cluster import LocalCluster, free_ports, wait_until

ETCD_MISSING = (
    "etcd not found: install it with `apt-get install -y etcd-server` (Debian/Ubuntu, etcd 3.4) "
    "to compare; skipping etcd"
)


def etcd_binary() -> str | None:
    return shutil.which("etcd")


class EtcdCluster:
    """Three etcd members on free loopback ports, data in ``root``; defaults otherwise (fsync on)."""

    def __init__(self, root: Path, n: int = 3) -> None:
        self.root = root
        ports = free_ports(2 * n)
        self.names = [f"e{i + 1}" for i in range(n)]
        self.client = {nm: ports[2 * i] for i, nm in enumerate(self.names)}
        self.peer = {nm: ports[2 * i + 1] for i, nm in enumerate(self.names)}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def endpoints(self) -> list[str]:
        return [f"http://127.0.0.1:{self.client[nm]}" for nm in self.names]

    def start(self) -> None:
        binary = etcd_binary()
        assert binary is not None, ETCD_MISSING
        initial = ",".join(f"{nm}=http://127.0.0.1:{self.peer[nm]}" for nm in self.names)
        for nm in self.names:
            self._start(binary, nm, initial)
        wait_until(self.healthy, 30, "etcd members healthy")

    def _start(self, binary: str, nm: str, initial: str) -> None:
        c, p = self.client[nm], self.peer[nm]
        out = open(self.root / f"{nm}.log", "ab")
        self.procs[nm] = subprocess.Popen(
            [
                binary,
                "--name",
                nm,
                "--data-dir",
                str(self.root / nm),
                "--listen-client-urls",
                f"http://127.0.0.1:{c}",
                "--advertise-client-urls",
                f"http://127.0.0.1:{c}",
                "--listen-peer-urls",
                f"http://127.0.0.1:{p}",
                "--initial-advertise-peer-urls",
                f"http://127.0.0.1:{p}",
                "--initial-cluster",
                initial,
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                f"bench-{os.getpid()}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )

    def healthy(self) -> bool:
        for ep in self.endpoints:
            with urllib.request.urlopen(ep + "/health", timeout=1) as r:
                if json.loads(r.read()).get("health") not in ("true", True):
                    return False
        return True

    def stop(self) -> None:
        for pr in self.procs.values():
            if pr.poll() is None:
                pr.send_signal(signal.SIGKILL)
                pr.wait(timeout=10)

    def __enter__(self) -> EtcdCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def raftstate_endpoints(c: LocalCluster) -> list[str]:
    leader = c.wait_leader()
    # the leader first: the load generator starts there and follows 421s if it moves
    return [f"http://{c.addr[leader]}"] + [f"http://{c.addr[n]}" for n in c.ids if n != leader]


def wait_ready(c: LocalCluster, timeout: float = 30.0) -> None:
    c.wait_leader(timeout)
    c.put_retry("bench:warmup", 0, timeout)
    time.sleep(0.2)
