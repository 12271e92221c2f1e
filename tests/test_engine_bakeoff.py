"""``scripts/engine_bakeoff.py`` at a tiny size: every importable engine fills, measures and restarts,
and really stores what it was given — a get returns the value written, a prefix scan returns only
keys with the prefix, sorted, the expiry query returns keys in expiry order — before and after its
restart. SQLite always runs; the others when their package is installed (``.[bakeoff]``).
Takes ~2 s, so it is in the normal fast suite."""

from __future__ import annotations

import dataclasses
import gc
import importlib.util
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import msgpack
import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("engine_bakeoff", ROOT / "scripts" / "engine_bakeoff.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["engine_bakeoff"] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


eb = _load()
KEYS = 2_000
SETTINGS = eb.Settings(keys=KEYS, step=1_000, batch=200, ckpt_every=3, seed=7)
AVAILABLE = [name for name in eb.ENGINES if not eb.missing_packages(name)]


@pytest.fixture(autouse=True)
def _unfreeze() -> Iterator[None]:
    yield
    gc.unfreeze()  # the in-memory control freezes the gc after each step


def _value(stored: Any) -> Any:
    value = stored[0]
    return msgpack.unpackb(value, raw=False) if isinstance(value, bytes) else value


def _check_contents(eng: Any, n: int) -> None:
    seed = SETTINGS.seed
    for i in (0, 1, n // 2, n - 1):
        key, value, version, expires, _ = eb.row_of(seed, i)
        got = eng.get(key)
        assert got is not None, (eng.name, key)
        assert _value(got) == msgpack.unpackb(value, raw=False)
        assert (got[1], got[2]) == (version, expires)
    assert eng.get("webhooks:stripe:evt_not-there") is None

    stored = {eb.key_of(seed, i) for i in range(n)}
    for prefix in (eb.SCAN_PREFIX, "webhooks:github:", "webhooks:"):
        want = sorted(k for k in stored if k.startswith(prefix))[: eb.SCAN_LIMIT]
        assert want, prefix
        assert eng.scan(prefix, eb.SCAN_LIMIT) == want, (eng.name, prefix)
    assert eng.scan("webhooks:nobody:", 10) == []

    # cluster time advances 1 ms per write: expiry order is write order
    all_due = eb.T0_MS + n + eb.TTL_MS
    assert eng.due(all_due, 50) == [eb.key_of(seed, i) for i in range(50)]
    assert eng.due(eb.T0_MS + 9 + eb.TTL_MS, 1000) == [eb.key_of(seed, i) for i in range(10)]
    assert eng.due(eb.T0_MS + eb.TTL_MS - 1, 1000) == []


@pytest.mark.parametrize("name", AVAILABLE)
def test_engine_fills_measures_and_really_stores(name: str, tmp_path: Path) -> None:
    on_disk = name in ("sqlite", "lmdb", "lmdb-nosync")
    eng = eb.open_engine(name, tmp_path, SETTINGS)
    steps: list[Any] = []
    try:
        n, capped, _ = eb.fill(eng, SETTINGS, steps.append)
        assert (n, capped) == (KEYS, "")
        assert [r.keys for r in steps] == [1_000, 2_000]
        for row in steps:
            assert row.engine == name
            assert {f.name for f in dataclasses.fields(row)} == {c[0] for c in eb.STEP_COLUMNS}
            assert row.insert_rate > 0 and row.batch_p99_ms > 0 and row.batch_max_ms >= row.batch_p99_ms
            assert row.rss_anon_mb > 0 and row.rss_file_mb > 0
            assert row.scan_us > 0 and row.due_us > 0 and row.get_us > 0
            assert (row.disk_mb is not None and row.disk_mb > 0) == on_disk
            assert (row.ckpt_max_ms is not None) == (name in ("sqlite", "lmdb-nosync"))
            assert (row.wal_mb is not None) == (name == "sqlite")
        _check_contents(eng, n)

        final = eb.finish(eng, SETTINGS, tmp_path, n, capped, 1.0, 10.0)
        assert final.engine == name and final.keys == KEYS
        assert final.copy_mb > 0 and final.restart_ms > 0
        assert (final.crash_restart_ms is not None) == on_disk
        assert set(dataclasses.asdict(final)) == {c[0] for c in eb.FINAL_COLUMNS}
        _check_contents(eng, n)  # after the restart: reopened, or rebuilt from the dump
    finally:
        eng.close()


def test_sqlite_queries_use_the_indexes(tmp_path: Path) -> None:
    eng = eb.SqliteEngine(tmp_path, SETTINGS)
    try:
        plans = eng.query_plans()
    finally:
        eng.close()
    assert "USING PRIMARY KEY" in plans["scan"], plans
    assert "USING COVERING INDEX kv_expiry" in plans["due"], plans
    assert "TEMP B-TREE" not in plans["scan"] + plans["due"], plans


def test_the_bisect_reference_stops_at_its_cap(tmp_path: Path) -> None:
    s = dataclasses.replace(SETTINGS, ref_keys=1_000)
    eng = eb.open_engine("bisect", tmp_path, s)
    steps: list[Any] = []
    n, capped, _ = eb.fill(eng, s, steps.append)
    assert n == 1_000 and "capped" in capped and [r.keys for r in steps] == [1_000]


def test_a_missing_package_is_skipped_with_how_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(eb.LmdbEngine, "needs", ("lmdb_not_installed_here",))
    assert eb.missing_packages("lmdb") == ["lmdb_not_installed_here"]
    assert eb.missing_packages("sqlite") == []
    assert eb.main(["--keys", "10", "--step", "10", "--engines", "lmdb"]) == 0
    out = capsys.readouterr().out
    assert "lmdb: skipped, lmdb_not_installed_here not installed" in out
    assert "pip install -e '.[bakeoff]'" in out


def test_one_run_prints_and_writes_the_table(tmp_path: Path) -> None:
    out = tmp_path / "table.md"
    engines = "sqlite,lmdb" if "lmdb" in AVAILABLE else "sqlite"
    cmd = [sys.executable, str(ROOT / "scripts" / "engine_bakeoff.py"), "--keys", "1000", "--step", "500"]
    cmd += ["--engines", engines, "--dir", str(tmp_path), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    text = out.read_text()
    assert "load average" in text and "nproc" in text
    rows = [line for line in text.splitlines() if line.startswith("| sqlite |")]
    assert len(rows) == 3, text  # two steps and the final row
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("raftstate-bakeoff-")], "temp stores left"
