#!/usr/bin/env python3
"""Time `snapshot save` / `restore` on a big state, and check the leader kept its term meanwhile.

    .venv/bin/python scripts/backup_bench.py --keys 200000

Builds a state of N keys offline, writes it as a backup file, restores it into a temp 3-node
cluster (new cluster id), starts it, then takes a backup through the running leader while a
client keeps writing — a backup that blocked the event loop would cost the leader its followers
(a new term) or stall the writes.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

from raftstate.client import Client
from raftstate.node.cli import main as raftstate
from raftstate.node.ops.backup_file import BackupHeader, read_backup, stream_backup
from raftstate.node.ops.backup_state import backup_payload
from raftstate.node.ops.local_cluster import LocalCluster
from raftstate.node.state.commands import Command, SetKey, encode
from raftstate.node.state.machine import KVStateMachine
from raftstate.node.storage.store import MemoryStorage
from raftstate.raft import Membership, SnapshotMeta
from raftstate.raft.ready import SnapshotToInstall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keys", type=int, default=200_000)
    args = ap.parse_args()
    sm = KVStateMachine()
    for i in range(args.keys):
        sm.apply(
            i + 1, 1_000, encode(Command(SetKey(f"imports:{i}:progress", {"processed": i, "total": 500})))
        )
    storage = MemoryStorage()
    meta = SnapshotMeta(args.keys, 1, Membership(voters=frozenset({"x"})), 1_000)
    storage.save(None, [], SnapshotToInstall(meta, sm.snapshot()))
    data, _, _ = backup_payload(storage, [], args.keys)
    sha = hashlib.sha256(data).hexdigest()
    header = BackupHeader("bench-src", args.keys, 1, 1_000, args.keys, len(data), sha, "offline", time.time())
    with tempfile.TemporaryDirectory(prefix="raftstate-backup-") as tmp, LocalCluster(Path(tmp)) as c:
        seed = Path(tmp) / "seed.rsb"
        seed.write_bytes(b"".join(stream_backup(header, data)))
        doc = yaml.safe_load(c.config.read_text())
        doc["cluster_id"] = "bench"
        c.config.write_text(yaml.safe_dump(doc))
        t0 = time.monotonic()
        assert raftstate(["snapshot", "restore", str(seed), "--config", str(c.config)]) == 0
        print(
            f"restore of {args.keys} keys ({len(data) / 1e6:.1f} MB) into 3 data dirs: "
            f"{time.monotonic() - t0:.2f} s"
        )
        c.start()
        leader = c.wait_leader(timeout=60)
        client = Client([f"http://{c.addr[n]}" for n in c.ids], timeout=30)
        client.set("warm", 1)
        term = c.status(leader)["term"]
        stop, gaps = threading.Event(), [0.0]

        def write() -> None:
            last = time.monotonic()
            while not stop.is_set():
                client.increment("bench:writes")
                now = time.monotonic()
                gaps[0] = max(gaps[0], now - last)
                last = now

        th = threading.Thread(target=write)
        th.start()
        time.sleep(0.5)
        out = Path(tmp) / "out.rsb"
        t0 = time.monotonic()
        # A separate process: its replay of the file must not steal this process's GIL from the writer.
        save = ["snapshot", "save", str(out), "--endpoints", ",".join(c.addr.values())]
        subprocess.run([sys.executable, "-m", "raftstate.node", *save], check=True)
        took = time.monotonic() - t0
        time.sleep(0.5)
        stop.set()
        th.join()
        h, _ = read_backup(out)
        print(
            f"snapshot save: {took:.2f} s (download, verify, replay) at index {h.index} "
            f"({out.stat().st_size / 1e6:.1f} MB); "
            f"longest write stall meanwhile {gaps[0] * 1000:.0f} ms; leader term {term} -> "
            f"{c.status(c.wait_leader())['term']}"
        )
        client.close()
        for n in c.ids:
            for line in c.log_text(n).splitlines():
                if (" is " in line and " in term " in line) or "snapshot" in line:
                    print(f"  {n}: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
