"""How a sweep stops short, apart from bad input (``config.ConfigError``)."""

from __future__ import annotations

import signal


class Interrupted(Exception):
    """SIGINT or SIGTERM: the sweep stopped; every row written so far is kept."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StoreWriteError(Exception):
    """A row could not be made durable (a full disk, a store gone read-only)."""
