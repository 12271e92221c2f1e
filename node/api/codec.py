"""Request and response bodies: JSON (so curl works) or msgpack (compact; what the client uses).

The request's Content-Type picks the decoder; its Accept header picks the encoder (msgpack only
when asked for). JSON cannot carry bytes: they travel as ``{"$bytes": "<base64>"}`` both ways.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import secrets
from collections.abc import Callable
from typing import Any, Final

import msgpack
from aiohttp import web

from raftstate.client.protocol import (
    INTERNAL,
    INVALID_REQUEST,
    JSON,
    MSGPACK,
    REQUEST_TIMEOUT,
    REQUEST_TOO_LARGE,
)
from raftstate.node.errors import Refusal
from raftstate.node.security.log_fields import printable

log = logging.getLogger("raftstate.node")

#: the most containers (maps + arrays) one decoded input may hold, and the most items one of them
#: may hold. Every byte can open a container (``0x80`` is an empty map, ``{}`` in JSON), and a
#: Python dict costs ~64 bytes: without this bound a 4 MiB body decodes to ~290 MB in seconds on
#: the event loop. 100,000 is far above any valid request (a value is at most max_value_bytes and
#: this still leaves it 100,000 nested maps or lists); nesting depth is bounded by the decoders
#: themselves (msgpack: 1024 levels, in C; JSON: a RecursionError), and schema refuses > 100.
MAX_CONTAINERS: Final = 100_000
MAX_CONTAINER_ITEMS: Final = 100_000

#: seconds a request body may take to arrive (settings.client_body_timeout_s; absent: no limit)
BODY_TIMEOUT_S: Final = web.AppKey("raftstate_body_timeout_s", float)
#: called once a request's body has fully arrived (node/api/guard.py stops treating it as slow)
BODY_DONE: Final[web.AppKey[Callable[[web.Request], None]]] = web.AppKey("raftstate_body_done")


def _json_default(o: Any) -> Any:
    if isinstance(o, bytes | bytearray | memoryview):
        return {"$bytes": base64.b64encode(bytes(o)).decode("ascii")}
    raise TypeError(f"cannot encode {type(o).__name__} as JSON")


def _json_hook(d: dict[str, Any]) -> Any:
    if len(d) == 1 and "$bytes" in d and isinstance(d["$bytes"], str):
        return base64.b64decode(d["$bytes"], validate=True)
    return d


class _Budget:
    """Counts the containers of one decode; raises ValueError past ``limit``."""

    __slots__ = ("left", "what")

    def __init__(self, limit: int, what: str) -> None:
        self.left = limit
        self.what = what

    def spend(self) -> None:
        self.left -= 1
        if self.left < 0:
            raise ValueError(f"{self.what} holds more than {MAX_CONTAINERS} maps/arrays (the limit)")


def unpack_bounded(data: bytes, *, what: str) -> Any:
    """msgpack ``data`` decoded with every size bounded: at most :data:`MAX_CONTAINERS` maps and
    arrays, each of at most :data:`MAX_CONTAINER_ITEMS` items, strings and bins no longer than
    ``data`` itself, depth 1024 (msgpack's own stack, in C). Raises ValueError (or msgpack's
    errors) naming the limit: the caller answers 400."""
    return msgpack.unpackb(data, **_limits(data, _Budget(MAX_CONTAINERS, what)))


def _limits(data: bytes, budget: _Budget) -> dict[str, Any]:
    def on_map(d: dict[Any, Any]) -> dict[Any, Any]:
        budget.spend()
        return d

    def on_list(items: list[Any]) -> list[Any]:
        budget.spend()
        return items

    n = max(len(data), 1)
    return {
        "raw": False,
        "strict_map_key": True,
        "max_array_len": MAX_CONTAINER_ITEMS,
        "max_map_len": MAX_CONTAINER_ITEMS,
        "max_str_len": n,
        "max_bin_len": n,
        "max_ext_len": n,
        "object_hook": on_map,
        "list_hook": on_list,
    }


def unpack_items(data: bytes, *, what: str, max_items: int) -> list[Any]:
    """``data``, a msgpack array, as its items, decoded like :func:`unpack_bounded`; the array's
    length is checked against ``max_items`` BEFORE any item is decoded (raises
    a Refusal naming the limit). Raises ValueError (or msgpack's errors) for anything else; a
    frame that is not an array raises ``TypeError`` naming what it is."""
    unpacker = msgpack.Unpacker(
        max_buffer_size=max(len(data), 1), **_limits(data, _Budget(MAX_CONTAINERS, what))
    )
    unpacker.feed(data)
    try:
        count = unpacker.read_array_header()
    except ValueError:  # not an array: decode it whole (bounded) to name what it is
        raise TypeError(type(unpack_bounded(data, what=what)).__name__) from None
    if count > max_items:
        raise Refusal(
            INVALID_REQUEST,
            f"{what} holds {count} items; the limit is {max_items} (nothing of it ran): send fewer per frame",
            limit=max_items,
        )
    items = [unpacker.unpack() for _ in range(count)]
    if unpacker.tell() != len(data):
        raise ValueError(f"{what} has {len(data) - unpacker.tell()} bytes after its array")
    return items


def loads_bounded(raw: bytes, *, what: str) -> Any:
    """JSON ``raw`` decoded with at most :data:`MAX_CONTAINERS` objects and arrays. The count is of
    ``{`` and ``[`` bytes (brackets inside strings count too: a generous over-estimate, checked
    before decoding so a flood of ``{}`` costs one C-speed scan, not 290 MB)."""
    if raw.count(b"{") + raw.count(b"[") > MAX_CONTAINERS:
        raise ValueError(f"{what} holds more than {MAX_CONTAINERS} objects/arrays (the limit)")
    return json.loads(raw, object_hook=_json_hook)


def wants_msgpack(request: web.Request) -> bool:
    return MSGPACK in request.headers.get("Accept", "")


def respond(request: web.Request, body: Any, status: int = 200) -> web.Response:
    if wants_msgpack(request):
        return web.Response(body=msgpack.packb(body, use_bin_type=True), status=status, content_type=MSGPACK)
    text = json.dumps(body, default=_json_default, separators=(",", ":"))
    return web.Response(text=text, status=status, content_type=JSON)


def error_body(err: Refusal) -> dict[str, Any]:
    return {"error": {"code": err.code, "message": err.message, **err.fields}}


def internal_error(what: str) -> Refusal:
    """The answer to a bug while serving ``what`` (call it inside the ``except``): the traceback
    goes to the log with a fresh error id; the client gets only a generic message and that id
    (never ``repr(exc)``: it can carry paths, values or another caller's data)."""
    error_id = secrets.token_hex(6)
    log.exception("internal error %s while serving %s", error_id, printable(what))
    return Refusal(
        INTERNAL,
        f"internal error {error_id}: a bug in the node; its log has the details under that id",
        error_id=error_id,
    )


def error_response(request: web.Request, err: Refusal) -> web.Response:
    resp = respond(request, error_body(err), err.status)
    if err.code == REQUEST_TIMEOUT:
        resp.force_close()  # the rest of a slow body is not worth waiting for
    return resp


async def read_body(request: web.Request, max_bytes: int) -> Any:
    """Decode the request body (an empty body is ``{}``). Raises Refusal with the limit or the
    position of the syntax error."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise Refusal(
            REQUEST_TOO_LARGE,
            f"request body of {request.content_length} bytes exceeds the limit of {max_bytes} bytes "
            "(settings.max_request_bytes)",
            limit=max_bytes,
        )
    # content.read(n) returns what has arrived (one TCP read, ~64 KiB), not n bytes: read to the end.
    buf = bytearray()
    timeout_s = request.app.get(BODY_TIMEOUT_S)
    try:
        async with asyncio.timeout(timeout_s):
            while len(buf) <= max_bytes:
                chunk = await request.content.read(max_bytes + 1 - len(buf))
                if not chunk:
                    break
                buf += chunk
    except ConnectionError:  # the guard evicted a slow body to make room (node/api/guard.py)
        raise Refusal(REQUEST_TIMEOUT, "the connection closed while the body was arriving") from None
    except TimeoutError:
        raise Refusal(
            REQUEST_TIMEOUT,
            f"the request body did not arrive within {timeout_s:g} s "
            f"(settings.client_body_timeout_s; {len(buf)} bytes came); send the body at once",
            limit=timeout_s,
        ) from None
    raw = bytes(buf)
    done = request.app.get(BODY_DONE)
    if done is not None:
        done(request)
    if len(raw) > max_bytes:
        raise Refusal(
            REQUEST_TOO_LARGE,
            f"request body exceeds the limit of {max_bytes} bytes (settings.max_request_bytes)",
            limit=max_bytes,
        )
    if not raw:
        return {}
    if request.content_type == MSGPACK:
        try:
            return unpack_bounded(raw, what="request body")
        except Exception as exc:  # msgpack raises several unrelated types
            raise Refusal(INVALID_REQUEST, f"request body is not valid msgpack: {exc}") from exc
    try:
        return loads_bounded(raw, what="request body")
    except (UnicodeDecodeError, ValueError) as exc:
        raise Refusal(INVALID_REQUEST, f"request body is not valid JSON: {exc}") from exc
    except RecursionError:  # json recurses per nesting level
        raise Refusal(INVALID_REQUEST, "request body nests too deeply to parse") from None
