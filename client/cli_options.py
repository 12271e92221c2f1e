"""What every ``raftstate`` command shares: the options that say which cluster to talk to, their
environment variables, the exit codes, and a parser that suggests the command you meant.

One parent parser (:func:`cluster_options`) gives every command that talks to a cluster the same
``--endpoints/--config/--token/--ca/--json/--timeout``; each option falls back to its environment
variable. Where a command finds the cluster, first match wins:

    --endpoints URL,...   --config FILE   $RAFTSTATE_ENDPOINTS   $RAFTSTATE_CONFIG   ./cluster.yaml

A command module registers a command with :func:`client_command` (client commands: the handler
gets a connected :class:`Client`) or adds a parser with ``parents=[cluster_options()]``.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, NoReturn, TypeAlias

if TYPE_CHECKING:
    from raftstate.client.sync_client import Client

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_CONFIG",
    "ENDPOINTS_ENV",
    "EXIT_CLUSTER",
    "EXIT_CODES_HELP",
    "EXIT_LOCK_LOST",
    "EXIT_NO",
    "EXIT_OK",
    "EXIT_USAGE",
    "TIMEOUT_ENV",
    "CliParser",
    "Subparsers",
    "Target",
    "client_command",
    "cluster_options",
    "no_cluster_file_hint",
    "target_of",
    "timeout_of",
]

DEFAULT_CONFIG: Final = "cluster.yaml"
ENDPOINTS_ENV: Final = "RAFTSTATE_ENDPOINTS"
CONFIG_ENV: Final = "RAFTSTATE_CONFIG"
TIMEOUT_ENV: Final = "RAFTSTATE_TIMEOUT"
# RAFTSTATE_TOKEN (client/config.py) and RAFTSTATE_CA (node/security/node_access.py) are read where
# the token and the CA are used, so the library and the operator tools agree with the CLI.
_TOKEN_ENV, _CA_ENV = "RAFTSTATE_TOKEN", "RAFTSTATE_CA"

#: exit codes of every command (``raftstate node`` has its own, in its help)
EXIT_OK, EXIT_NO, EXIT_USAGE, EXIT_CLUSTER, EXIT_LOCK_LOST = 0, 1, 2, 3, 4

EXIT_CODES_HELP: Final = """\
exit codes:
  0  done
  1  done, and the answer is no: no such key, condition not met (--if-absent, --if-version),
     a request the cluster refused (e.g. member exists), a backup file that fails its check
  2  usage or configuration error: bad option, missing or invalid cluster file or endpoints
  3  the cluster could not answer: nothing listening, no leader, timed out, outcome unknown
  4  lock --run: the lock was lost while the command ran (it was terminated)
  lock --run CMD otherwise exits with CMD's code (127 if CMD cannot be started)

environment:
  RAFTSTATE_ENDPOINTS  node URLs when neither --endpoints nor --config is given
  RAFTSTATE_CONFIG     the cluster file when neither --endpoints nor --config is given
  RAFTSTATE_TOKEN      --token      RAFTSTATE_CA  --ca      RAFTSTATE_TIMEOUT  --timeout"""


class CliParser(argparse.ArgumentParser):
    """An argparse parser whose "invalid choice" error says which choice was probably meant
    (``raftstate stauts`` -> did you mean 'status'?), like the cluster file's errors do."""

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        choices = action.choices
        if choices is not None and isinstance(value, str) and value not in choices:
            names = [str(c) for c in choices]
            close = difflib.get_close_matches(value, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise argparse.ArgumentError(
                action, f"invalid choice: {value!r}{hint} (choose from {', '.join(names)})"
            )
        super()._check_value(action, value)

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


#: the subcommands of a ``raftstate`` parser, whatever its parser class (a string: not subscriptable
#: at run time)
Subparsers: TypeAlias = "argparse._SubParsersAction[Any]"


def cluster_options(default_timeout: str = "10") -> CliParser:
    """The parent parser of every command that talks to a cluster. ``--timeout`` defaults to None
    (then $RAFTSTATE_TIMEOUT, then the command's own default, named in ``default_timeout``)."""
    common = CliParser(add_help=False)
    # One group would be tidier in --help, but argparse loses a mutually exclusive group's place in
    # an argument group copied from a parent: every option stays under "options".
    g = common
    where = g.add_mutually_exclusive_group()
    where.add_argument(
        "--endpoints",
        metavar="URL,...",
        help=f"comma-separated node URLs or host:port, any members (default ${ENDPOINTS_ENV})",
    )
    where.add_argument(
        "--config",
        metavar="FILE",
        help=f"cluster file listing the nodes (default ${CONFIG_ENV}, else ./{DEFAULT_CONFIG})",
    )
    g.add_argument("--token", help=f"auth token when auth is on (default ${_TOKEN_ENV})")
    g.add_argument(
        "--ca", metavar="FILE", help=f"CA file to trust for https nodes (default ${_CA_ENV}, or tls.ca)"
    )
    g.add_argument("--json", action="store_true", help="machine-readable JSON output")
    g.add_argument(
        "--timeout",
        type=_seconds,
        metavar="SECONDS",
        help=f"how long to wait for the cluster (default ${TIMEOUT_ENV}, else {default_timeout})",
    )
    return common


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def timeout_of(args: argparse.Namespace, default: float) -> float:
    """``--timeout``, else $RAFTSTATE_TIMEOUT, else ``default`` (a bad variable is a usage error)."""
    if getattr(args, "timeout", None):
        return float(args.timeout)
    env = os.environ.get(TIMEOUT_ENV)
    if env:
        try:
            return _seconds(env)
        except argparse.ArgumentTypeError as exc:
            raise UsageError(f"${TIMEOUT_ENV}: {exc}") from None
    return default


class UsageError(Exception):
    """A bad option value found after parsing (an environment variable): exit 2 with this message."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where a command finds the cluster: ``endpoints`` (node URLs or host:port), or else ``config``
    (a cluster file path); ``source`` says which option or variable named it, for error messages."""

    endpoints: list[str] | None
    config: str | None
    source: str


def target_of(args: argparse.Namespace) -> Target:
    if getattr(args, "endpoints", None):
        return Target(_split(args.endpoints, "--endpoints"), None, "--endpoints")
    if getattr(args, "config", None):
        return Target(None, args.config, "--config")
    if os.environ.get(ENDPOINTS_ENV, "").strip():
        return Target(_split(os.environ[ENDPOINTS_ENV], f"${ENDPOINTS_ENV}"), None, f"${ENDPOINTS_ENV}")
    if os.environ.get(CONFIG_ENV, "").strip():
        return Target(None, os.environ[CONFIG_ENV], f"${CONFIG_ENV}")
    return Target(None, DEFAULT_CONFIG, "the default")


def _split(text: str, source: str) -> list[str]:
    eps = [e.strip() for e in text.split(",") if e.strip()]
    if not eps:
        raise UsageError(
            f"{source} is empty; give node URLs like http://127.0.0.1:7001,http://127.0.0.1:7002"
        )
    return eps


def no_cluster_file_hint(path: str) -> str:
    """What to do when the cluster file is missing (a pip install has none)."""
    return (
        f"no cluster file at {path}; pass --config FILE or --endpoints URL,... (or set "
        f"${CONFIG_ENV} / ${ENDPOINTS_ENV}); no cluster yet? `raftstate cluster up --dev` starts a "
        "local one, `raftstate init` writes a cluster.yaml"
    )


ClientHandler = Callable[[argparse.Namespace, "Client"], int]


def client_command(
    subparsers: Subparsers,
    name: str,
    help_: str,
    handler: ClientHandler,
) -> argparse.ArgumentParser:
    """Add one client command (``raftstate NAME``): the shared cluster options, the exit codes in its
    help; ``handler(args, client)`` runs with a connected client and returns the exit code."""
    sp: argparse.ArgumentParser = subparsers.add_parser(
        name,
        help=help_,
        description=help_,
        parents=[cluster_options()],
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sp.set_defaults(client_handler=handler)  # run by raftstate.client.cli.run_client_command
    return sp
