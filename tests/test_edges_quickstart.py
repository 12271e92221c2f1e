"""Issue 19, item 7: the README's client snippet is examples/quickstart.py, and it runs against a
real cluster. Also on that cluster: an unknown route answers 404 ``unknown_endpoint``, and an https
client against the plain-http nodes says they do not speak TLS."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from raftstate.client import Client, ConnectFailed, Unavailable
from raftstate.client import protocol as p
from raftstate.node.ops.local_cluster import HttpError, LocalCluster, http

ROOT = Path(__file__).parents[1]
QUICKSTART = ROOT / "examples" / "quickstart.py"


def readme_snippet() -> list[str]:
    """The lines of the README's python block that names examples/quickstart.py."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    (block,) = [b for b in blocks if "examples/quickstart.py" in b]
    return [line for line in block.splitlines() if line.strip() and not line.startswith("# examples/")]


def test_the_readme_shows_the_file() -> None:
    """Every line the README shows is a line of the file, in the same order (the file only adds
    its argument parsing), so the snippet cannot drift from what the test below runs."""
    lines = iter(QUICKSTART.read_text().splitlines())
    for shown in readme_snippet():
        assert any(line == shown for line in lines), (
            f"README line not in {QUICKSTART.name} (in order): {shown!r}"
        )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path_factory.mktemp("quickstart"))
    c.start()
    c.wait_leader()
    yield c
    c.stop_all()


@pytest.mark.cluster
def test_the_quickstart_runs(cluster: LocalCluster) -> None:
    eps = ",".join(f"http://{cluster.addr[n]}" for n in cluster.ids)
    out = subprocess.run(
        [sys.executable, str(QUICKSTART), "--endpoints", eps], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "charging once" in out.stdout and "first creator: True" in out.stdout, out.stdout
    assert re.search(r"^processed: 101$", out.stdout, re.M), out.stdout


@pytest.mark.cluster
def test_an_unknown_route_is_404(cluster: LocalCluster) -> None:
    """An unknown path is 404; a known path with a method it does not take is 405 (issue 18)."""
    for method, path, status in (
        ("GET", "/v1/nope", 404),
        ("PATCH", "/v1/kv/a", 405),
        ("GET", "/v2/kv/a", 404),
    ):
        with pytest.raises(HttpError) as err:
            http(method, cluster.url(cluster.ids[0], path))
        assert err.value.status == status and err.value.code == p.UNKNOWN_ENDPOINT, err.value.body


@pytest.mark.cluster
def test_https_against_the_http_nodes_says_so(cluster: LocalCluster) -> None:
    with Client([f"https://{cluster.addr[n]}" for n in cluster.ids], timeout=10) as state:
        with pytest.raises(Unavailable) as err:
            state.get("k")
    assert "does not speak TLS" in str(err.value) and "WRONG_VERSION_NUMBER" not in str(err.value)
    assert isinstance(err.value.cause, ConnectFailed)
