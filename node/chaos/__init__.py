"""Jepsen-style chaos runs against real node processes: ``scripts/chaos.py`` and ``tests/test_chaos.py``.

history.py   the operation history (JSON lines: invoke / ok / fail / info)
workload.py  concurrent workers through the real client library
proxy.py     one TCP proxy per directed peer link (partitions)
faults.py    the seeded fault schedule and its executor
checkers/    linearizability (WGL), counters, locks, dedupe, TTL, durability
report.py    verdict table and the report folder (history, fault timeline, latency picture)
run.py       one run end to end: cluster, workload + faults, heal, final reads, checks
"""
