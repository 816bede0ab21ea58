"""Which kernels one call ran, and whether they belong to the backend the cell pinned.

A pinned backend can still not run: PyTorch's fused ``nn.TransformerEncoder`` fast path
never calls SDPA, and a backend may route around the kernel it names. One profiled call
per cell records what ran: on CUDA the GPU kernels, on the CPU the ``aten::`` operators
(there are no CPU kernels to name). ``match`` checks them against the table below.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch

MAX_CHARS = 4000  # the `kernels` column keeps this much of the `;`-joined short names

_FASTPATH = {  # the fused encoder fast path, which never calls SDPA
    "cuda": r"transform_bias_rescale_qkv",
    "cpu": r"_native_multi_head_attention|_transformer_encoder_layer_fwd",
}
_SOFTMAX = {"cuda": r"softmax", "cpu": r"aten::_softmax|aten::_safe_softmax"}

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
    "cpu": {
        "flash": ("fused", r"_scaled_dot_product_flash_attention_for_cpu"),
        "flex": ("fused", r"Torch-Compiled Region|CompiledFxGraph"),
        "math": ("unfused", r"_scaled_dot_product_attention_math"),
        "eager": ("unfused", _SOFTMAX["cpu"]),
    },
}
_SDPA_OP = r"aten::_scaled_dot_product"  # CPU: eager must not reach SDPA at all


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
    elif device == "cpu" and backend == "eager":
        forbidden.append(_SDPA_OP)
    return _any(own, kernel_names) and not any(_any(rx, kernel_names) for rx in forbidden)


def short(name: str) -> str:
    """`void ns::kernel<...>(args)` -> `ns::kernel`: template and argument lists dropped."""
    name = name.removeprefix("void ").replace("(anonymous namespace)::", "").strip()
    cut = min((i for i in (name.find("<"), name.find("(")) if i > 0), default=len(name))
    return name[:cut]


def _names(prof, device: torch.device) -> list[str]:
    """Unique names in order of first appearance: GPU kernels on CUDA, aten ops on the CPU."""
    from torch.autograd import DeviceType

    want = DeviceType.CUDA if device.type == "cuda" else DeviceType.CPU
    seen = {}
    for e in prof.profiler.kineto_results.events():
        name = e.name()
        if e.device_type() != want or name == "[memory]":
            continue
        if want == DeviceType.CPU and not name.startswith(("aten::", "Torch-Compiled", "## Call CompiledFx")):
            continue
        seen.setdefault(name, None)
    return list(seen)


def record(fn: Callable, device: torch.device, backend: str) -> dict:
    """One profiled call of fn: the `kernels` and `kernels_match` columns."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    names = _names(prof, device)
    shorts = list(dict.fromkeys(short(n) for n in names))
    return {"kernels": ";".join(shorts)[:MAX_CHARS] or None, "kernels_match": match(backend, names, device.type)}
