"""Diagnostic backends that fail on purpose, one way each (``+sweep=faults``).

They let a user check how a cluster behaves when a kernel raises, runs out of memory,
segfaults, exits, aborts or hangs, and let the tests provoke each failure for real.
"""

from __future__ import annotations

import ctypes
import os
import signal
import time

from tasks.backends import register


@register("fault_raise")
def fault_raise(q, k, v, causal):
    def run():
        raise ValueError("fault_raise: a Python exception raised on purpose")

    return run


@register("fault_oom")
def fault_oom(q, k, v, causal):
    """Really exhaust the device: 1 GiB blocks on a GPU until the allocator gives up."""
    import torch

    def run():
        if q.device.type != "cuda":  # one impossible allocation: no host memory is used
            return torch.empty(1 << 50, dtype=torch.uint8, device=q.device)
        held = []
        while True:
            held.append(torch.empty(1 << 30, dtype=torch.uint8, device=q.device))

    return run


@register("fault_segfault")
def fault_segfault(q, k, v, causal):
    return lambda: ctypes.string_at(0)  # reads address 0: SIGSEGV


@register("fault_abort")
def fault_abort(q, k, v, causal):
    return lambda: os.kill(os.getpid(), signal.SIGABRT)


@register("fault_exit")
def fault_exit(q, k, v, causal):
    return lambda: os._exit(3)


@register("fault_hang")
def fault_hang(q, k, v, causal):
    def run():
        while True:
            time.sleep(1)

    return run


@register("fault_illegal_address")
def fault_illegal_address(q, k, v, causal):
    """A GPU kernel that indexes far out of bounds (a device-side assert on CUDA)."""
    import torch

    table = torch.zeros(16, device=q.device)
    index = torch.full((1,), 1 << 40, dtype=torch.long, device=q.device)

    def run():
        out = table[index]
        if q.device.type == "cuda":
            torch.cuda.synchronize()
        return out

    return run
