"""One line for a failed connection to a peer, in the node's logs.

aiohttp's ``ClientConnectorError`` prints as ``Cannot connect to host 127.0.0.1:7002 ssl:default
[Connect call failed ('127.0.0.1', 7002)]``: "ssl:default" is aiohttp's name for "no TLS settings
given", which on a plain-http cluster reads as if TLS were involved. This says what happened:
``nothing listening at 127.0.0.1:7002 (connection refused)``.
"""

from __future__ import annotations

import errno
import os

import aiohttp

__all__ = ["describe_connect_error"]

_WHAT = {
    errno.ECONNREFUSED: "nothing listening",
    errno.EHOSTUNREACH: "host unreachable",
    errno.ENETUNREACH: "network unreachable",
    errno.ETIMEDOUT: "connect timed out",
}


def describe_connect_error(exc: BaseException) -> str:
    """A short description of ``exc``; aiohttp's connector errors without "ssl:default"."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientConnectorError) and not isinstance(
        exc, aiohttp.ClientConnectorCertificateError | aiohttp.ClientConnectorSSLError
    ):
        os_error = exc.os_error
        code = os_error.errno
        why = os_error.strerror or str(os_error) or type(os_error).__name__
        if code in _WHAT:  # the OS's words (asyncio's strerror here is "Connect call failed (...)")
            return f"{_WHAT[code]} at {exc.host}:{exc.port} ({os.strerror(code).lower()})"
        return f"cannot connect to {exc.host}:{exc.port}: {why}"
    return str(exc) or type(exc).__name__
