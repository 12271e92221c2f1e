"""Tools users run from an install: ``raftstate chaos`` (also ``python -m raftstate.node.chaos`` and
the checkout's scripts/chaos.py) and the simulator (``python -m raftstate.node.sim`` and
scripts/simulate.py) — each one command with one parser, however it is started."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RAFTSTATE = shutil.which("raftstate", path=str(Path(sys.executable).parent)) or "raftstate"

WAYS = {
    "installed command": [RAFTSTATE, "chaos"],
    "python -m": [sys.executable, "-m", "raftstate.node.chaos"],
    "checkout script": [sys.executable, str(ROOT / "scripts" / "chaos.py")],
}


@pytest.mark.parametrize("way", sorted(WAYS))
def test_every_way_reaches_the_same_parser(way: str) -> None:
    out = subprocess.run([*WAYS[way], "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "usage: raftstate chaos" in out.stdout and "--inject-bug" in out.stdout


@pytest.mark.parametrize("way", sorted(WAYS))
def test_every_way_refuses_an_unknown_fault(way: str) -> None:
    out = subprocess.run([*WAYS[way], "--faults", "kill,typo"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "unknown fault 'typo'" in out.stderr, out.stderr


def test_chaos_is_listed_in_the_cli_help() -> None:
    out = subprocess.run([RAFTSTATE, "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "chaos" in out.stdout, out.stderr


SIM_WAYS = {
    "python -m": [sys.executable, "-m", "raftstate.node.sim"],
    "checkout script": [sys.executable, str(ROOT / "scripts" / "simulate.py")],
}


@pytest.mark.parametrize("way", sorted(SIM_WAYS))
def test_the_simulator_runs_from_the_install_and_the_checkout(way: str) -> None:
    """The simulator ships with the core (like etcd's rafttest): one seed replays either way."""
    args = ["--seed", "3", "--steps", "300", "--mix", "crash"]
    out = subprocess.run([*SIM_WAYS[way], *args], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "seed 3 passed" in out.stdout, out.stderr
    bad = subprocess.run([*SIM_WAYS[way], "--mutant", "nope"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr, bad.stderr
