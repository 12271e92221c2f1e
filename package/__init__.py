"""raftstate: a Raft-replicated store for the durable state of background jobs.

``raftstate.client`` is what workers import; ``raftstate.node`` runs a node; ``raftstate.raft`` is
the consensus core. The version comes from the installed package's metadata (pyproject.toml), so
``raftstate --version``, ``raftstate.__version__`` and pip agree.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__: str = version("raftstate")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
