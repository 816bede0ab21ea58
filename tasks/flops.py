"""How much work a cell is: floating-point operations and the fewest bytes moved, per call.
Plain arithmetic (no torch): the driver uses it to order cells and estimate time left."""

from __future__ import annotations

ENCODER_LAYERS, ENCODER_FFN = 6, 2048  # the notebook's nn.TransformerEncoder (tasks/encoder.py)
ITEMSIZE = {"float16": 2, "bfloat16": 2, "float32": 4}


def attention_flops(b: int, h: int, n: int, d: int, causal: bool, mode: str) -> float:
    fwd = 4.0 * b * h * n * n * d / (2 if causal else 1)
    return fwd * (3.5 if mode == "fwd_bwd" else 1.0)


def attention_bytes(b: int, h: int, n: int, d: int, itemsize: int, mode: str) -> float:
    """q, k, v read and the output written once; a training step also reads them and the output's
    gradient again and writes three gradients (x3 in all)."""
    return 4.0 * b * h * n * d * itemsize * (3 if mode == "fwd_bwd" else 1)


def encoder_flops(b: int, h: int, n: int, d: int, causal: bool, mode: str) -> float:
    dm = h * d
    linear = 2.0 * b * n * (4 * dm * dm + 2 * dm * ENCODER_FFN)
    attn = 4.0 * b * h * n * n * d / (2 if causal else 1)
    if mode == "fwd_bwd":
        linear, attn = 3 * linear, 3.5 * attn
    return ENCODER_LAYERS * (linear + attn)


def encoder_bytes(b: int, n: int, params: int, dm: int, itemsize: int, mode: str) -> float:
    return float((params + 2 * b * n * dm) * itemsize * (3 if mode == "fwd_bwd" else 1))


def cell_flops(cell) -> float:
    """FLOPs of one call of a grid cell (orchestrator.grid.Cell)."""
    f = encoder_flops if cell.workload == "encoder" else attention_flops
    return f(cell.batch_size, cell.num_heads, cell.seq_len, cell.head_dim, cell.causal, cell.mode)
