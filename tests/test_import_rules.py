"""The import rules of docs/architecture.md, enforced: dependencies point one way.

    client/   ──HTTP──▶   node/   ──drives──▶   raft/

- raft/ (and its test kit, raft/testing) imports nothing of ours but raft/; the simulator
  (node/sim) drives only raft/;
- client/ imports nothing of node/ or raft/ (workers install it beside their own code);
- node/state/ (the replicated state machine) imports only itself, node/errors.py and
  client/protocol.py — it must stay as pure as the Raft core;
- node/storage/ imports only raft/, node/errors.py and itself; node/runtime/ only raft/, the
  driver, node/state/ and node/errors.py; node/peers/ and node/ops/ never import node/api/;
  node/chaos/ only the public client, node/ops/, node/bench/ and the test hooks;
- node/ imports only client's public modules (never ``raftstate.client._x``);
- nothing in node/ but the CLI imports node/chaos/ (a tool that drives a cluster from outside);
- scripts/ never import tests/ (what they share lives in the installed package).

Each rule is checked on the parsed source (``import`` statements anywhere in a module, also inside
functions and ``TYPE_CHECKING`` blocks), and each rule is shown to catch a made-up violation.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FOLDER_OF = {"raft": "raftstate.raft", "node": "raftstate.node", "client": "raftstate.client"}
#: modules of tests/ that a script might be tempted to import (tests/ is not a package)
TEST_MODULES = {p.stem for p in (ROOT / "tests").glob("*.py")}


@dataclass(frozen=True, slots=True)
class Rule:
    """Modules under ``scope`` may import of ours only modules under one of ``allowed``."""

    name: str
    scope: str
    allowed: tuple[str, ...]
    except_scope: tuple[str, ...] = ()

    def applies_to(self, module: str) -> bool:
        return _under(module, self.scope) and not any(_under(module, s) for s in self.except_scope)

    def permits(self, imported: str) -> bool:
        return any(_under(imported, a) for a in self.allowed)


RULES: tuple[Rule, ...] = (
    Rule("raft/ imports nothing of ours", "raftstate.raft", ("raftstate.raft",)),
    Rule("client/ imports nothing of node/ or raft/", "raftstate.client", ("raftstate.client",)),
    Rule(
        "node/sim/ (the simulator) drives only the pure core and its test kit",
        "raftstate.node.sim",
        ("raftstate.node.sim", "raftstate.raft"),
    ),
    Rule(
        "node/state/ imports only itself, node/errors.py and client/protocol.py",
        "raftstate.node.state",
        ("raftstate.node.state", "raftstate.node.errors", "raftstate.client.protocol"),
    ),
    Rule(
        "node/storage/ imports only raft/, node/errors.py and itself",
        "raftstate.node.storage",
        ("raftstate.node.storage", "raftstate.node.errors", "raftstate.raft"),
    ),
    Rule(
        "node/runtime/ imports only raft/, the driver, node/state/, node/errors.py and itself",
        "raftstate.node.runtime",
        (
            "raftstate.node.runtime",
            "raftstate.node.driver",
            "raftstate.node.state",
            "raftstate.node.errors",
            "raftstate.raft",
        ),
    ),
    Rule(
        "node/peers/ never imports the client API (node/api/) or the chaos runner",
        "raftstate.node.peers",
        (
            "raftstate.node.peers",
            "raftstate.node.config",
            "raftstate.node.metrics",
            "raftstate.node.errors",
            "raftstate.node.storage",
            "raftstate.node.security",
            "raftstate.node.ops",
            "raftstate.raft",
            "raftstate.client",
        ),
    ),
    Rule(
        "node/ops/ never imports the client API (node/api/) or the chaos runner",
        "raftstate.node.ops",
        (
            "raftstate.node.ops",
            "raftstate.node.config",
            "raftstate.node.errors",
            "raftstate.node.peers",
            "raftstate.node.security",
            "raftstate.node.state",
            "raftstate.node.storage",
            "raftstate.raft",
            "raftstate.client",
        ),
    ),
    Rule(
        "node/chaos/ drives a cluster from outside: the public client, node/ops/, the bench's load "
        "generator and the test hooks",
        "raftstate.node.chaos",
        (
            "raftstate.node.chaos",
            "raftstate.node.ops",
            "raftstate.node.bench",
            "raftstate.node.test_hooks",
            "raftstate.client",
        ),
    ),
)


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def module_name(path: Path) -> str:
    """The installed name of a source file under raft/, node/ or client/."""
    rel = path.relative_to(ROOT)
    parts = [FOLDER_OF[rel.parts[0]], *rel.with_suffix("").parts[1:]]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(source: str) -> Iterator[str]:
    """Every module an ``import``/``from ... import`` statement loads: for ``from pkg import name``
    that is ``pkg.name`` when it is a module of ours (``from raftstate.client import _stream``),
    else ``pkg`` itself."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                yield sub if _is_module(sub) else node.module


def _ours(name: str) -> bool:
    return _under(name, "raftstate")


def _is_module(name: str) -> bool:
    """Does ``name`` name a module or package of ours (not a class or function in one)?"""
    parts = name.split(".")
    if parts[0] != "raftstate" or len(parts) < 2 or parts[1] not in ("raft", "node", "client"):
        return False
    base = ROOT / parts[1]
    rest = parts[2:]
    return (base.joinpath(*rest).with_suffix(".py")).exists() or base.joinpath(*rest).is_dir()


def violations(module: str, source: str) -> list[str]:
    found: list[str] = []
    for imported in imports_of(source):
        if not _ours(imported):
            continue
        for rule in RULES:
            if rule.applies_to(module) and not rule.permits(imported):
                found.append(f"{module} imports {imported}: {rule.name}")
        if _under(module, "raftstate.node"):
            private = [p for p in imported.split(".")[2:] if p.startswith("_") and p != "__init__"]
            if _under(imported, "raftstate.client") and private:
                found.append(f"{module} imports {imported}: node/ uses only client's public modules")
            if (
                _under(imported, "raftstate.node.chaos")
                and not _under(module, "raftstate.node.chaos")
                and module != "raftstate.node.cli"
            ):
                found.append(f"{module} imports {imported}: only the CLI may import node/chaos/")
    return found


def script_violations(path: Path, source: str) -> list[str]:
    tops = {name.split(".")[0] for name in imports_of(source)}
    found = [
        f"{path.name} imports {top}: scripts/ never import tests/"
        for top in sorted(tops)
        if top in TEST_MODULES or top in ("tests", "conftest")
    ]
    if "sys.path" in source:
        found.append(f"{path.name} changes sys.path: scripts import only the installed package")
    return found


def _sources(*folders: str) -> Iterator[Path]:
    for folder in folders:
        yield from sorted((ROOT / folder).rglob("*.py"))


def test_every_package_keeps_its_import_rules() -> None:
    sources = _sources("raft", "node", "client")
    found = [v for path in sources for v in violations(module_name(path), path.read_text())]
    assert not found, "\n".join(found)


#: what would let the core read a clock, draw global randomness or do I/O: raft/ takes time,
#: randomness and messages as inputs (a seeded simulator replays any run)
IMPURE: frozenset[str] = frozenset(
    {"time", "random", "os", "socket", "asyncio", "threading", "subprocess", "io", "pathlib", "datetime",
     "select", "selectors", "signal", "shutil", "tempfile", "logging", "secrets", "uuid"}
)


def impure_imports(source: str) -> list[str]:
    return sorted({name.split(".")[0] for name in imports_of(source)} & IMPURE)


def test_raft_reads_no_clock_no_randomness_and_does_no_io() -> None:
    found = [f"{p.relative_to(ROOT)}: {impure_imports(p.read_text())}" for p in _sources("raft")]
    found = [f for f in found if not f.endswith(": []")]
    assert not found, "raft/ imports clocks, randomness or I/O:\n" + "\n".join(found)
    assert impure_imports("import time\nfrom random import Random\n") == ["random", "time"]


def test_scripts_never_import_tests() -> None:
    found = [v for path in _sources("scripts") for v in script_violations(path, path.read_text())]
    assert not found, "\n".join(found)


def test_every_package_states_its_job_and_imports() -> None:
    """Each package's __init__ docstring says its job and what it may import."""
    missing = []
    for init in _sources("node"):
        if init.name != "__init__.py" or init.parent == ROOT / "node":
            continue
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        if len(doc) < 80 or "import" not in doc:
            missing.append(str(init.relative_to(ROOT)))
    assert not missing, f"package docstrings that do not state their job and imports: {missing}"


# ---------------------------------------------------------------- each rule catches a violation


@pytest.mark.parametrize(
    ("module", "source", "expect"),
    [
        ("raftstate.raft.core", "from raftstate.node.driver import RaftDriver", "raft/ imports nothing"),
        ("raftstate.raft.testing.driver", "import raftstate.client.protocol", "raft/ imports nothing"),
        ("raftstate.node.sim.cluster", "from raftstate.node.driver import RaftDriver", "node/sim/"),
        ("raftstate.client.async_client", "from raftstate.node.state import machine", "client/ imports"),
        ("raftstate.client.cli", "from raftstate.raft import RaftNode", "client/ imports"),
        ("raftstate.node.state.keys", "from raftstate.node.driver import RaftDriver", "node/state/"),
        ("raftstate.node.state.machine", "from raftstate.raft.messages import Entry", "node/state/"),
        ("raftstate.node.state.locks", "from raftstate.client import errors", "node/state/"),
        ("raftstate.node.storage.store", "from raftstate.node.api import codec", "node/storage/"),
        ("raftstate.node.runtime.sweeper", "from raftstate.node.api.handlers import Api", "node/runtime/"),
        ("raftstate.node.peers.membership", "from raftstate.node.api.codec import respond", "node/peers/"),
        ("raftstate.node.ops.cli", "from raftstate.node.api import handlers", "node/ops/"),
        ("raftstate.node.chaos.run", "from raftstate.node.driver import RaftDriver", "node/chaos/"),
        ("raftstate.node.api.handlers", "from raftstate.client._transport import Request", "public"),
        ("raftstate.node.api.handlers", "from raftstate.client import _transport", "public"),
        ("raftstate.node.server", "from raftstate.node.chaos.run import run", "only the CLI"),
    ],
)
def test_each_rule_catches_a_violation(module: str, source: str, expect: str) -> None:
    found = violations(module, source)
    assert found and expect in found[0], found


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("raftstate.node.state.machine", "from raftstate.client import protocol as p"),
        ("raftstate.node.state.machine", "from raftstate.node.state.keys import KeyStore"),
        ("raftstate.node.api.handlers", "from raftstate.client import protocol"),
        ("raftstate.node.cli", "from raftstate.node.chaos.run import run"),
        ("raftstate.node.sim.cluster", "from raftstate.raft import RaftNode"),
        ("raftstate.node.sim.cluster", "from raftstate.raft.testing import MemDisk"),
    ],
)
def test_allowed_imports_pass(module: str, source: str) -> None:
    assert violations(module, source) == []


def test_script_rule_catches_a_violation() -> None:
    bad = 'import sys\nsys.path.insert(0, "tests")\nfrom raftnet import Net\n'
    found = script_violations(Path("scripts/x.py"), bad)
    assert len(found) == 2 and "sys.path" in found[1], found
    assert script_violations(Path("scripts/x.py"), "from raftstate.client import Client\n") == []
