"""Peer frames: one WebSocket binary message = one msgpack array of encoded Raft messages.

Batching many messages per frame keeps a busy leader to one write per peer per loop turn. The
sender encodes each message once, when it is queued (so it can bound its queue in bytes), and a
frame is then just an array header followed by those encodings: no second pass over the payload.

Decoding is the trust boundary: the core's own decoder (raftstate.raft.messages.message_from_wire)
checks every message's shape, field types and ranges, so the core never sees a message that would
crash it. A frame is accepted or rejected whole.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgpack

from raftstate.node.errors import RemoteFault
from raftstate.raft.messages import (
    Message,
    decode_message,
    encode_message,
    message_from_wire,
)

__all__ = ["FrameError", "decode_frame", "decode_one", "encode_frame", "encode_one", "frame_header"]


class FrameError(RemoteFault, ValueError):
    """An inbound frame is malformed: a *remote* fault, so the receiver logs, counts and drops it."""


def encode_one(msg: Message) -> bytes:
    """One message, as it will sit inside a frame."""
    return encode_message(msg)


def decode_one(data: bytes) -> Message:
    """Inverse of :func:`encode_one` (one message outside a frame: a snapshot transfer's header).
    Raises :class:`FrameError` saying what was wrong."""
    try:
        # The core's decoder is the trust boundary: shapes, field types and ranges.
        return decode_message(data)
    except Exception as exc:  # anything a remote peer can trigger is the sender's fault
        raise FrameError(str(exc)) from None


def frame_header(count: int) -> bytes:
    """msgpack array header for ``count`` already-encoded items."""
    assert count > 0
    out: bytes = msgpack.Packer().pack_array_header(count)
    return out


def encode_frame(encoded: Iterable[bytes]) -> bytes:
    """Join messages from :func:`encode_one` into one frame."""
    items = list(encoded)
    return b"".join([frame_header(len(items)), *items])


def decode_frame(data: bytes) -> list[Message]:
    """Inverse of :func:`encode_frame`. Raises :class:`FrameError` saying what was wrong."""
    try:
        raw = msgpack.unpackb(data, raw=False)
    except Exception as exc:  # msgpack raises several unrelated types (and UnicodeDecodeError)
        raise FrameError(f"not msgpack: {exc}") from None
    if not isinstance(raw, list) or not raw:
        raise FrameError("a frame must be a non-empty msgpack array of messages")
    out: list[Message] = []
    for i, w in enumerate(raw):
        try:
            # The core's decoder is the trust boundary: shapes, field types and ranges.
            msg = message_from_wire(w)
        except Exception as exc:  # anything a remote peer can trigger is the sender's fault
            raise FrameError(f"message {i}: {exc}") from None
        out.append(msg)
    return out
