"""How a sweep stops short, apart from bad input (``config.ConfigError``), and the signals
that stop it."""

from __future__ import annotations

import contextlib
import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):
    """SIGINT or SIGTERM: the sweep stopped; every row written so far is kept.

    From the signal on, SIGINT and SIGTERM are ignored, so that a second Ctrl-C cannot cut
    short the clean-up or the process's exit; ``handlers`` are the ones they had before,
    which ``restore_signals`` puts back (``driver.run`` does, unless its caller is exiting)."""

    def __init__(self, signum: int, handlers: dict | None = None):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.handlers = dict(handlers or {})

    def restore_signals(self) -> None:
        restore_signals(self.handlers)
        self.handlers = {}


class StoreWriteError(Exception):
    """A row could not be made durable (a full disk, a store gone read-only)."""


def terminate_as_interrupt(signum, frame):
    """The CLI's SIGTERM handler: it stops the sweep as Ctrl-C does, and says it was SIGTERM."""
    raise KeyboardInterrupt("SIGTERM")


def signal_of(exc: BaseException | None) -> int | None:
    """The signal an exception stands for: Ctrl-C's KeyboardInterrupt, the CLI's SIGTERM
    (``terminate_as_interrupt``), or the SIGTERM handler Ray installs while ``ray.init`` runs
    (``sys.exit(15)``); None for any other."""
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


@contextlib.contextmanager
def stopping_for_good(exiting: bool):
    """A Ctrl-C or SIGTERM that passes through here, in a process that exits once it has
    unwound (the CLI), leaves the signals ignored: a second one cannot cut short what the
    unwinding still does (joining the cluster's close, stopping the plotting processes)."""
    try:
        yield
    except KeyboardInterrupt:
        if exiting:
            ignore_signals()
        raise
