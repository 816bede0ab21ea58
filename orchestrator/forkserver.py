"""A fork server: a clean process (no Ray threads, no CUDA) that imports torch and the cell
code once, then forks a fresh child per request, in a small fraction of what starting Python
and importing torch costs; each child starts its own CUDA context.

Why not ``multiprocessing``'s forkserver: that one belongs to the process that starts it. This
one listens on a unix socket, so the driver can start it *before* Ray (its imports, about
10 s on an H100 machine, overlap Ray's start) and a device actor on the same host connects to
it; an actor on another host starts its own. The server dies with whoever started it (its
stdin closes, or SIGTERM when that process dies, even by SIGKILL) and removes its socket and
folder; its children die with it (``PR_SET_PDEATHSIG``). ``stop`` kills it and removes them.

Protocol, per client connection: the client sends ``(module, function)`` with one file
descriptor (the child's end of a socket pair); the server forks, the child calls
``module.function(fd)``, and the server answers ``("forked", pid)``; later it sends
``("exit", pid, code)`` when that child ends (code < 0: killed by that signal).
No Ray here.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import importlib
import os
import pickle
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
from multiprocessing import reduction

PRELOAD = ["tasks.preload"]  # torch, the cell code, and what cells import lazily
EARLY_LOG = "early.log"  # where an early server writes until it is told the run's log
_early: tuple[str, subprocess.Popen] | None = None


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Linux: send this process `sig` when its parent goes, so no orphan holds a GPU."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, sig)  # PR_SET_PDEATHSIG


def _send(sock: socket.socket, obj, fds=()) -> None:
    data = pickle.dumps(obj)
    sock.sendall(struct.pack("!I", len(data)) + data)
    if fds:
        reduction.sendfds(sock, list(fds))


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


def _recv(sock: socket.socket):
    (n,) = struct.unpack("!I", _recv_exact(sock, 4))
    return pickle.loads(_recv_exact(sock, n))


# ----------------------------------------------------------------------------- the server


def _child(listener, clients, request, fd) -> None:
    """In the forked child: drop the server's sockets and handlers, then run the target."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    listener.close()
    for c in clients:
        c.close()
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    die_with_parent()
    code = 0
    try:
        module, function = request
        getattr(importlib.import_module(module), function)(fd)
    except BaseException:  # noqa: BLE001 - report anything, then leave without Python's teardown
        import traceback

        traceback.print_exc()
        code = 1
    os._exit(code)


def serve(address: str, preload: list[str]) -> None:
    """Serve until whoever started us is gone (stdin closed, or SIGTERM: the parent died); then
    remove the socket and its folder. A server that fails (its imports) keeps an early log for
    ``stop`` to hand on: its traceback is written after this returns."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(address)
    server = os.getpid()
    signal.signal(signal.SIGTERM, _leave)
    failed = False
    try:
        _serve(listener, preload)
    except BaseException as exc:  # its traceback, printed after this, lands in the early log: stop() hands it on
        failed = not isinstance(exc, SystemExit)  # SystemExit: told to go (SIGTERM), nothing to keep
        raise
    finally:
        if os.getpid() == server:  # not in a child that a signal reached before it reset its handlers
            _remove(address, keep_early_log=failed)


def _leave(signum, frame):
    raise SystemExit(0)


def _remove(address: str, keep_early_log: bool = False) -> None:
    files = [address] if keep_early_log else [address, os.path.join(os.path.dirname(address), EARLY_LOG)]
    for f in files:
        with contextlib.suppress(OSError):
            os.unlink(f)
    with contextlib.suppress(OSError):
        os.rmdir(os.path.dirname(address))


def _serve(listener: socket.socket, preload: list[str]) -> None:
    listener.listen(64)  # clients may connect while the imports below run
    for module in preload:
        importlib.import_module(module)
    # what the imports made is never garbage: the collector leaves it alone, in here and in every child
    # (a full collection then takes microseconds, not 0.1 s, and does not touch the pages children share)
    gc.freeze()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    clients: dict[socket.socket, set[int]] = {}
    owner: dict[int, socket.socket] = {}
    said = b""
    while True:
        ready, _, _ = select.select([listener, sys.stdin, wake_r, *clients], [], [])
        if sys.stdin in ready:
            got = os.read(sys.stdin.fileno(), 4096)
            if not got:
                return  # whoever started us is gone; our children follow (PDEATHSIG)
            said += got
            while b"\n" in said:
                line, said = said.split(b"\n", 1)
                if line.startswith(b"log "):
                    _log_to(line[4:].decode(errors="surrogateescape"))
        if wake_r in ready:
            os.read(wake_r, 4096)
            _reap(owner)
        if listener in ready:
            conn, _ = listener.accept()
            clients[conn] = set()
        for c in [c for c in ready if c in clients]:
            try:
                request = _recv(c)
                fd = reduction.recvfds(c, 1)[0]
            except (EOFError, OSError):
                del clients[c]
                c.close()
                continue
            pid = os.fork()
            if pid == 0:
                _child(listener, list(clients), request, fd)
            os.close(fd)
            owner[pid] = c
            with contextlib.suppress(OSError):
                _send(c, ("forked", pid))


def _log_to(path: str) -> None:
    """From now on, this server's output and its children's go to path (the run's log); what it
    wrote before (its imports' warnings) is moved there first. If path cannot be written, the
    output stays where it was, and the server serves all the same."""
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        before = os.readlink("/proc/self/fd/2")
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    except (OSError, ValueError) as exc:
        print(f"fork server: cannot write the run's log {path} ({exc}); its output stays here", file=sys.stderr,
              flush=True)
        return
    with contextlib.suppress(OSError), open(before, "rb") as f:
        os.write(fd, f.read())
    if os.path.basename(before) == EARLY_LOG:
        with contextlib.suppress(OSError):
            os.unlink(before)
    os.write(fd, f"fork server (pid {os.getpid()}, started with the command): this run's cells from here\n".encode())
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _reap(owner: dict) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        c = owner.pop(pid, None)
        if c is not None:
            with contextlib.suppress(OSError):
                _send(c, ("exit", pid, os.waitstatus_to_exitcode(status)))


# ----------------------------------------------------------------------------- the client side


def start(preload: list[str] = PRELOAD, log: str | None = None, address: str | None = None
          ) -> tuple[str, subprocess.Popen]:
    """Start a server now (its imports continue in the background); returns (address, process).
    Keep the process object: the server lives while its stdin pipe is open. What the server and
    its children print goes to ``log`` (a file), not to the caller's terminal."""
    address = address or os.path.join(tempfile.mkdtemp(prefix="attn-fork-"), "s")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    if log:
        os.makedirs(os.path.dirname(log) or ".", exist_ok=True)
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - the child keeps it open
    try:
        proc = subprocess.Popen([sys.executable, "-m", "orchestrator.forkserver", address, *preload],
                                stdin=subprocess.PIPE, stdout=out, stderr=out, env=env, start_new_session=True)
    finally:
        if log:
            out.close()
    return address, proc


def start_early(preload: list[str] = PRELOAD) -> None:
    """Start a server as the command starts, before its config is composed: its imports (6-7 s
    on an H100 machine) then overlap the command's own start as well as Ray's. ``take_early``
    hands it to the run that wants one; an unclaimed one is stopped when this process exits."""
    global _early
    if _early is None:
        address = os.path.join(tempfile.mkdtemp(prefix="attn-fork-"), "s")
        _early = start(preload, log=os.path.join(os.path.dirname(address), EARLY_LOG), address=address)
        atexit.register(discard_early)


def take_early(log: str | None = None) -> tuple[str, subprocess.Popen] | None:
    """The server ``start_early`` started, now this caller's (its output from now on in ``log``),
    or None when there is none (or it has died)."""
    global _early
    server, _early = _early, None
    if server is None:
        return None
    if log:
        server[1].run_log = os.path.abspath(log)  # what it wrote before it reads this line: see stop
    if server[1].poll() is not None:  # it died in its imports: why goes to the run's log
        stop(*server)
        return None
    if log:
        with contextlib.suppress(OSError):
            server[1].stdin.write(f"log {server[1].run_log}\n".encode(errors="surrogateescape"))
            server[1].stdin.flush()
    return server


def discard_early() -> None:
    """Stop an early server nobody took (a run that joins a cluster, runs cells as Ray tasks, or
    never started)."""
    global _early
    server, _early = _early, None
    if server is not None:
        stop(*server)


def stop(address: str, proc: subprocess.Popen) -> None:
    """Stop a server that ``start`` started (its children die with it) and remove its socket
    and the folder made for it, so that no run leaves anything in the temporary folder. An
    early server that died before it read where the run's log is (in its imports): what it wrote
    is moved to that log."""
    proc.kill()
    proc.wait()
    with contextlib.suppress(OSError):
        proc.stdin.close()
    early = os.path.join(os.path.dirname(address), EARLY_LOG)
    if getattr(proc, "run_log", None) and os.path.exists(early):
        with contextlib.suppress(OSError):
            os.makedirs(os.path.dirname(proc.run_log), exist_ok=True)
            with open(early, "rb") as src, open(proc.run_log, "ab") as dst:
                dst.write(src.read())
    _remove(address)


class Client:
    """A connection to a server: ``fork`` children, learn how they ended."""

    def __init__(self, address: str, connect_timeout_s: float = 120.0):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        deadline = _now() + connect_timeout_s
        while True:
            try:
                self.sock.connect(address)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if _now() > deadline:
                    raise
                threading.Event().wait(0.05)
        self.lock = threading.Lock()
        self.cond = threading.Condition()
        self.forked: list[int] = []
        self.exits: dict[int, int] = {}
        self.closed = False
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            while True:
                msg = _recv(self.sock)
                with self.cond:
                    if msg[0] == "forked":
                        self.forked.append(msg[1])
                    else:
                        self.exits[msg[1]] = msg[2]
                    self.cond.notify_all()
        except (EOFError, OSError):
            with self.cond:
                self.closed = True
                self.cond.notify_all()

    def fork(self, module: str, function: str, fd: int, timeout_s: float = 300.0) -> int:
        """A new child running ``module.function(fd)``; returns its pid. Waits while the server
        is still importing (the first fork after a start)."""
        with self.lock:
            _send(self.sock, (module, function), [fd])
            with self.cond:
                if not self.cond.wait_for(lambda: self.forked or self.closed, timeout_s) or not self.forked:
                    raise RuntimeError("the fork server did not answer (it died, or is still importing)")
                return self.forked.pop(0)

    def exit_code(self, pid: int, timeout_s: float) -> int | None:
        """The child's exit code once it has ended (None if not within timeout_s)."""
        with self.cond:
            self.cond.wait_for(lambda: pid in self.exits or self.closed, timeout_s)
            return self.exits.get(pid)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def _now() -> float:
    import time

    return time.monotonic()


if __name__ == "__main__":
    die_with_parent(signal.SIGTERM)  # not SIGKILL: the server removes its socket before it goes
    serve(sys.argv[1], sys.argv[2:])
