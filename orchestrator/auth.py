"""Ray token authentication, decided before Ray is imported (Ray reads the mode once, then).

Joining a cluster by ``host:port`` (or ``RAY_ADDRESS``), Ray sends its token only when
``RAY_AUTH_MODE=token``, and a driver in token mode cannot run work on a cluster without
authentication (the cluster's workers cannot call back into it). So, unless the user set
``RAY_AUTH_MODE``, the driver asks the cluster once, from a short-lived process, whether it
checks tokens, and takes the token where Ray keeps it (``RAY_AUTH_TOKEN``,
``RAY_AUTH_TOKEN_PATH``, ``~/.ray/auth_token``) when it does.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

TOKEN_HELP = ("copy the head node's ~/.ray/auth_token to this machine (or set RAY_AUTH_TOKEN=<token>, or "
              "RAY_AUTH_TOKEN_PATH=<file>); `ray get-auth-token` on the head node prints it")

_PROBE = """
import os, sys
os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
from ray._raylet import GcsClient
from ray.exceptions import AuthenticationError
try:
    GcsClient(address=sys.argv[1])
    print("open")
except AuthenticationError:
    print("token")
except Exception:
    print("unknown")
"""


def token_available() -> bool:
    if os.environ.get("RAY_AUTH_TOKEN"):
        return True
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token")
    return os.path.isfile(path) and os.path.getsize(path) > 0


def check_reachable(address: str, config_error, source: str | None = None, timeout_s: float = 5.0) -> None:
    """Fail fast, with one line, on a host:port nobody answers or a host name that does not
    resolve (Ray's clients retry for 30 s and more before they give up)."""
    hostport = address.split("://", 1)[-1]
    if address == "auto" or ":" not in hostport:
        return
    host, _, port = hostport.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except (OSError, ValueError) as exc:
        raise config_error(f"{source or 'cluster.address'} = {address!r}: cannot connect ({exc})") from None


def cluster_mode(address: str, timeout_s: float = 30.0) -> str:
    """'token' (the cluster checks tokens), 'open' (it does not) or 'unknown', asked once."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    try:
        out = subprocess.run([sys.executable, "-c", _PROBE, address], env=env, capture_output=True, text=True,
                             timeout=timeout_s)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (out.stdout.strip().splitlines() or ["unknown"])[-1]


def prepare(address: str | None, config_error, source: str | None = None) -> None:
    """Set RAY_AUTH_MODE for joining ``address`` (None: a private local cluster, which Ray sets
    up with a token of its own). Raises config_error (one line) when nothing answers at the
    address, or when the cluster needs a token we lack."""
    if address is None:
        return
    check_reachable(address, config_error, source)
    if "RAY_AUTH_MODE" in os.environ or address == "auto" or "://" in address:
        return  # the user's choice; Ray's own way for an auto-found cluster; Ray Client
    if cluster_mode(address) != "token":
        return
    if not token_available():
        raise config_error(f"the Ray cluster at {address} requires an auth token and none was found here: {TOKEN_HELP}")
    os.environ["RAY_AUTH_MODE"] = "token"
    if "ray" in sys.modules:  # imported already (a library caller): Ray reads the mode again
        try:
            from ray._raylet import AuthenticationTokenLoader, Config

            Config.initialize("")
            AuthenticationTokenLoader.instance().reset_cache()
        except (ImportError, AttributeError):
            pass
