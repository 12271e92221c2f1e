"""The chaos runner is a feature users run from an install: ``raftstate chaos``, ``python -m
raftstate.node.chaos`` and the checkout's scripts/chaos.py are one command with one parser."""

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
