"""How a node's log lines look: every line names the node (three nodes of ``cluster up`` share one
terminal), as text or as one JSON object per line (``--log-format json``) for a log shipper.

    2026-12-03 19:30:01,123 n2 INFO raftstate.node: node n2 serving on 127.0.0.1:7002 (...)
    {"time": "2026-12-03T19:30:01.123+00:00", "level": "INFO", "node": "n2", "logger": "raftstate.node",
     "message": "node n2 serving on 127.0.0.1:7002 (...)"}
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import TextIO

__all__ = ["JsonFormatter", "setup", "text_formatter"]


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (a traceback goes into ``exc``, newlines escaped)."""

    def __init__(self, node_id: str) -> None:
        super().__init__()
        self.node_id = node_id

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "node": self.node_id,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            doc["exc"] = record.exc_text
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return json.dumps(doc, ensure_ascii=False, default=str)


def text_formatter(node_id: str) -> logging.Formatter:
    node = node_id.replace("%", "%%")  # ids are plain names; never let one become a format field
    return logging.Formatter(f"%(asctime)s {node} %(levelname)s %(name)s: %(message)s")


def setup(node_id: str, *, level: str = "INFO", fmt: str = "text", stream: TextIO | None = None) -> None:
    """Configure the root logger of a node process: one handler on stderr (or ``stream``)."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter(node_id) if fmt == "json" else text_formatter(node_id))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
