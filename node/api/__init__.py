"""The client-facing API of a node: HTTP handlers and the multiplexed ``/v1/stream``, both derived
from the one endpoint table in ``raftstate.client.protocol``; request schema and size limits, the
JSON/msgpack codec, admin routes, the slow-client guard and pre-proposal admission checks.

May import: the hub, ``raftstate.node.state``, ``runtime``, ``security``, ``peers``, ``storage`` and
``ops`` (admin routes: membership, backups), ``raftstate.raft`` and the public modules of
``raftstate.client`` — never ``chaos``.
"""
