"""What a workload hands the cell runner, and the pieces every workload shares."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from tasks.flops import attention_bytes, attention_flops  # noqa: F401  (the workloads' shared counts)

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
FLOPS_CONVENTION = "4*B*H*N^2*D fwd, /2 causal, x3.5 fwd_bwd; bytes: q, k, v read and out written once (fwd_bwd: x3)"


def dtype_of(name: str) -> torch.dtype:
    return DTYPES[name]


@dataclass
class Work:
    step: Callable[[], object]  # what gets timed: a forward, or a forward and backward
    flops: float  # per step, by FLOPS_CONVENTION
    bytes: float  # fewest bytes a step moves through memory, by the same convention
    check: Callable[..., float]  # relative error of the output (given, or a new call's) against fp32
    pinned: Callable  # context that pins the backend while the step runs
    train: bool  # autograd on (fwd_bwd) or inference mode (fwd)
    flops_convention: str = FLOPS_CONVENTION  # how this workload counts flops
    compiled: bool = False  # the first step compiles (timed apart as compile_s)
    again: Callable[[], Callable[[], object]] | None = None  # a step on new copies of the inputs (other addresses)


def make_step(forward: Callable, inputs: tuple, train: bool, gen: torch.Generator,
              grad: list | None = None) -> Callable:
    """The timed step: forward, or forward plus backward against a fixed random gradient, made
    at the first call; ``grad``: a list that holds it, shared by the steps on copies of the inputs."""
    if not train:
        return forward
    grad = [] if grad is None else grad

    def step():
        out = forward()
        if not grad:
            grad.append(torch.randn(out.shape, dtype=out.dtype, device=out.device, generator=gen))
        return torch.autograd.grad(out, inputs, grad[0])

    return step
