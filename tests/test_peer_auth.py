"""The peer handshake proof: every way to fake or reuse one is refused, with its reason."""

from __future__ import annotations

from raftstate.node.peers.peer_auth import PROOF_HEADER, PeerAuth

SECRET = b"k" * 32


class Clock:
    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        return self.t


def pair(clock: Clock, members: set[str] | None = None) -> tuple[PeerAuth, PeerAuth]:
    m = members if members is not None else {"n1", "n2", "n3"}
    n1 = PeerAuth(SECRET, "prod", "n1", members=lambda: m, clock=clock)
    n2 = PeerAuth(SECRET, "prod", "n2", members=lambda: m, clock=clock)
    return n1, n2


def reason(auth: PeerAuth, headers: dict[str, str], sender: str, cluster: str = "prod") -> str | None:
    r = auth.check(headers, sender, cluster)
    return None if r is None else r.reason


def test_a_fresh_proof_opens_one_stream_once() -> None:
    clock = Clock()
    n1, n2 = pair(clock)
    h = n1.sign("n2")
    assert reason(n2, h, "n1") is None
    assert reason(n2, h, "n1") == "replayed_proof"
    assert reason(n2, n1.sign("n2"), "n1") is None, "a new handshake has a new nonce"


def test_a_look_ahead_leaves_the_proof_good_for_the_real_check() -> None:
    clock = Clock()
    n1, n2 = pair(clock)
    h = n1.sign("n2")
    assert n2.check(h, "n1", "prod", spend=False) is None
    assert n2.check(h, "n1", "prod", spend=False) is None
    assert reason(n2, h, "n1") is None
    spent = n2.check(h, "n1", "prod", spend=False)
    assert spent is not None and spent.reason == "replayed_proof", "a spent proof is refused by a look, too"
    forged = PeerAuth(b"o" * 32, "prod", "n1", members=lambda: {"n1"}, clock=clock).sign("n2")
    looked = n2.check(forged, "n1", "prod", spend=False)
    assert looked is not None and looked.reason == "bad_proof"


def test_forgeries() -> None:
    clock = Clock()
    n1, n2 = pair(clock)
    assert reason(n2, {}, "n1") == "missing_proof"
    assert reason(n2, {PROOF_HEADER: "v1:garbage"}, "n1") == "malformed_proof"
    assert reason(n2, {PROOF_HEADER: "v1:1:" + "a" * 32 + ":" + "b" * 64}, "n1") == "stale_proof"
    outsider = PeerAuth(b"o" * 32, "prod", "n1", members=lambda: {"n1"}, clock=clock)
    assert reason(n2, outsider.sign("n2"), "n1") == "bad_proof", "no secret, no stream"
    assert reason(n2, n1.sign("n3"), "n1") == "bad_proof", "a proof for n3 does not open n2"
    assert reason(n2, n1.sign("n2"), "n3") == "bad_proof", "n1's proof cannot claim to be n3"
    tampered = n1.sign("n2")[PROOF_HEADER]
    ts = tampered.split(":")[1]
    assert reason(n2, {PROOF_HEADER: tampered.replace(ts, str(int(ts) + 1))}, "n1") == "bad_proof"


def test_time_bounds_replays_and_nonces_are_forgotten_only_after_the_window() -> None:
    clock = Clock()
    n1, n2 = pair(clock)
    h = n1.sign("n2")
    clock.t += 31
    assert reason(n2, h, "n1") == "stale_proof"
    clock.t -= 31
    assert reason(n2, h, "n1") is None
    clock.t += 25  # still inside the window: remembered
    assert reason(n2, h, "n1") == "replayed_proof"


def test_a_proof_stamped_ahead_cannot_be_replayed_after_its_nonce_is_forgotten() -> None:
    clock = Clock()
    n1, n2 = pair(clock)
    clock.t += 29
    ahead = n1.sign("n2")  # stamped 29 s in n2's future
    clock.t -= 29
    assert reason(n2, ahead, "n1") is None
    for step in (20, 20, 15):  # walk through the whole time the proof stays fresh
        clock.t += step
        n2.check(n1.sign("n2"), "n1", "prod")  # other traffic triggers forgetting
        assert reason(n2, ahead, "n1") in ("replayed_proof", "stale_proof")


def test_a_secret_holder_that_is_not_a_member_is_refused_403() -> None:
    clock = Clock()
    members = {"n1", "n2"}
    n1, n2 = pair(clock, members)
    rogue = PeerAuth(SECRET, "prod", "n9", members=lambda: members, clock=clock)
    r = n2.check(rogue.sign("n2"), "n9", "prod")
    assert r is not None and (r.status, r.reason) == (403, "not_member")
    members.discard("n1")  # removed by a membership change
    assert reason(n2, n1.sign("n2"), "n1") == "not_member"


def test_another_cluster_with_the_same_secret_is_left_to_the_cluster_id_check() -> None:
    clock = Clock()
    _, n2 = pair(clock)
    other = PeerAuth(SECRET, "staging", "n1", members=lambda: {"n1"}, clock=clock)
    # The proof is genuine for "staging"; the receiver then refuses the foreign cluster id by name.
    assert reason(n2, other.sign("n2"), "n1", cluster="staging") is None
    assert reason(n2, other.sign("n2"), "n1", cluster="prod") == "bad_proof", "cannot lie about its cluster"
