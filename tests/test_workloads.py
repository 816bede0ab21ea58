"""Workloads (attention op, encoder) x modes (fwd, fwd_bwd) x backends, measured for real on
tiny shapes; the kernel matcher; FlexAttention. GPU tests: ``pytest -m gpu tests/test_workloads.py``."""

from __future__ import annotations

import re

import pytest
import torch
from conftest import ensure_ray, make_cfg

import orchestrator.config  # noqa: F401  (registers the config schema that make_cfg composes)
from tasks import encoder, kernels
from tasks.cell import run_cell
from tasks.work import attention_flops

FAST = dict(warmup_iters=1, warmup_ms=0.0, budget_ms=5.0, min_iters=2, max_iters=5, flush_l2=False,
            memory=True, accuracy=True, kernels="ops", seed=0)


def spec(workload, backend, mode="fwd", device="cpu", dtype="float32", b=2, h=4, n=64, d=16, **measure):
    return dict(workload=workload, backend=backend, mode=mode, dtype=dtype, causal=True, head_dim=d,
                num_heads=h, batch_size=b, seq_len=n, target=device, device=device, seed=0,
                measure={**FAST, **measure})


@pytest.fixture
def fresh_dynamo():
    """Each cell is a fresh process in a sweep; here flex cells share one, so reset its compile cache."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("workload", ["attention", "encoder"])
@pytest.mark.parametrize("mode", ["fwd", "fwd_bwd"])
@pytest.mark.parametrize("backend", ["math", "flash", "eager"])
def test_cell_measures_for_real(workload, mode, backend):
    r = run_cell(spec(workload, backend, mode))
    assert r["status"] == "ok", r["error"]
    assert r["rel_error"] < 1e-4
    assert r["median_ms"] > 0 and r["tflops"] > 0
    assert r["kernels_match"] is True, r["kernels"]
    assert r["peak_allocated_bytes"] > 0
    assert r.get("compile_s") is None  # nothing compiled
    assert r["flops_convention"].startswith("encoder") == (workload == "encoder")


@pytest.mark.parametrize("workload", ["attention", "encoder"])
@pytest.mark.parametrize("mode", ["fwd", "fwd_bwd"])
def test_a_step_on_copies_of_the_inputs_computes_the_same(workload, mode):
    """Work.again (measure.input_sets): a step on copies of the inputs computes what the step
    computes (that the copies are new memory: tests/test_gpu.py, where it matters)."""
    import importlib

    p = spec(workload, "math", mode)
    work = importlib.import_module(f"tasks.{workload}").build(p, torch.device("cpu"))
    with work.pinned():
        first, copy = work.step(), work.again()()
    first, copy = (x if isinstance(x, tuple) else (x,) for x in (first, copy))
    assert len(first) == len(copy) and all(torch.allclose(a, b) for a, b in zip(first, copy, strict=True))


def test_flops_follow_the_conventions():
    assert attention_flops(2, 4, 64, 16, True, "fwd") == 4 * 2 * 4 * 64 * 64 * 16 / 2
    assert attention_flops(2, 4, 64, 16, True, "fwd_bwd") == 3.5 * attention_flops(2, 4, 64, 16, True, "fwd")
    dm, ffn = 4 * 16, encoder.FFN
    linear, attn = 2 * 2 * 64 * (4 * dm * dm + 2 * dm * ffn), 4 * 2 * 4 * 64 * 64 * 16 / 2
    assert encoder.encoder_flops(2, 4, 64, 16, True, "fwd") == encoder.LAYERS * (linear + attn)
    assert encoder.encoder_flops(2, 4, 64, 16, True, "fwd_bwd") == encoder.LAYERS * (3 * linear + 3.5 * attn)
    assert run_cell(spec("encoder", "math"))["flops"] == encoder.encoder_flops(2, 4, 64, 16, True, "fwd")


@pytest.mark.parametrize("workload", ["attention", "encoder"])
def test_training_memory_counts_what_autograd_keeps(workload):
    fwd = run_cell(spec(workload, "math", "fwd", n=128))
    train = run_cell(spec(workload, "math", "fwd_bwd", n=128))
    assert train["peak_allocated_bytes"] > 1.2 * fwd["peak_allocated_bytes"]


def test_low_precision_encoder_is_checked_against_fp32():
    r = run_cell(spec("encoder", "flash", dtype="bfloat16", h=2, n=32))
    assert r["status"] == "ok", r["error"]
    assert 1e-4 < r["rel_error"] < 5e-2  # bf16 rounding, not a wrong result


def test_a_wrong_encoder_output_shows_in_rel_error(monkeypatch):
    """The fp32 reference is independent: a non-causal eager kernel is caught."""
    from tasks import backends

    eager = backends.get("eager")
    broken = backends.Backend("eager", eager.fn, attend=lambda n, causal, dev: eager.attend(n, False, dev))
    monkeypatch.setitem(backends.BACKENDS, "eager", broken)
    assert run_cell(spec("encoder", "eager"))["rel_error"] > 0.05


def test_unavailable_backends_are_unsupported_rows():
    for mode in ("fwd", "fwd_bwd"):
        r = run_cell(spec("encoder", "efficient", mode))  # no memory-efficient kernel on the CPU
        assert r["status"] == "unsupported" and r["error"]
    r = run_cell(spec("encoder", "fault_raise"))
    assert r["status"] == "unsupported" and "no attention kernel" in r["error"]


@pytest.mark.parametrize("workload", ["attention", "encoder"])
def test_flex_compiles_once_outside_the_timing(workload, fresh_dynamo):
    r = run_cell(spec(workload, "flex", n=128))
    assert r["status"] == "ok", r["error"]
    assert r["compile_s"] > r["median_ms"] / 1e3
    assert r["rel_error"] < 1e-4
    assert r["kernels_match"] is None  # compiled code runs under no dispatch mode: gpu mode names it
    r = run_cell(spec(workload, "flex", "fwd_bwd", n=128))  # torch has no flex backward on the CPU
    assert r["status"] == "unsupported" and "backward" in r["error"]


def test_notebook_fast_path_never_runs_the_pinned_backend():
    """As the notebook ran it (inference mode, fast path on), SDPA is never called: the
    matcher says so; the encoder workload (fast path off) runs the pinned kernel."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model = encoder.make_model(64, 4, "cpu", torch.float32)
    x, mask = torch.randn(2, 64, 64), torch.nn.Transformer.generate_square_subsequent_mask(64)
    with torch.inference_mode(), sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        ran = kernels.record(lambda: model(x, mask=mask, is_causal=True), torch.device("cpu"), "flash")
        with encoder.no_fastpath():
            fixed = kernels.record(lambda: model(x, mask=mask, is_causal=True), torch.device("cpu"), "flash")
    assert "aten::_transformer_encoder_layer_fwd" in ran["kernels"] and ran["kernels_match"] is False
    assert fixed["kernels_match"] is True and torch.backends.mha.get_fastpath_enabled()


# Kernel names as the profiler reports them on an H100 (torch 2.x, CUDA 12).
FLASH = ["void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128, 128, 4, false, false, "
         "cutlass::half_t, Flash_kernel_traits<64, 128, 128, 4, cutlass::half_t> >, false, true, false, false, "
         "true, true, false, false>(pytorch_flash::Flash_fwd_params)"]
FLASH_BWD = ["void pytorch_flash::flash_bwd_dot_do_o_kernel<true, Flash_bwd_kernel_traits<64, 128, 128, 8, 2, 4, 2, "
             "false, false, cutlass::half_t> >(pytorch_flash::Flash_bwd_params)",
             "void pytorch_flash::flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel<...>(pytorch_flash::Flash_bwd_params)"]
EFFICIENT = ["fmha_cutlassF_f16_aligned_64x64_rf_sm80(PyTorchMemEffAttention::AttentionKernel<cutlass::half_t, "
             "cutlass::arch::Sm80, true, 64, 64, 64, true, true>::Params)"]
CUDNN = ["cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_7_64x128x64_4x1x1_kernel0_0"]
GEMM = ["sm90_xmma_gemm_f16f16_f16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1_execute_segment_k_off_kernel",
        "nvjet_hsh_128x256_64x4_2x1_v_bz_coopA_NNT"]
SOFTMAX = ["void (anonymous namespace)::softmax_warp_forward<c10::Half, c10::Half, float, 10, false, false>"
           "(c10::Half*, c10::Half const*, int, int, int, bool const*, int, bool)"]
FASTPATH = ["void at::native::(anonymous namespace)::transform_bias_rescale_qkv_kernel<c10::Half, float, true>(...)"]
FLEX = ["triton_tem_fused_0", "triton_per_fused_1"]
ELEMENTWISE = ["void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<c10::Half>, ...>(...)"]


@pytest.mark.parametrize(
    "backend, names, want",
    [
        ("flash", FLASH + GEMM + ELEMENTWISE, True),
        ("flash", FLASH + FLASH_BWD, True),
        ("flash", GEMM + SOFTMAX, False),  # fell back to math
        ("flash", GEMM + SOFTMAX + FASTPATH, False),  # the encoder's fast path
        ("flash", EFFICIENT, False),
        ("efficient", EFFICIENT + GEMM, True),
        ("efficient", FLASH, False),
        ("cudnn", CUDNN + GEMM, True),
        ("cudnn", FLASH, False),
        ("math", GEMM + SOFTMAX, True),
        ("math", GEMM + SOFTMAX + FASTPATH, False),
        ("math", FLASH + SOFTMAX, False),
        ("eager", GEMM + SOFTMAX + ELEMENTWISE, True),
        ("eager", GEMM + ["void at::native::(anonymous namespace)::cunn_SoftMaxForward<8, c10::Half>(...)"], True),
        ("eager", CUDNN, False),
        ("flex", FLEX, True),
        ("flex", GEMM + SOFTMAX, False),  # flex run uncompiled
        ("fault_raise", GEMM, None),  # no entry in the table
        ("flash", [], None),  # nothing recorded
    ],
)
def test_kernel_table_on_gpu_names(backend, names, want):
    assert kernels.match(backend, names) is want


def test_kernel_names_are_shortened_for_the_column():
    assert kernels.short(FLASH[0]) == "pytorch_flash::flash_fwd_kernel"
    assert kernels.short(EFFICIENT[0]) == "fmha_cutlassF_f16_aligned_64x64_rf_sm80"
    assert kernels.short(CUDNN[0]) == CUDNN[0]
    assert kernels.short(FASTPATH[0]) == "at::native::transform_bias_rescale_qkv_kernel"
    assert kernels.short(SOFTMAX[0]) == "softmax_warp_forward"


def test_kernel_table_on_real_cpu_names():
    """Names recorded on this machine: the flash cell's names are not math's, and vice versa."""
    flash = run_cell(spec("attention", "flash"))["kernels"].split(";")
    math = run_cell(spec("attention", "math"))["kernels"].split(";")
    assert kernels.match("flash", flash, "ops") and kernels.match("math", math, "ops")
    assert not kernels.match("flash", math, "ops") and not kernels.match("math", flash, "ops")


def test_encoder_workload_config_composes():
    cfg = make_cfg("workload=encoder")
    assert cfg.workload == "encoder" and cfg.grid.num_heads[0] * cfg.grid.head_dims[0] == 512
    seed = make_cfg("+sweep=seed", "workload=encoder")
    assert (seed.workload, seed.grid.num_heads, seed.grid.head_dims, seed.grid.batch_sizes) == (
        "encoder", [32], [16], [32])
    assert make_cfg().workload == "attention"


def test_encoder_sweep_both_modes(tmp_path):
    """A real sweep: Hydra config, Ray, a forked process per cell, parquet."""
    from orchestrator.driver import run
    from orchestrator.store import Store

    ensure_ray(0)
    cfg = make_cfg("+sweep=smoke", "workload=encoder", "grid.backends=[math,flash]", "grid.seq_lens=[32]",
                   "grid.modes=[fwd,fwd_bwd]", store=tmp_path / "results")
    summary = run(cfg)
    assert summary.statuses == {"ok": 4}
    df = Store(tmp_path / "results").read()
    assert set(df["mode"]) == {"fwd", "fwd_bwd"} and set(df["workload"]) == {"encoder"}
    assert df["kernels_match"].all() and (df["rel_error"] < 1e-4).all()
    assert df["flops_convention"].str.startswith("encoder").all()


# ---------------------------------------------------------------- GPU (pytest -m gpu)

gpu = pytest.mark.gpu
SDPA = ["flash", "efficient", "cudnn", "math"]


def _gpu(workload, backend, mode="fwd", how="gpu", **kw):
    args = dict(dtype="float16", b=2, h=8, n=1024, d=64) | kw
    return run_cell(spec(workload, backend, mode, device="cuda", kernels=how, **args))


@gpu
@pytest.mark.parametrize("how", ["gpu", "ops"])
@pytest.mark.parametrize("mode", ["fwd", "fwd_bwd"])
@pytest.mark.parametrize("backend", SDPA)
def test_gpu_pinned_backend_really_runs(backend, mode, how):
    r = _gpu("attention", backend, mode, how)
    assert r["status"] == "ok", r["error"]
    assert r["kernels_match"] is True, r["kernels"]
    assert r["rel_error"] < 1e-2


@gpu
@pytest.mark.parametrize("mode", ["fwd", "fwd_bwd"])
def test_gpu_encoder_flash_and_math_launch_different_kernels(mode):
    flash, math = (_gpu("encoder", b, mode, h=32, d=16, b=4, n=512) for b in ("flash", "math"))
    for r in (flash, math):
        assert r["status"] == "ok", r["error"]
        assert r["kernels_match"] is True, r["kernels"]
        assert r["rel_error"] < 2e-2
    assert "flash_fwd" in flash["kernels"] and "flash_fwd" not in math["kernels"]
    assert "softmax" in math["kernels"] and "softmax" not in flash["kernels"]


@gpu
@pytest.mark.parametrize("workload, mode", [("attention", "fwd_bwd"), ("encoder", "fwd")])  # compiles are slow
def test_gpu_flex(workload, mode, fresh_dynamo):
    r = _gpu(workload, "flex", mode)
    assert r["status"] == "ok", r["error"]
    assert r["kernels_match"] is True, r["kernels"]
    assert r["compile_s"] > 0 and r["rel_error"] < 1e-2


@gpu
def test_gpu_training_memory_and_eager():
    fwd, train = _gpu("encoder", "efficient"), _gpu("encoder", "efficient", "fwd_bwd")
    assert train["peak_allocated_bytes"] > fwd["peak_allocated_bytes"] > 0
    eager = _gpu("encoder", "eager", "fwd_bwd")
    assert eager["status"] == "ok" and eager["kernels_match"] is True, eager["kernels"]


@gpu
@pytest.mark.parametrize("how", ["gpu", "ops"])
def test_gpu_notebook_fast_path_is_caught(how):
    """As the notebook ran it (inference mode, float causal mask, is_causal=True, flash
    'enabled' but not pinned), the fused fast path runs and SDPA's flash never does."""
    dev = torch.device("cuda", 0)
    model = encoder.make_model(512, 32, dev, torch.float16)
    x = torch.randn(4, 512, 512, device=dev, dtype=torch.float16)
    mask = torch.nn.Transformer.generate_square_subsequent_mask(512, device=dev, dtype=torch.float16)
    with torch.inference_mode():
        ran = kernels.record(lambda: model(x, mask=mask, is_causal=True), dev, "flash", how)
    assert ran["kernels_match"] is False, ran["kernels"]
    assert "flash" not in ran["kernels"]
    assert re.search(r"transform_bias_rescale_qkv|_transformer_encoder_layer_fwd", ran["kernels"]), ran["kernels"]


def test_cpu_memory_pass_keeps_stderr_clean_of_profiler_chatter_only(capfd):
    """The CPU peak comes from torch.profiler, whose kineto (torch 2.13) writes 'USDT:' lines
    to stderr at each start and stop: a sweep's log would get two per cell. They go; a real
    message written during the call stays."""
    import os

    from tasks import timing

    def call():
        os.write(2, b"a message from the call\n")
        return torch.ones(1000, 1000)

    peak = timing.cpu_peak_bytes(call)
    err = capfd.readouterr().err
    assert peak >= 4_000_000
    assert "a message from the call" in err and "USDT:" not in err and "STAGE:" not in err


def test_cpu_ceilings_on_a_busy_machine_are_taken_from_full_size_matmuls():
    """Two processes spinning beside the measurement (a build, other cells): a small matmul then
    takes milliseconds of thread-pool waits, and a size chosen by its time came out at 128 x 128,
    a ceiling of 0.0003 TFLOP/s and cells at 20,000% of it. float32 is timed at full size, and
    a ceiling is the fastest of its repeats, which a neighbour can slow but not speed up."""
    import subprocess
    import sys

    from tasks import ceilings

    spin = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        assert ceilings._cpu_size(torch.float32) == 1024
        busy = ceilings.matmul_tflops("float32", torch.device("cpu"))
    finally:
        for p in spin:
            p.kill()
            p.wait()
    assert busy > 0.001  # 2 x 1024^3 flops: a 1024 matmul's rate, whatever the neighbours took


def test_half_precision_cells_on_a_cpu_stay_within_the_ceiling():
    """On a CPU without native float16 matmuls, a float16 matmul is emulated (0.003 TFLOP/s on this
    project's CI machine) while attention kernels convert to float32 and compute there: the
    float16 ceiling used to be the emulated rate and put math and flash cells at 1,400-1,900% of
    it. A half dtype's ceiling is now at least float32's."""
    from orchestrator.rows import shares
    from tasks import ceilings

    c = ceilings.measure(["float16", "bfloat16"], torch.device("cpu"))
    fp32 = ceilings.matmul_tflops("float32", torch.device("cpu"))
    assert min(c["tflops"].values()) >= 0.5 * fp32  # not the emulated rate
    for backend in ("math", "flash"):
        r = run_cell(spec("attention", backend, dtype="float16", n=256, d=64, h=8, b=4))
        assert r["status"] == "ok", r["error"]
        share = shares({**r, "dtype": "float16"}, c)["pct_of_compute_ceiling"]
        assert 0 < share < 150, (backend, share)
