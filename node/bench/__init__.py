"""The benchmark's parts (``scripts/bench.py`` is the command): the systems under test started
fresh (clusters.py: raftstate through node/ops/local_cluster.py, and etcd), the load generator that
runs in its own process (loadgen.py: ``python -m raftstate.node.bench.loadgen``), what each system
is asked (targets.py), the tables and plots (report.py), the 1M-key scale run (scale.py) and the
marker bench (markers.py: random webhook markers through the client library, written by its own
load generator process, marker_load.py).

May import: the public client (the load goes through it), ``raftstate.client.protocol`` and
``raftstate.node.ops`` (the local cluster); nothing in node/ imports it.
"""
