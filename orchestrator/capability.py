"""What a device model cannot run, known before any work is spent on it.

A cell bound to a named GPU model (a Ray accelerator type) or to the CPU that cannot run
on it gets an ``unsupported`` row with the reason, and is never scheduled. Cells bound to
``any`` GPU run, and PyTorch itself says what it cannot do. No torch here.
"""

from __future__ import annotations

from datetime import datetime, timezone

# Compute capability of the accelerator types Ray reports (ray.util.accelerators names).
COMPUTE_CAPABILITY = {
    "K80": (3, 7), "P4": (6, 1), "P100": (6, 0), "V100": (7, 0), "T4": (7, 5), "Turing": (7, 5),
    "A100": (8, 0), "A100-40G": (8, 0), "A100-80G": (8, 0), "A10G": (8, 6), "A10": (8, 6),
    "L4": (8, 9), "L40S": (8, 9), "H100": (9, 0), "H200": (9, 0), "H20": (9, 0), "GH200": (9, 0),
    "B200": (10, 0), "GB200": (10, 0),
}
HALF = ("float16", "bfloat16")
# Head sizes past which no kernel of the backend exists (flash, cuDNN and FlexAttention's
# templates stop at 256); past 1024 for any backend: no attention kernel is built for heads that
# large, and the unfused ones would only measure two huge GEMMs (a typo, most likely).
MAX_HEAD_DIM = {"flash": 256, "cudnn": 256, "flex": 256}
MAX_HEAD_DIM_ANY = 1024


# Fused kernels that need sm80 and half precision.
FUSED = {"flash": "flash attention", "cudnn": "cuDNN attention"}


def _gpu_reason(cell, cc: tuple[int, int], name: str) -> str | None:
    sm = f"sm{cc[0]}{cc[1]}"
    if cell.dtype == "bfloat16" and cc < (8, 0):
        return f"bfloat16 needs sm80 or newer; {name} is {sm}"
    if cell.backend not in FUSED:
        return None
    kernel = FUSED[cell.backend]
    if cc < (8, 0):
        return f"{kernel} needs sm80 or newer; {name} is {sm}"
    if cell.dtype not in HALF:
        return f"{kernel} takes float16 or bfloat16, not {cell.dtype}"
    return None


def reason(cell) -> str | None:
    """Why the cell's target cannot run it, or None when it may (or when nothing is known)."""
    top = MAX_HEAD_DIM.get(cell.backend, MAX_HEAD_DIM_ANY)
    if cell.head_dim > top:
        return f"{cell.backend} takes head sizes up to {top}, not {cell.head_dim}"
    if cell.target == "cpu":
        if cell.backend in ("efficient", "cudnn"):
            return f"{cell.backend} attention has no CPU kernel in PyTorch"
        return None
    cc = COMPUTE_CAPABILITY.get(cell.target)
    return _gpu_reason(cell, cc, cell.target) if cc else None


def unsupported(cell) -> dict | None:
    """The result of a cell its target cannot run (an ``unsupported`` row, never scheduled), or None."""
    why = reason(cell)
    if why is None:
        return None
    now = datetime.now(timezone.utc)
    return {"status": "unsupported", "error": f"{cell.target}: {why}", "attempts": 0, "started_at": now,
            "ended_at": now}
