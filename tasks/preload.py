"""What each device's forkserver imports once, before any cell is forked from it.

Everything a cell would otherwise import lazily on its first use (the dispatch-mode
kernel check pulls in torch's decompositions and sympy: about 1 s here, several on a GPU
machine), exercised on meta tensors: no computation, no threads, no CUDA.
"""

import torch
import torch.nn.functional as F

from tasks import attention, cell, encoder, kernels  # noqa: F401


def _warm() -> None:
    q = torch.empty(1, 1, 8, 8, device="meta")
    kernels.record(lambda: F.scaled_dot_product_attention(q, q, q, is_causal=True), q.device, "math")


_warm()
assert not torch.cuda.is_initialized(), "the forkserver must never start CUDA"
