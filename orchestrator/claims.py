"""Claims on cells: sweeps sharing one store (on one machine, or several sharing the folder)
never measure a cell twice at once.

A sweep claims a cell before it measures it: a file ``<store>.meta/claims/<cell_id>`` created
with O_EXCL (atomic on local and network file systems) that names the run, host and process.
Why claims and not one lock: a store-wide lock would run sweeps one after the other; claims
let sweeps with overlapping grids share the work, each cell measured once. A sweep that waits
for another's cell takes its row when it lands, or measures the cell itself if that sweep went
away (its process is gone, on this host, or its heartbeat ``alive/<run_id>`` is stale).
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

HOST = socket.gethostname()
CLAIM_STALE_S = 90.0  # a claim whose sweep has not shown signs of life for this long is taken over


def alive(host: str, pid: int) -> bool:
    """Whether a process is alive; a process of another host: assumed so (its heartbeat tells)."""
    if host != HOST:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Claims:
    def __init__(self, meta: Path):
        self.meta = meta

    def heartbeat(self, run_id: str) -> None:
        """This run is alive (its claims hold). Called every few seconds by the running sweep."""
        path = self.meta / "alive" / run_id
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()

    def claim(self, cell_id: str, run_id: str) -> dict | None:
        """Claim a cell for this run. Returns None when claimed, or the other owner's record when
        a live sweep holds it (a claim of a dead or silent sweep is taken over)."""
        path = self.meta / "claims" / cell_id
        path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                owner = self.owner(cell_id)
                if owner is None:
                    continue  # released meanwhile
                if owner.get("run_id") == run_id or not self._owner_alive(owner):
                    path.unlink(missing_ok=True)
                    dead = owner.get("run_id")
                    if dead not in (run_id, "?", None):  # its heartbeat goes too: _owner_alive judged by it
                        (self.meta / "alive" / str(dead)).unlink(missing_ok=True)
                    continue
                return owner
            os.write(fd, json.dumps({"run_id": run_id, "host": HOST, "pid": os.getpid(),
                                     "since": time.time()}).encode())
            os.close(fd)
            return None
        return self.owner(cell_id) or {"run_id": "?"}

    def owner(self, cell_id: str) -> dict | None:
        try:
            return json.loads((self.meta / "claims" / cell_id).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {"run_id": "?", "host": "?", "pid": 0, "since": 0.0}

    def _owner_alive(self, owner: dict) -> bool:
        if owner.get("host") == HOST and not alive(HOST, int(owner.get("pid", 0))):
            return False
        beat = self.meta / "alive" / str(owner.get("run_id"))
        last = beat.stat().st_mtime if beat.exists() else owner.get("since", 0.0)
        return time.time() - last < CLAIM_STALE_S

    def release(self, cell_id: str, run_id: str) -> None:
        owner = self.owner(cell_id)
        if owner is not None and owner.get("run_id") == run_id:
            (self.meta / "claims" / cell_id).unlink(missing_ok=True)

    def end_run(self, run_id: str) -> None:
        """Drop the run's heartbeat and any claim it still holds."""
        for path in (self.meta / "claims").glob("*"):
            if (self.owner(path.name) or {}).get("run_id") == run_id:
                path.unlink(missing_ok=True)
        (self.meta / "alive" / run_id).unlink(missing_ok=True)
