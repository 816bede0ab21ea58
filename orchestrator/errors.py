"""How a sweep stops short, apart from bad input (``config.ConfigError``), and the signals
that stop it."""

from __future__ import annotations

import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):
    """SIGINT or SIGTERM: the sweep stopped; every row written so far is kept. The caller's
    signal handlers are back in place (a CLI's ``StopOnce`` knows it has had its signal)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StoreWriteError(Exception):
    """A row could not be made durable (a full disk, a store gone read-only)."""


class StopOnce:
    """The CLI's handler of SIGINT and SIGTERM outside the cells (the session takes them while
    the cells run): the first stops the command as Ctrl-C does, as a KeyboardInterrupt naming
    the signal; every later one changes nothing, so that nothing cuts short the winding down
    (compaction, the cluster's close, the plotting processes, the interpreter's exit)."""

    def __init__(self):
        self.fired = False  # also set by a session that took the first signal itself

    def __call__(self, signum, frame):
        if not self.fired:
            self.fired = True
            raise KeyboardInterrupt(signal.Signals(signum).name)


def signal_of(exc: BaseException | None) -> int | None:
    """The signal an exception stands for: Ctrl-C's KeyboardInterrupt, the CLI's (``StopOnce``),
    or the SIGTERM handler Ray installs while ``ray.init`` runs (``sys.exit(15)``); None for any
    other."""
    if isinstance(exc, KeyboardInterrupt):
        return signal.SIGTERM if str(exc) == "SIGTERM" else signal.SIGINT
    if isinstance(exc, SystemExit) and exc.code == signal.SIGTERM:
        return signal.SIGTERM
    return None


def ignore_signals(sigs=SIGNALS) -> None:
    """From here on SIGINT and SIGTERM change nothing (only the main thread can say so)."""
    if threading.current_thread() is threading.main_thread():
        for sig in sigs:
            signal.signal(sig, signal.SIG_IGN)


def restore_signals(handlers: dict) -> None:
    for sig, handler in handlers.items():
        signal.signal(sig, handler)
