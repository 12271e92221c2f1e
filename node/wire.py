"""Peer frames: one WebSocket binary message = one msgpack array of encoded Raft messages.

Batching many messages per frame keeps a busy leader to one write per peer per loop turn. The
sender encodes each message once, when it is queued (so it can bound its queue in bytes), and a
frame is then just an array header followed by those encodings: no second pass over the payload.

Decoding is the trust boundary: whatever arrives from the network is checked here — shape, field
types, non-negative integers — so the core never sees a message that would crash it. A frame is
accepted or rejected whole.
"""

from __future__ import annotations

import typing
from collections.abc import Iterable
from dataclasses import fields
from types import NoneType
from typing import Any

import msgpack

from raftstate.raft.messages import (
    AppendEntries,
    InstallSnapshot,
    Message,
    encode_message,
    message_from_wire,
)

__all__ = ["FrameError", "decode_frame", "encode_frame", "encode_one", "frame_header"]

# Every message class of the core, read off its Message union so a new one is never forgotten here.
_MESSAGE_TYPES: tuple[type[Any], ...] = typing.get_args(Message)


class FrameError(ValueError):
    """An inbound frame is malformed: a *remote* fault, so the receiver logs, counts and drops it."""


def encode_one(msg: Message) -> bytes:
    """One message, as it will sit inside a frame."""
    return encode_message(msg)


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
            _check_entries(w)
            msg = message_from_wire(w)
            _check_fields(msg)
        # Besides ValueError the core's constructors assert invariants (e.g. Membership): a remote
        # peer must not be able to trip them, so any exception here is the sender's fault.
        except Exception as exc:
            raise FrameError(f"message {i}: {exc}") from None
        out.append(msg)
    return out


# --------------------------------------------------------------------------- field checks

# Annotation text -> the Python types a decoded value may have.
_SCALARS: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "str": (str,),
    "bool": (bool,),
    "bytes": (bytes,),
    "str | None": (str, NoneType),
}


# Fields that are not scalars; message_from_wire builds them, _check_* below inspect them.
_COMPOUND = {"entries", "meta"}


def _field_table(cls: type[Any]) -> dict[str, tuple[type, ...]]:
    table: dict[str, tuple[type, ...]] = {}
    for f in fields(cls):
        # messages.py uses postponed annotations, so f.type is the annotation's source text
        text = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        if text in _SCALARS:
            table[f.name] = _SCALARS[text]
        else:
            # A new kind of field must get a check here before it can cross the trust boundary.
            assert f.name in _COMPOUND, f"wire.py does not know how to check {cls.__name__}.{f.name}: {text}"
    return table


# Per message class: field name -> accepted Python types, derived once from the annotations.
_FIELDS: dict[type[Any], dict[str, tuple[type, ...]]] = {cls: _field_table(cls) for cls in _MESSAGE_TYPES}


def _check_fields(msg: Message) -> None:
    for name, types in _FIELDS[type(msg)].items():
        value = getattr(msg, name)
        # bool is an int subclass: a True where a term belongs is as wrong as a string
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise ValueError(f"{type(msg).__name__}.{name} has type {type(value).__name__}")
        if isinstance(value, int) and not isinstance(value, bool) and value < 0:
            raise ValueError(f"{type(msg).__name__}.{name} is negative ({value})")
    if isinstance(msg, InstallSnapshot):
        m = msg.meta
        if m.index < 0 or m.term < 0 or not all(isinstance(x, str) for x in m.membership.members):
            raise ValueError("InstallSnapshot.meta is malformed")


_ENTRIES_POS = 1 + [f.name for f in fields(AppendEntries)].index("entries")


def _check_entries(w: Any) -> None:
    # message_from_wire builds entry data with bytes(x): an integer there would allocate x zero
    # bytes (a remote memory bomb). Check the raw shape first.
    if not (isinstance(w, list) and w and w[0] == AppendEntries.TYPE and len(w) > _ENTRIES_POS):
        return
    entries = w[_ENTRIES_POS]
    if not isinstance(entries, list):
        raise ValueError("AppendEntries.entries is not an array")
    for e in entries:
        ok = (
            isinstance(e, list)
            and len(e) == 5
            and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in e[:4])
            and isinstance(e[4], bytes)
        )
        if not ok:
            raise ValueError("AppendEntries carries a malformed entry")
