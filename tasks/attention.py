"""The attention-op workload: one ``(batch, heads, seq, head_dim)`` attention call per step."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from tasks import backends
from tasks.work import Work, attention_bytes, attention_flops, dtype_of, make_step

REF_BATCH, REF_HEADS, REF_ROWS = 1, 2, 256  # the slice checked against the fp32 reference, and its query rows


def _host(t: torch.Tensor) -> torch.Tensor:
    """The checked (batch, head) slice on the host, in fp32 (a copy: no GPU kernel for a contiguous slice)."""
    return t[:REF_BATCH, :REF_HEADS].detach().cpu().float()


def ref_rows(n: int) -> torch.Tensor:
    """The query rows checked: all of them up to REF_ROWS, else REF_ROWS spread evenly, the first and last included."""
    return torch.linspace(0, n - 1, min(n, REF_ROWS)).round().long()


def reference(q, k, v, causal):
    """fp32 math attention of the checked rows of a (batch, head) slice, computed on the host. A
    cell process then loads no GPU kernels for its check: on a GPU the fp32 reference's kernels took
    0.14 s of each fresh process's start (``docs/h200x2/probe_start.txt``), time other cells' timing
    had to wait for. Each row's output depends on all keys, so a sample of rows is checked exactly."""
    qh, kh, vh = _host(q), _host(k), _host(v)
    rows = ref_rows(qh.shape[-2])
    mask = torch.arange(kh.shape[-2]) <= rows[:, None] if causal else None  # is_causal: query i sees keys 0..i
    with sdpa_kernel([SDPBackend.MATH]):
        return F.scaled_dot_product_attention(qh[..., rows, :], kh, vh, attn_mask=mask)


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| over the checked rows of ``out``'s (batch, head) slice."""
    got = _host(out)[..., ref_rows(out.shape[-2]), :]
    return float((got - ref).norm() / ref.norm())


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
