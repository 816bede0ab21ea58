"""File descriptor 2 captured for a while: what C/C++ libraries write there (Ray's core,
kineto) bypasses ``sys.stderr``."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile


class Captured:
    text = ""  # what was written, once the block has ended


@contextlib.contextmanager
def captured_fd2():
    """Point file descriptor 2 at a temporary file for the block; what it got is ``.text`` after."""
    got = Captured()
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield got
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            got.text = tmp.read().decode(errors="replace")
