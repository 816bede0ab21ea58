"""The attention backends: a registry where each backend is one small function.

A backend takes the inputs ``(q, k, v, causal)``, shaped ``(batch, heads, seq, head_dim)``,
and returns a zero-argument closure that computes the attention output: the closure is
what gets timed, anything prepared outside it (a block mask) is not. SDPA backends are
pinned with ``sdpa_kernel`` while they run, so a backend that cannot take the inputs
raises instead of silently falling back.

Adding one::

    @register("mine")
    def mine(q, k, v, causal):
        return lambda: my_kernel(q, k, v, causal=causal)

A backend given as an ``attend`` factory instead (``(seq_len, causal, device) -> f(q, k, v)``,
registered with ``register_attend``) runs inside a model too: the encoder workload calls it
in place of each layer's SDPA.

Nothing here imports torch at module level: the driver reads the names to check a config
without loading torch; each backend imports what it needs when a cell builds it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Backend:
    name: str
    fn: Callable
    sdpa: str | None = None  # the SDPBackend member pinned while fn runs (FLASH_ATTENTION, ...)
    compiled: bool = False  # built during warm-up (compile time recorded apart)
    attend: Callable | None = None  # (seq_len, causal, device) -> f(q, k, v): the kernel alone, for models

    def pinned(self):
        """The context that pins this backend (nothing for non-SDPA backends)."""
        if self.sdpa is None:
            return contextlib.nullcontext()
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel([getattr(SDPBackend, self.sdpa)])


BACKENDS: dict[str, Backend] = {}


def register(name: str, **kw):
    def deco(fn):
        BACKENDS[name] = Backend(name, fn, **kw)
        return fn

    return deco


def get(name: str) -> Backend:
    return BACKENDS[name]


def register_attend(name: str, attend: Callable, **kw) -> None:
    """A backend from an attend factory alone: its op fn prepares for the inputs (untimed), then attends."""

    def fn(q, k, v, causal):
        run = attend(q.shape[-2], causal, q.device)
        return lambda: run(q, k, v)

    BACKENDS[name] = Backend(name, fn, attend=attend, **kw)


def _sdpa_attend(n, causal, device):
    import torch.nn.functional as F

    return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=causal)


for _name, _kind in [
    ("math", "MATH"),
    ("flash", "FLASH_ATTENTION"),
    ("efficient", "EFFICIENT_ATTENTION"),
    ("cudnn", "CUDNN_ATTENTION"),
]:
    register_attend(_name, _sdpa_attend, sdpa=_kind)


def _eager_attend(n, causal, device):
    """The textbook baseline: matmul, mask, softmax, matmul, in the inputs' dtype."""
    import torch

    mask = torch.ones(n, n, dtype=torch.bool, device=device).triu_(1) if causal else None

    def attend(q, k, v):
        scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
        if mask is not None:
            scores = scores.masked_fill(mask, float("-inf"))
        return scores.softmax(dim=-1) @ v

    return attend


register_attend("eager", _eager_attend)

_flex_compiled = None


def _causal(b, h, q_idx, kv_idx):
    return q_idx >= kv_idx


def _flex_attend(n, causal, device):
    """FlexAttention (torch >= 2.5; older: NotImplementedError, an unsupported row). Compiled by
    the cell's first call, which is timed apart as compile_s; the causal block mask is built
    here, outside the timed call."""
    global _flex_compiled
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except ImportError:  # pragma: no cover - torch < 2.5
        raise NotImplementedError("FlexAttention needs torch 2.5 or newer") from None
    if _flex_compiled is None:
        import torch

        _flex_compiled = torch.compile(flex_attention, dynamic=False)
    mask = create_block_mask(_causal, None, None, n, n, device=device.type) if causal else None
    return lambda q, k, v: _flex_compiled(q, k, v, block_mask=mask)


register_attend("flex", _flex_attend, compiled=True)


def names() -> list[str]:
    """Every registered backend (import tasks.faults first for the fault_* ones)."""
    return sorted(BACKENDS)
