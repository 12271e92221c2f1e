"""Jepsen-style chaos runs against real node processes: ``raftstate chaos`` (cli.py; also
``python -m raftstate.node.chaos`` and scripts/chaos.py) and tests/test_chaos.py.

May import: the public client (the workload is what workers run), ``raftstate.node.ops`` (a local
cluster of real processes) and the test-only hooks; nothing in node/ but the CLI imports chaos/.

history.py   the operation history (JSON lines: invoke / ok / fail / info)
workload.py  concurrent workers through the real client library
proxy.py     one TCP proxy per directed peer link (partitions)
faults.py    the seeded fault schedule and its executor
checkers/    linearizability (WGL), counters, locks, dedupe, TTL, durability
report.py    verdict table and the report folder (history, fault timeline, latency picture)
cli.py       the command: options, runs, summary
run.py       one run end to end: cluster, workload + faults, heal, final reads, checks
"""
