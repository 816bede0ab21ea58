"""The notebook's workload: a whole ``nn.TransformerEncoder`` forward (or forward + backward).

The model is the notebook's: post-norm layers, ReLU, feed-forward 2048, batch-first, a
causal mask with ``is_causal=True``; d_model is the cell's ``num_heads * head_dim`` (the
seed grid's 32 heads of 16 give the notebook's 512). Dropout is 0 so that runs compare.

Two things keep the measured backend the one the cell names:

* PyTorch's fused encoder fast path (inference mode, ``_transformer_encoder_layer_fwd``)
  never calls SDPA, so pinning a backend changes nothing there. It is switched off while
  the cell runs (``torch.backends.mha.set_fastpath_enabled(False)``, restored after):
  ``nn.MultiheadAttention`` then calls SDPA with ``is_causal=True``, which the pin governs.
* Backends that are not SDPA (eager, flex) replace each layer's ``self_attn`` by
  ``BackendAttention``: the same projection weights around the backend's own kernel.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from tasks import backends
from tasks.flops import ENCODER_FFN, ENCODER_LAYERS, encoder_bytes, encoder_flops  # noqa: F401
from tasks.work import Work, dtype_of, make_step

LAYERS, FFN = ENCODER_LAYERS, ENCODER_FFN  # the notebook's (nn defaults: ffn 2048, ReLU, post-norm)
REF_BATCH = 1  # samples checked against the fp32 reference
FLOPS_CONVENTION = (
    "encoder: per layer 2*B*N*(4*d^2+2*d*F) linear + 4*B*H*N^2*D attention (/2 causal); "
    "fwd_bwd: linear x3, attention x3.5; norms, softmax, residuals not counted; "
    "bytes: weights read and the input read and output written once (fwd_bwd: x3)"
)


def make_model(d_model: int, heads: int, device, dtype) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(
        d_model, heads, FFN, dropout=0.0, batch_first=True, device=device, dtype=dtype
    )
    return nn.TransformerEncoder(layer, LAYERS, enable_nested_tensor=False).eval()


class BackendAttention(nn.Module):
    """Stands in for ``nn.MultiheadAttention`` (same parameters, same names) around another kernel."""

    def __init__(self, mha: nn.MultiheadAttention, attend):
        super().__init__()
        self.in_proj_weight, self.in_proj_bias, self.out_proj = mha.in_proj_weight, mha.in_proj_bias, mha.out_proj
        self.num_heads, self.batch_first, self.attend = mha.num_heads, True, attend

    def forward(self, query, key, value, attn_mask=None, key_padding_mask=None, need_weights=False, is_causal=False):
        b, n, d = query.shape  # self-attention: key and value are query
        qkv = F.linear(query, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.view(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = self.attend(q, k, v).transpose(1, 2).reshape(b, n, d)
        return self.out_proj(out), None


def use_backend(model: nn.TransformerEncoder, backend: backends.Backend, n: int, causal: bool, device) -> None:
    """SDPA backends run inside nn.MultiheadAttention; others replace it, weights kept."""
    if backend.sdpa is not None:
        return
    if backend.attend is None:
        raise NotImplementedError(f"backend {backend.name!r} has no attention kernel for a model")
    attend = backend.attend(n, causal, device)
    for layer in model.layers:
        layer.self_attn = BackendAttention(layer.self_attn, attend)




@contextlib.contextmanager
def no_fastpath():
    was = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(was)


def causal_placeholder(n: int, device, dtype) -> torch.Tensor:
    """The mask TransformerEncoder wants beside ``is_causal=True``. With the hint, MHA hands
    SDPA ``is_causal`` and drops the mask unread, so a zero-stride tensor stands in for the
    n x n one (which would add n^2 bytes no kernel reads). The reference uses a real mask."""
    return torch.zeros((), device=device, dtype=dtype).expand(n, n)


def reference_error(model, x: torch.Tensor, out: torch.Tensor, causal: bool) -> float:
    """Relative error of out[:REF_BATCH] against a stock fp32 encoder (math SDPA, real mask)."""
    n, d = x.shape[1], x.shape[2]
    ref = make_model(d, model.layers[0].self_attn.num_heads, x.device, torch.float32)
    ref.load_state_dict(model.state_dict())
    mask = nn.Transformer.generate_square_subsequent_mask(n, device=x.device) if causal else None
    with torch.nn.attention.sdpa_kernel([torch.nn.attention.SDPBackend.MATH]), no_fastpath():
        want = ref(x[:REF_BATCH].float(), mask=mask, is_causal=False)
    got = out[:REF_BATCH].float()
    return float((got - want).norm() / want.norm())


def build(p: dict, device: torch.device) -> Work:
    b, h, n, d = p["batch_size"], p["num_heads"], p["seq_len"], p["head_dim"]
    dtype, causal, train = dtype_of(p["dtype"]), p["causal"], p["mode"] == "fwd_bwd"
    torch.manual_seed(p.get("seed", 0))  # the model's initial weights
    model = make_model(h * d, h, device, dtype).requires_grad_(train)
    backend = backends.get(p["backend"])
    use_backend(model, backend, n, causal, device)
    gen = torch.Generator(device).manual_seed(p.get("seed", 0))
    x = torch.randn(b, n, h * d, device=device, dtype=dtype, generator=gen).requires_grad_(train)
    mask = causal_placeholder(n, device, dtype) if causal else None
    forward = lambda: model(x, mask=mask, is_causal=causal)

    @contextlib.contextmanager
    def pinned():
        with no_fastpath(), backend.pinned():
            yield

    def check(out=None) -> float:
        with torch.no_grad():
            return reference_error(model, x, forward() if out is None else out, causal)

    def again():
        """The same step on a copy of x (the model's weights are shared)."""
        x2 = x.detach().clone().requires_grad_(train)
        return make_step(lambda: model(x2, mask=mask, is_causal=causal), (x2, *model.parameters()), train, gen,
                         grad)

    grad: list = []  # the backward's gradient, one for the step and its copies

    return Work(
        step=make_step(forward, (x, *model.parameters()), train, gen, grad),
        flops=encoder_flops(b, h, n, d, causal, p["mode"]),
        bytes=encoder_bytes(b, n, sum(t.numel() for t in model.parameters()), h * d, x.element_size(), p["mode"]),
        check=check,
        pinned=pinned,
        train=train,
        flops_convention=FLOPS_CONVENTION,
        compiled=backend.compiled,
        again=again,
    )
