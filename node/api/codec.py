"""Request and response bodies: JSON (so curl works) or msgpack (compact; what the client uses).

The request's Content-Type picks the decoder; its Accept header picks the encoder (msgpack only
when asked for). JSON cannot carry bytes: they travel as ``{"$bytes": "<base64>"}`` both ways.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable
from typing import Any, Final

import msgpack
from aiohttp import web

from raftstate.client.protocol import (
    INVALID_REQUEST,
    JSON,
    MSGPACK,
    REQUEST_TIMEOUT,
    REQUEST_TOO_LARGE,
)
from raftstate.node.errors import Refusal

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


def wants_msgpack(request: web.Request) -> bool:
    return MSGPACK in request.headers.get("Accept", "")


def respond(request: web.Request, body: Any, status: int = 200) -> web.Response:
    if wants_msgpack(request):
        return web.Response(body=msgpack.packb(body, use_bin_type=True), status=status, content_type=MSGPACK)
    text = json.dumps(body, default=_json_default, separators=(",", ":"))
    return web.Response(text=text, status=status, content_type=JSON)


def error_body(err: Refusal) -> dict[str, Any]:
    return {"error": {"code": err.code, "message": err.message, **err.fields}}


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
            return msgpack.unpackb(raw, raw=False, strict_map_key=True)
        except Exception as exc:  # msgpack raises several unrelated types
            raise Refusal(INVALID_REQUEST, f"request body is not valid msgpack: {exc}") from exc
    try:
        return json.loads(raw, object_hook=_json_hook)
    except (UnicodeDecodeError, ValueError) as exc:
        raise Refusal(INVALID_REQUEST, f"request body is not valid JSON: {exc}") from exc
    except RecursionError:  # json recurses per nesting level
        raise Refusal(INVALID_REQUEST, "request body nests too deeply to parse") from None
