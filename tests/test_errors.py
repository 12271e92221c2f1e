"""One error tree on the node (node/errors.py): every exception class under node/ derives from
NodeError, the drawings of the tree are true, and request validation and apply refuse with the one
Refusal type."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path
from typing import Any

import pytest

import raftstate.node
from raftstate.client import protocol as p
from raftstate.node import errors
from raftstate.node.api import schema
from raftstate.node.api.admission import check_room
from raftstate.node.api.schema import ApiLimits
from raftstate.node.errors import NodeError, Refusal
from raftstate.node.state.commands import Command, OpenSession, SetKey, encode
from raftstate.node.state.machine import KVStateMachine, encode_command
from raftstate.node.storage import errors as storage_errors

NODE_DIR = Path(raftstate.node.__file__).parent
T0 = 1_700_000_000_000


#: packages of tools that drive a core or a cluster from outside the node process: their failures
#: are reports to their caller (a simulator failure is an AssertionError, so pytest shows it), not
#: errors of a node
TOOLS = ("sim", "bench")


def _exception_classes() -> dict[str, type[BaseException]]:
    """Every exception class defined under node/, by ``module:qualname``: class statements are found
    in the source (so none is missed for not being imported yet), then looked up in their module."""
    found: dict[str, type[BaseException]] = {}
    hidden: list[str] = []

    def visit(node: ast.AST, module: str, owner: Any, qual: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                q = f"{qual}.{child.name}" if qual else child.name
                cls = getattr(owner, child.name) if owner is not None else None
                if owner is None:
                    hidden.append(f"{module}:{q}")
                elif isinstance(cls, type) and issubclass(cls, BaseException):
                    found[f"{module}:{q}"] = cls
                visit(child, module, cls, q)
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                visit(child, module, None, qual)
            else:
                visit(child, module, owner, qual)

    for path in sorted(NODE_DIR.rglob("*.py")):
        if path.name == "__main__.py":
            continue  # runs the CLI when imported
        if path.relative_to(NODE_DIR).parts[0] in TOOLS:
            continue
        parts = [part for part in path.relative_to(NODE_DIR).with_suffix("").parts if part != "__init__"]
        name = ".".join(["raftstate.node", *parts])
        visit(ast.parse(path.read_text(encoding="utf-8")), name, importlib.import_module(name), "")
    # A class statement inside a function is invisible to this search: keep classes at module level.
    assert not hidden, hidden
    return found


EXCEPTIONS = _exception_classes()


def test_the_search_finds_the_known_classes() -> None:
    """The check below is only as good as the search: it must see private and nested-module ones."""
    names = {key.split(":")[1] for key in EXCEPTIONS}
    assert {"Refusal", "StorageCorruption", "_BadRecord", "_Lost", "FrameError"} <= names
    assert {"ProposalLost", "AdminError", "HttpError", "PeerRefusal", "SnapshotMovedOn"} <= names
    assert len(EXCEPTIONS) >= 23


@pytest.mark.parametrize("key", sorted(EXCEPTIONS))
def test_every_exception_class_under_node_derives_from_node_error(key: str) -> None:
    assert issubclass(EXCEPTIONS[key], NodeError), f"{key} must derive from raftstate.node.errors.NodeError"


def _drawn_edges(doc: str) -> list[tuple[str, str]]:
    """(parent, child) pairs of the tree drawn in a docstring with ├── / └── branches."""
    lines = doc.splitlines()
    first = next(i for i, line in enumerate(lines) if re.search(r"[├└]── ", line))
    root = next(
        m.group(1) for line in reversed(lines[:first]) if (m := re.match(r"\s+([A-Z]\w+)\s", line + " "))
    )
    stack: list[tuple[int, str]] = [(-1, root)]
    edges = []
    for line in lines[first:]:
        m = re.search(r"[├└]── (\w+)", line)
        if m is None:
            continue
        while stack[-1][0] >= m.start():
            stack.pop()
        edges.append((stack[-1][1], m.group(1)))
        stack.append((m.start(), m.group(1)))
    return edges


@pytest.mark.parametrize("module", [errors, storage_errors], ids=lambda m: m.__name__)
def test_the_drawn_hierarchy_is_the_real_one(module: Any) -> None:
    by_name = {key.split(":")[1]: cls for key, cls in EXCEPTIONS.items()}
    edges = _drawn_edges(module.__doc__)
    assert edges
    for parent, child in edges:
        assert issubclass(by_name[child], by_name[parent]), f"drawn {parent} ── {child}, but it is not"


def test_the_drawing_names_every_public_exception_class() -> None:
    drawn = {child for _, child in _drawn_edges(errors.__doc__ or "")} | {"NodeError"}
    public = {key.split(":")[1] for key in EXCEPTIONS if not key.split(":")[1].startswith("_")}
    assert public <= drawn, f"not drawn in node/errors.py: {sorted(public - drawn)}"


def test_local_and_remote_faults_are_apart() -> None:
    local = [c for c in EXCEPTIONS.values() if issubclass(c, errors.LocalFault)]
    remote = [c for c in EXCEPTIONS.values() if issubclass(c, errors.RemoteFault)]
    assert local and remote and not set(local) & set(remote)
    assert not any(
        issubclass(c, errors.LocalFault | errors.RemoteFault) for c in (Refusal, errors.Interrupted)
    )


# =========================================================================== one refusal type


def test_validation_and_apply_refuse_with_the_same_type() -> None:
    """The same mistake (ttl and expires_at) refused before proposing and at apply: one type, one
    shape, no conversion between them."""
    with pytest.raises(Refusal) as before:
        schema.put("k", {"value": 1, "ttl": 1, "expires_at": 5}, ApiLimits())
    with pytest.raises(Refusal) as encoding:
        encode(Command(SetKey("k", 1, ttl_ms=5, expires_at_ms=9)))
    applied = KVStateMachine().apply(
        1, T0, encode_command("set", key="k", value=1, ttl_ms=5, expires_at_ms=9)
    )
    for refusal in (before.value, encoding.value, applied):
        assert type(refusal) is Refusal
        assert (refusal.code, refusal.status) == (p.INVALID_REQUEST, 400)


def test_an_admission_check_and_its_apply_refuse_alike() -> None:
    """check_room (before proposing) and apply (authoritative) raise the one Refusal, equal by value."""
    sm = KVStateMachine()
    assert isinstance(sm.apply(1, T0, encode(Command(OpenSession(60_000, 10, 1)))), dict)
    full = Command(OpenSession(60_000, 10, 1))
    with pytest.raises(Refusal) as early:
        check_room(full, sm, T0)
    late = sm.apply(2, T0, encode(full))
    assert type(late) is Refusal and late.code == early.value.code == p.TOO_MANY_SESSIONS
    assert early.value.status == late.status == 429


def test_a_refusal_carries_code_status_message_and_fields() -> None:
    r = Refusal(p.VERSION_MISMATCH, "key 'a' is at version 3", key="a", version=3)
    assert (r.code, r.status, r.message) == (p.VERSION_MISMATCH, 409, "key 'a' is at version 3")
    assert r.fields == {"key": "a", "version": 3}
    assert str(r) == r.message and r == Refusal(p.VERSION_MISMATCH, r.message, key="a", version=3)
    assert Refusal("not_a_code", "?").status == 500
