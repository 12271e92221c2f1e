"""Request fields made safe to log: control characters escaped, length bounded.

Anything a client sends — the decoded path, a header, a key, a claimed node id — can hold ``\\n``
(a forged log line after it) or ANSI escapes (``\\x1b[2J`` rewrites a terminal). Every such field
goes through :func:`printable` before it reaches a log line; ``%r`` is not enough for a field that
is not a ``str`` of ours, and it is noisy for the common clean case.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["MAX_LOGGED_CHARS", "printable"]

#: a logged field longer than this is cut (a 4 MiB path must not become a 4 MiB log line)
MAX_LOGGED_CHARS: Final = 200

# C0 controls, DEL, C1 controls (0x9b is a one-byte CSI), and the Unicode line/paragraph separators
# and bidi overrides a log viewer may act on.
_UNSAFE: Final = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _escape(m: re.Match[str]) -> str:
    c = m.group()
    return f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"


def printable(value: object, limit: int = MAX_LOGGED_CHARS) -> str:
    """``value`` as one log-safe line: every control character as ``\\xNN``, backslashes doubled
    (so an escaped sequence cannot be faked), cut to ``limit`` characters with a marker."""
    text = value if isinstance(value, str) else str(value)
    safe = _UNSAFE.sub(_escape, text[:limit].replace("\\", "\\\\"))
    return safe if len(text) <= limit else f"{safe}...(+{len(text) - limit} chars)"
