"""Ray clusters: start a private one or join one (token authentication as Ray sets it up), say
which, and tell what it offers.

* ``cluster.address`` null (and no ``RAY_ADDRESS``): a private local cluster
  (``address="local"``): never a cluster nobody pointed the sweep at.
* ``auto``, ``host:port``, ``ray://...`` or ``RAY_ADDRESS``: join that cluster. A cluster that
  checks tokens gets the one where Ray keeps it (``auth.py`` decides before Ray is imported); a
  rejected token is one line, within a second.
* Ray's own messages go to the run's log file, not the terminal (``cluster.verbose=true`` shows them).
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field

import ray

from orchestrator.auth import TOKEN_HELP, check_reachable, token_available
from orchestrator.config import ConfigError
from tasks.stderr import captured_fd2

log = logging.getLogger(__name__)


class ClusterError(ConfigError):
    """The cluster cannot run this sweep: one line, exit 2, before any cell runs."""


def check_token(address: str) -> None:
    """Ask the cluster's GCS once whether it takes our token (ray.init would retry 20 times)."""
    if address == "auto" or "://" in address:
        return
    try:
        from ray._raylet import GcsClient
        from ray.exceptions import AuthenticationError
    except ImportError:  # another Ray: ray.init will say it
        return
    with captured_fd2():  # Ray's C++ core writes its retries straight to fd 2: off the terminal
        try:
            GcsClient(address=address)
        except AuthenticationError:
            mode = os.environ.get("RAY_AUTH_MODE", "unset")
            have = "no token was found" if not token_available() else "its token differs from ours"
            raise ClusterError(f"the Ray cluster at {address} requires an auth token and {have} "
                               f"(RAY_AUTH_MODE={mode}): {TOKEN_HELP}") from None
        except Exception:  # noqa: BLE001 - anything else: ray.init gives the real reason
            return


def _ray_logging(verbose: bool) -> dict:
    if verbose:
        return {"logging_level": logging.INFO}
    ray_log = logging.getLogger("ray")
    ray_log.propagate, ray_log.level = True, logging.INFO  # into the run's log file (Hydra's root handler)
    root = logging.getLogger()
    if not root.handlers:  # no log file here: keep Ray's lines off the terminal all the same
        root.addHandler(logging.NullHandler())
    return {"configure_logging": False, "log_to_driver": False}


def connect(c, prestart_workers: bool = False) -> str:
    """Join the configured cluster, or start a private local one; returns a line saying which."""
    address = c.address or os.environ.get("RAY_ADDRESS")
    if ray.is_initialized():
        return "using the Ray cluster this process is already connected to"
    name = "cluster.address" if c.address else "RAY_ADDRESS"
    source = f"{name} = {address!r}"
    kw = {"include_dashboard": False, **_ray_logging(c.verbose), **dict(c.init)}
    if address:
        check_reachable(address, ClusterError, name)  # the CLI asked already (auth.prepare); a library caller not
        check_token(address)
        os.environ.setdefault("RAY_gcs_server_port_wait_time_s", "5")
        try:
            with captured_fd2() if not c.verbose else contextlib.nullcontext():  # Ray's retries
                ray.init(address=address, **kw)
        except Exception as exc:  # unreachable address, no cluster running, version skew, a token
            text = f"{exc} {exc.__cause__ or ''}"
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            why = TOKEN_HELP if "InvalidAuthToken" in text else first
            raise ClusterError(f"{source}: cannot connect ({why})") from None
        return f"joined the Ray cluster at {address} ({source})"
    system = dict(kw.get("_system_config") or {})
    system.setdefault("worker_niceness", 0)  # Ray's default, 15, lets any busy process starve a cell
    if not prestart_workers:
        system.setdefault("prestart_worker_first_driver", False)
    kw["_system_config"] = system
    ray.init(address="local", num_cpus=c.num_cpus, num_gpus=c.num_gpus, **kw)
    _watch_private_cluster()
    return "started a private Ray cluster on this machine (cluster.address=auto or host:port joins one)"


# A private cluster's raylet and GCS go when the driver dies, whatever killed it; its dashboard and
# runtime-env agents did not (SIGKILL to the driver left them running, re-parented, for good). A
# small process watches the driver through a pipe and, if the pipe ends without a word (the driver
# died), kills what is left of that cluster: this user's processes writing to files in its session
# folder (each of its processes writes its log there; a `tail -f` of one only reads).
_REAPER = r"""
import os, signal, sys, time
if sys.stdin.buffer.read() == b"done":
    sys.exit(0)
time.sleep(2.0)
root, me, mine = sys.argv[1].rstrip("/") + "/", os.getuid(), str(os.getpid())


def writing(pid, fd):
    with open("/proc/%s/fdinfo/%s" % (pid, fd)) as f:
        flags = next(int(line.split()[1], 8) for line in f if line.startswith("flags:"))
    return flags & 3 != 0  # O_WRONLY or O_RDWR


def holds(pid):
    fds = "/proc/%s/fd/" % pid
    for fd in os.listdir(fds):
        try:
            if os.readlink(fds + fd).startswith(root) and writing(pid, fd):
                return True
        except (OSError, StopIteration, ValueError):
            pass
    return False


for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        if pid != mine and os.stat("/proc/" + pid).st_uid == me and holds(pid):
            os.kill(int(pid), signal.SIGKILL)
    except OSError:
        pass
"""
_reaper: subprocess.Popen | None = None


def _watch_private_cluster() -> None:
    global _reaper
    if not os.path.isdir("/proc"):  # not Linux: no open files to read
        return
    try:
        socket_path = next(n["RayletSocketName"] for n in ray.nodes() if n.get("Alive"))
        session = os.path.dirname(os.path.dirname(socket_path))  # .../session_DATE_PID/sockets/raylet
        if not os.path.basename(session).startswith("session_"):
            raise ValueError(f"not a session folder: {session}")
        session = os.path.realpath(session)  # /proc names open files by their real paths
        _reaper = subprocess.Popen([sys.executable, "-I", "-S", "-c", _REAPER, session], stdin=subprocess.PIPE,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    except Exception as exc:  # noqa: BLE001 - a watcher that cannot start changes nothing else
        log.debug("no watcher for the private cluster (%s: %s)", type(exc).__name__, exc)


def _release_watch() -> None:
    """The cluster went down with the driver alive: the watcher leaves without looking."""
    global _reaper
    if _reaper is not None:
        with contextlib.suppress(OSError, ValueError):
            _reaper.stdin.write(b"done")
            _reaper.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            _reaper.wait(2.0)
        _reaper = None


@dataclass
class Resources:
    """What the cluster offers: GPUs by accelerator type ("any" counts all), CPUs, nodes."""

    gpus: dict[str, int] = field(default_factory=dict)
    cpus: float = 0.0
    nodes: int = 0

    @property
    def default_target(self) -> str:
        types = [t for t in self.gpus if t != "any"]
        if not self.gpus.get("any"):
            return "cpu"
        return types[0] if len(types) == 1 else "any"

    def line(self) -> str:
        gpus = ", ".join(f"{n} {t}" for t, n in self.gpus.items() if t != "any") or str(self.gpus.get("any", 0))
        return f"{self.nodes} node(s), {self.cpus:g} CPUs, GPUs: {gpus}"


def resources() -> Resources:
    r = Resources()
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        r.nodes += 1
        res = node["Resources"]
        r.cpus += res.get("CPU", 0)
        n = int(res.get("GPU", 0))
        if n:
            r.gpus["any"] = r.gpus.get("any", 0) + n
            for key in res:
                if key.startswith("accelerator_type:"):
                    t = key.split(":", 1)[1]
                    r.gpus[t] = r.gpus.get(t, 0) + n
    return r


def shutdown() -> None:
    """ray.shutdown(); a private cluster's helper processes are stopped first, all at once. Ray
    stops its processes one after another and gives each a second to go on SIGTERM, which the
    autoscaler's monitor takes in full: 1 s of every sweep's end."""
    if ray.is_initialized():
        _stop_helpers()
        ray.shutdown()
    _release_watch()


def _stop_helpers(grace_s: float = 0.5) -> None:
    """SIGKILL to the autoscaler's monitor (on SIGTERM it reports itself failed, on the terminal),
    SIGTERM to the log monitor and the dashboard, of the cluster this process started (none for
    a joined one); SIGKILL to those still there after grace_s. The raylet and the GCS are left to
    ray.shutdown, which stops them after the driver has disconnected."""
    node = getattr(ray._private.worker, "_global_node", None)
    if node is None or not node.is_head():
        return
    procs = [(kind, i.process) for kind in ("monitor", "log_monitor", "dashboard")
             for i in getattr(node, "all_processes", {}).get(kind, [])]
    for kind, p in procs:
        with contextlib.suppress(OSError):
            p.kill() if kind == "monitor" else p.terminate()
    deadline = time.monotonic() + grace_s
    for _, p in procs:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError):
                p.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(2.0)


def kill_own_ray_processes() -> None:
    """Ray processes this process started (a cluster whose start was interrupted): killed."""
    import psutil

    for p in psutil.Process().children(recursive=True):
        try:
            if "ray" in " ".join(p.cmdline()).lower():
                p.kill()
        except psutil.Error:
            pass
