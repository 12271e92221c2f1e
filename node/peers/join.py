"""Start-up checks about membership: joining a running cluster, and refusing a wiped voter.

``raftstate node --join ADDR --id n4 --address HOST:PORT --data-dir DIR``:
    - DIR already has a bootstrap record (node/peers/bootstrap.py): restart from it; ADDR is not asked.
    - otherwise ask ADDR (any member) for ``GET /v1/members`` (the leader's view when it names one)
      and decide with :func:`plan_join`: refuse if n4 is a voter (an empty disk forgot its vote),
      or a learner at another address, or a learner the leader already replicated to (an earlier
      incarnation); otherwise start as a non-voter with the cluster's id, settings and members,
      and wait to be added (``member add`` before or after this start both work).

On a secured cluster the joining node also gets ``--config FILE``: it takes only the ``auth:`` and
``tls:`` sections (and checks ``cluster_id``) from FILE; nodes and settings come from the member.
It asks ``/v1/members`` over https when FILE has ``tls:``, with a peer proof made from the cluster
secret (node/peers/members_auth.py), and serves with that auth and TLS; restarts pass the same FILE.

``raftstate node --config cluster.yaml --id n2`` with an EMPTY data dir (no ``meta``):
    :func:`wiped_voter_problem` asks the other nodes of cluster.yaml. If one answers that the
    cluster has heard from n2 (n2 ran before and had a disk with its vote and log) or that n2 is no
    longer a member, the node refuses to start and prints the replace procedure. A first start of
    a brand-new cluster passes: nobody has heard from n2 yet.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raftstate.client import protocol as p
from raftstate.node.config import ClusterConfig, ConfigError, NodeConfig, load_config, parse_address
from raftstate.node.ops.admin_http import AdminError, call
from raftstate.node.peers.bootstrap import read_record, settings_from_wire
from raftstate.node.peers.peer_auth import PeerAuth
from raftstate.node.security.config import TLS_ANY_NODE, TlsConfig, resolve_auth
from raftstate.node.security.node_access import NodeAccess
from raftstate.raft import Membership

log = logging.getLogger("raftstate.node")

DEFAULT_CONFIG = "cluster.yaml"

__all__ = [
    "JoinPlan",
    "JoinRefused",
    "fetch_view",
    "plan_join",
    "prepare_join",
    "prepare_start",
    "wiped_voter_problem",
]


class JoinRefused(ConfigError):
    """This node must not start as asked; the message says why and which commands to run."""


@dataclass(frozen=True, slots=True)
class JoinPlan:
    membership: Membership  #: the bootstrap membership: the cluster as the member sees it now
    waiting_hint: str | None  #: set when the cluster does not list this node yet


def _membership_of(doc: dict[str, Any]) -> Membership:
    rows = doc["members"]
    return Membership(
        voters=frozenset(r["id"] for r in rows if r["role"] == "voter"),
        learners=frozenset(r["id"] for r in rows if r["role"] == "learner"),
        addresses=tuple(sorted((r["id"], r["address"]) for r in rows if r["address"])),
    )


def plan_join(doc: dict[str, Any], node_id: str, address: str, member: str) -> JoinPlan:
    """Decide from a member's ``/v1/members`` document whether ``node_id`` may join (pure)."""
    m = _membership_of(doc)
    cluster = doc["cluster_id"]
    ep = f"--endpoints {member}"
    replace = (
        f"`raftstate member remove --id {node_id} {ep}`, then start this node again with --join "
        f"and `raftstate member add --id {node_id} --address {address} {ep}`"
    )
    if node_id in m.voters:
        raise JoinRefused(
            f"{node_id} is already a voter of cluster {cluster}, but this data dir is empty: a wiped "
            f"disk forgot {node_id}'s vote and log, so it must rejoin as a new member: {replace}"
        )
    owner = next((n for n, a in m.addresses if a == address and n != node_id and n in m.members), None)
    if owner is not None:
        raise JoinRefused(f"address {address} is already member {owner}'s in cluster {cluster}; pick another")
    if node_id in m.learners:
        row = next(r for r in doc["members"] if r["id"] == node_id)
        if row["address"] != address:
            raise JoinRefused(
                f"cluster {cluster} lists learner {node_id} at {row['address']}, not {address}: "
                f"start it with --address {row['address']}, or {replace}"
            )
        if row.get("match"):
            raise JoinRefused(
                f"cluster {cluster} already replicated to learner {node_id} up to index {row['match']} "
                f"(an earlier incarnation with a disk): {replace}"
            )
        return JoinPlan(m, None)
    hint = (
        f"{node_id} is not a member of cluster {cluster} yet; it waits to be added: run "
        f"`raftstate member add --id {node_id} --address {address} {ep}`"
    )
    return JoinPlan(m, hint)


def node_access(config: ClusterConfig, node_id: str) -> NodeAccess:
    """How this node asks others for ``/v1/members``: https when ``tls:``, a peer proof when auth
    is on (never a client token: nodes hold the cluster secret, not tokens)."""
    auth = resolve_auth(config.auth, config.path)
    peer = (
        PeerAuth(auth.cluster_secret, config.cluster_id, node_id, members=frozenset) if auth.enabled else None
    )
    return NodeAccess.for_operator(config, token="").with_peer(peer)


def fetch_view(member: str, timeout: float = 5.0, access: NodeAccess | None = None) -> dict[str, Any]:
    """``/v1/members`` from ``member``, or from the leader it names (the freshest view)."""
    access = access or NodeAccess()
    doc: dict[str, Any] = call(member, p.MEMBERS_LIST, timeout=timeout, access=access)
    leader_addr = doc.get("leader_address")
    if doc.get("role") != "leader" and leader_addr:
        try:
            doc = call(leader_addr, p.MEMBERS_LIST, timeout=timeout, access=access)
        except (AdminError, OSError):
            pass  # the member's own view will do
    return doc


def secured(config: ClusterConfig, security: ClusterConfig | None, node_id: str) -> ClusterConfig:
    """``config`` (a joined node's) with the ``auth:``/``tls:`` of the cluster file ``security``."""
    if security is None:
        return config
    if security.cluster_id != config.cluster_id:
        raise JoinRefused(
            f"{security.path} is for cluster {security.cluster_id}, but this node joins cluster "
            f"{config.cluster_id}; pass that cluster's file as --config"
        )
    tls: dict[str, TlsConfig] | None = None
    if security.tls:
        mine = security.tls.get(node_id) or security.tls.get(TLS_ANY_NODE)
        if mine is None:
            raise JoinRefused(
                f"{security.path}: tls.cert/tls.key list files per node but none for {node_id}; "
                f"add {node_id}: PATH under both (a certificate for its address, from the cluster's CA)"
            )
        tls = {node_id: mine}
    return dataclasses.replace(config, path=security.path, auth=security.auth, tls=tls)


def prepare_join(
    member: str | None,
    node_id: str,
    address: str | None,
    data_dir: Path,
    security: ClusterConfig | None = None,
) -> tuple[ClusterConfig, Membership, str | None]:
    """The config, bootstrap membership and a waiting hint for ``raftstate node --join``;
    ``security``: the cluster file given with --config (only its auth/tls are used)."""
    rec = read_record(data_dir)
    if rec is not None:
        if rec.node_id != node_id:
            raise JoinRefused(f"{data_dir} belongs to node {rec.node_id}, not {node_id}")
        if address is not None and address != rec.address:
            raise JoinRefused(f"{data_dir} is node {node_id} at {rec.address}; it cannot move to {address}")
        return secured(rec.cluster_config(data_dir), security, node_id), rec.membership, None
    if member is None or address is None:
        raise JoinRefused(
            f"{data_dir} has no bootstrap record: a first start needs --join MEMBER_ADDRESS and --address"
        )
    try:
        parse_address(address)
    except ValueError as exc:
        raise JoinRefused(f"--address: {exc}") from None
    access = node_access(security, node_id) if security is not None else NodeAccess()
    try:
        doc = fetch_view(member, access=access)
    except (AdminError, OSError) as exc:
        hint = "is it a running member?"
        if isinstance(exc, AdminError) and exc.code in ("unauthorized", "forbidden"):
            hint = (
                "the cluster requires auth: pass --config with the cluster's file (its auth: and tls: "
                "are used) and the same cluster secret in the environment"
                if security is None
                else f"check that {security.path} has this cluster's cluster_id and auth.cluster_secret"
            )
        elif security is None or not security.tls:
            hint += " (if the cluster uses TLS, pass --config with the cluster's file and its tls: section)"
        raise JoinRefused(f"cannot ask {member} about its cluster ({exc}); {hint}") from None
    plan = plan_join(doc, node_id, address, member)
    config = ClusterConfig(
        path=Path(f"--join {member}"),
        cluster_id=str(doc["cluster_id"]),
        nodes=(NodeConfig(node_id, address, data_dir.resolve()),),
        settings=settings_from_wire(doc["settings"]),
    )
    return secured(config, security, node_id), plan.membership, plan.waiting_hint


def wiped_voter_problem(docs: dict[str, dict[str, Any]], node_id: str) -> str | None:
    """Given other nodes' ``/v1/members`` answers, why ``node_id`` must not start with an empty
    data dir — or None (pure)."""
    for peer, doc in sorted(docs.items()):
        m = _membership_of(doc)
        cluster = doc["cluster_id"]
        if node_id not in m.members and doc.get("commit_index", 0) > 0:
            return (
                f"{peer} says {node_id} is no longer a member of cluster {cluster}; to bring it back with "
                f"an empty disk: `raftstate member add --id {node_id} --address HOST:PORT --endpoints "
                f"{m.address_of(peer)}` and start it with --join"
            )
        if node_id in m.voters and node_id in doc.get("heard_from", []):
            return (
                f"{peer} has heard from voter {node_id} before, but this data dir is empty: a wiped disk "
                f"forgot its vote and log and could elect two leaders. Replace it: `raftstate member "
                f"remove --id {node_id} --endpoints {m.address_of(peer)}`, then start this node with "
                f"`raftstate node --join {m.address_of(peer)} --id {node_id} --address "
                f"{m.address_of(node_id)} --data-dir DIR` and run `raftstate member add --id {node_id} "
                f"--address {m.address_of(node_id)}`"
            )
    return None


def check_not_wiped_voter(config: ClusterConfig, node_id: str) -> None:
    """Refuse (JoinRefused) to start ``node_id`` from an empty data dir if the cluster knew it."""
    docs: dict[str, dict[str, Any]] = {}
    access = node_access(config, node_id)
    for n in config.nodes:
        if n.id == node_id:
            continue
        for attempt in range(3):
            try:
                docs[n.id] = call(n.address, p.MEMBERS_LIST, timeout=3.0, access=access)
                break
            except (AdminError, OSError, ValueError) as exc:
                if isinstance(getattr(exc, "reason", exc), ConnectionRefusedError):
                    break  # not running (or a fresh cluster still starting): nothing to learn there
                # Slow or busy: ask again rather than decide without it (failing open is unsafe).
                log.info(
                    "node %s: %s did not answer /v1/members (%s), attempt %d", node_id, n.id, exc, attempt + 1
                )
    problem = wiped_voter_problem(docs, node_id)
    if problem is not None:
        raise JoinRefused(problem)


def prepare_start(args: argparse.Namespace) -> tuple[ClusterConfig, Membership | None]:
    """``raftstate node``'s arguments -> the config to serve and, when joining, the bootstrap
    membership. Raises JoinRefused/ConfigError with what to run instead."""
    if args.join or args.data_dir:
        data_dir = Path(args.data_dir) if args.data_dir else None
        if data_dir is None:
            raise JoinRefused("--join needs --data-dir (and --address at the first start)")
        security = load_config(args.config) if args.config else None
        config, membership, hint = prepare_join(args.join, args.id, args.address, data_dir, security)
        if hint:
            log.warning("%s", hint)
        return config, membership
    config = load_config(args.config or DEFAULT_CONFIG)
    try:
        me = config.node(args.id)  # unknown id: ConfigError before anything touches a data dir
    except ConfigError as exc:
        raise ConfigError(
            f"{exc} (a node that joined with --join restarts with --data-dir DIR --id ID)"
        ) from None
    if not (me.data_dir / "meta").exists():
        check_not_wiped_voter(config, args.id)
    return config, None
