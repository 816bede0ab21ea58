"""The attention-op workload: one ``(batch, heads, seq, head_dim)`` attention call per step."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from tasks import backends
from tasks.work import Work, attention_bytes, attention_flops, dtype_of, make_step

REF_BATCH, REF_HEADS = 1, 2  # the slice checked against the fp32 reference


def reference(q, k, v, causal):
    """fp32 math-backend attention of a (batch, head) slice: cheap at any size."""
    sl = (slice(0, REF_BATCH), slice(0, REF_HEADS))
    with sdpa_kernel([SDPBackend.MATH]):
        return F.scaled_dot_product_attention(
            q[sl].float(), k[sl].float(), v[sl].float(), is_causal=causal
        )


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    out = out[:REF_BATCH, :REF_HEADS].float()
    return float((out - ref).norm() / ref.norm())


def build(p: dict, device: torch.device) -> Work:
    b, h, n, d = p["batch_size"], p["num_heads"], p["seq_len"], p["head_dim"]
    dtype, causal = dtype_of(p["dtype"]), p["causal"]
    train = p["mode"] == "fwd_bwd"
    gen = torch.Generator(device).manual_seed(p.get("seed", 0))
    q, k, v = (
        torch.randn(b, h, n, d, device=device, dtype=dtype, generator=gen).requires_grad_(train)
        for _ in range(3)
    )
    backend = backends.get(p["backend"])
    forward = backend.fn(q, k, v, causal)

    def check(out=None) -> float:
        """Relative error of the output (this call's, or a new one) against the fp32 reference."""
        with torch.no_grad():
            return rel_error(forward() if out is None else out, reference(q, k, v, causal))

    def again():
        """The same step on copies of q, k, v: the same values at other addresses."""
        copies = tuple(t.detach().clone().requires_grad_(train) for t in (q, k, v))
        return make_step(backend.fn(*copies, causal), copies, train, gen, grad)

    grad: list = []  # the backward's gradient, one for the step and its copies

    return Work(
        step=make_step(forward, (q, k, v), train, gen, grad),
        flops=attention_flops(b, h, n, d, causal, p["mode"]),
        bytes=attention_bytes(b, h, n, d, q.element_size(), p["mode"]),
        check=check,
        pinned=backend.pinned,
        train=train,
        compiled=backend.compiled,
        again=again,
    )
