"""Which kernels one call ran, and whether they belong to the backend the cell pinned.

A pinned backend can still not run: PyTorch's fused ``nn.TransformerEncoder`` fast path
never calls SDPA, and a backend may route around the kernel it names. One recorded call
per cell says what ran (``measure.kernels``):

* ``ops`` (default): the ATen operators the call dispatched, seen by a dispatch mode
  (``aten::_scaled_dot_product_flash_attention``, ``aten::_transformer_encoder_layer_fwd``,
  ...); costs milliseconds, on any device.
* ``gpu``: the GPU kernels, from ``torch.profiler`` with CUDA activity
  (``pytorch_flash::flash_fwd_kernel``, ``fmha_cutlassF_*``, ...). The profiler's first CUDA
  use in a process costs about 7 s on an H100 (torch 2.11: 6.95 s, then 0.01 s a call), and
  every cell is a fresh process. It cannot be paid once in the forkserver: a profiler run
  there, even CPU-only, leaves the forked children unable to initialise CUDA. Worth it for a
  verification run, not by default.

``match`` checks the names against the tables below.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch

from tasks.timing import quiet_profiler

MAX_CHARS = 4000  # the `kernels` column keeps this much of the `;`-joined short names

_FASTPATH = {  # the fused encoder fast path, which never calls SDPA
    "cuda": r"transform_bias_rescale_qkv",
    "ops": r"_native_multi_head_attention|_transformer_encoder_layer_fwd|_transform_bias_rescale_qkv",
}
_SOFTMAX = {"cuda": r"softmax", "ops": r"aten::_softmax|aten::_safe_softmax"}

# device: backend: (kind, regex that some name must match). A "fused" backend's kernels
# must show and no other fused backend's, nor a separate softmax; an "unfused" one (math,
# eager: GEMMs plus softmax) must show a softmax and no fused attention kernel at all.
KERNELS = {
    "cuda": {
        "flash": ("fused", r"pytorch_flash::|flash_fwd|flash_bwd"),  # flash_fwd_kernel, flash_bwd_*
        "efficient": ("fused", r"fmha_cutlass|MemEffAttention"),  # fmha_cutlassF_*, fmha_cutlassB_*
        "cudnn": ("fused", r"cudnn\w*sdpa|fort_native_sdpa|flash_fprop|flash_bprop"),
        "flex": ("fused", r"triton|flex_attention"),  # inductor's triton_tem_fused_* kernels
        "math": ("unfused", _SOFTMAX["cuda"]),  # softmax_warp_forward (rows <= 1024), cunn_SoftMaxForward
        "eager": ("unfused", _SOFTMAX["cuda"]),
    },
    "ops": {  # ATen operators, GPU and CPU alike (flash on the CPU: ..._flash_attention_for_cpu)
        "flash": ("fused", r"_scaled_dot_product_flash_attention|_flash_attention_(forward|backward)"),
        "efficient": ("fused", r"_scaled_dot_product_efficient_attention|_efficient_attention_(forward|backward)"),
        "cudnn": ("fused", r"_scaled_dot_product_cudnn_attention|_cudnn_attention"),
        "flex": ("fused", r"flex_attention"),
        "math": ("unfused", _SOFTMAX["ops"]),
        "eager": ("unfused", _SOFTMAX["ops"]),
    },
}
_SDPA_OP = r"aten::_scaled_dot_product"  # eager must not reach SDPA at all


def _any(pattern: str, names: list[str]) -> bool:
    rx = re.compile(pattern, re.IGNORECASE)  # softmax_warp_forward and cunn_SoftMaxForward alike
    return any(rx.search(n) for n in names)


def match(backend: str, kernel_names: list[str], device: str = "cuda") -> bool | None:
    """Whether the names show that `backend` ran; None where the table cannot say."""
    table = KERNELS.get(device, {})
    if backend not in table or not kernel_names:
        return None
    kind, own = table[backend]
    others = [rx for b, (k, rx) in table.items() if k == "fused" and b != backend]
    forbidden = [*others, _FASTPATH[device]]
    if kind == "fused":
        forbidden.append(_SOFTMAX[device])
    elif device == "ops" and backend == "eager":
        forbidden.append(_SDPA_OP)
    return _any(own, kernel_names) and not any(_any(rx, kernel_names) for rx in forbidden)


def short(name: str) -> str:
    """`void ns::kernel<...>(args)` -> `ns::kernel`: template and argument lists dropped."""
    name = name.removeprefix("void ").replace("(anonymous namespace)::", "").strip()
    cut = min((i for i in (name.find("<"), name.find("(")) if i > 0), default=len(name))
    return name[:cut]


def _gpu_kernels(fn: Callable, device: torch.device) -> list[str]:
    """Unique GPU kernel names of one call, in order of first launch (torch.profiler)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with quiet_profiler(), profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize(device)
    names = (e.name() for e in prof.profiler.kineto_results.events() if e.device_type() == DeviceType.CUDA)
    return list(dict.fromkeys(n for n in names if n != "[memory]"))


def _ops(fn: Callable) -> list[str]:
    """Unique ATen operators one call dispatched, in order (a dispatch mode: no profiler)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    seen: dict[str, None] = {}

    class Record(TorchDispatchMode):
        supports_higher_order_operators = True  # flex_attention is one

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            packet = getattr(func, "overloadpacket", None)
            seen.setdefault(f"aten::{packet.__name__}" if packet else func.name(), None)
            if packet is None:
                return func(*args, **kwargs)
            with self:  # composite ops (SDPA itself) decomposed under this mode: see what they call
                out = func.decompose(*args, **kwargs)
            return func(*args, **kwargs) if out is NotImplemented else out

    with Record():
        fn()
    return list(seen)


def record(fn: Callable, device: torch.device, backend: str, how: str = "ops", compiled: bool = False) -> dict:
    """One recorded call of fn: the `kernels` and `kernels_match` columns.

    A compiled backend (flex) cannot run under a dispatch mode: in ops mode it records
    nothing (null columns); ``gpu`` mode names its Triton kernels.
    """
    if how == "ops" and compiled:
        return {"kernels": None, "kernels_match": None}
    if how == "gpu" and device.type == "cuda":
        names, table = _gpu_kernels(fn, device), "cuda"
    else:
        names, table = _ops(fn), "ops"
    shorts = list(dict.fromkeys(short(n) for n in names))
    return {"kernels": ";".join(shorts)[:MAX_CHARS] or None, "kernels_match": match(backend, names, table)}
