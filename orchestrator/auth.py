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


def cluster_mode(address: str, timeout_s: float = 30.0) -> str:
    """'token' (the cluster checks tokens), 'open' (it does not) or 'unknown', asked once."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    try:
        out = subprocess.run([sys.executable, "-c", _PROBE, address], env=env, capture_output=True, text=True,
                             timeout=timeout_s)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (out.stdout.strip().splitlines() or ["unknown"])[-1]


def prepare(address: str | None, config_error) -> None:
    """Set RAY_AUTH_MODE for joining ``address`` (None: a private local cluster, which Ray sets
    up with a token itself). Raises config_error (one line) when the cluster needs a token we lack."""
    if "RAY_AUTH_MODE" in os.environ:
        return  # the user's choice
    if address is None:
        if token_available():
            os.environ["RAY_AUTH_MODE"] = "token"  # what Ray does anyway, without its warning
        return
    if address == "auto" or "://" in address:
        return  # Ray finds the local cluster's token itself; Ray Client has its own channel
    mode = cluster_mode(address)
    if mode == "token":
        if not token_available():
            raise config_error(f"{address}: the cluster requires a Ray auth token and none was found here: "
                               + TOKEN_HELP)
        os.environ["RAY_AUTH_MODE"] = "token"
