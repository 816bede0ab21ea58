"""How a sweep stops short, apart from bad input (``config.ConfigError``)."""

from __future__ import annotations

import signal


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
        for sig, handler in self.handlers.items():
            signal.signal(sig, handler)
        self.handlers = {}


class StoreWriteError(Exception):
    """A row could not be made durable (a full disk, a store gone read-only)."""
