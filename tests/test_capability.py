"""Device capability: cells a GPU model cannot run are unsupported before any work."""

from conftest import ensure_ray, make_cfg

from orchestrator.capability import reason
from orchestrator.driver import run
from orchestrator.grid import Cell, expand
from orchestrator.store import Store


def cell(backend, dtype="float16", head_dim=64, target="T4"):
    return Cell("attention", backend, "fwd", dtype, True, head_dim, 8, 1, 1024, target)


def test_t4_cannot_run_bf16_flash_or_cudnn():
    assert "bfloat16 needs sm80" in reason(cell("math", "bfloat16"))
    assert "flash attention needs sm80" in reason(cell("flash"))
    assert "cuDNN attention needs sm80" in reason(cell("cudnn"))
    assert reason(cell("efficient")) is None and reason(cell("math")) is None


def test_h100_limits_are_dtype_and_head_size():
    assert reason(cell("flash", target="H100")) is None
    assert "up to 256, not 512" in reason(cell("flash", head_dim=512, target="H100"))
    assert "not float32" in reason(cell("cudnn", "float32", target="H100"))
    assert reason(cell("flash", target="any")) is None  # unknown model: PyTorch decides


def test_seed_grid_on_a_t4_cluster():
    bad = [c for c in expand(make_cfg("+sweep=seed"), default_target="T4") if reason(c)]
    assert {c.backend for c in bad} == {"flash", "cudnn"} and len(bad) == 8


def test_cpu_cells_that_cannot_run_are_rows_without_being_scheduled(tmp_path):
    ensure_ray(0)
    store = tmp_path / "r"
    out = tmp_path / "out"
    s = run(make_cfg("+sweep=smoke", "grid.backends=[math,efficient,cudnn]", "grid.seq_lens=[64]", store=store),
            output_dir=str(out))
    df = Store(store).read().set_index("backend")
    assert df.loc["efficient", "status"] == "unsupported" and "no CPU kernel" in df.loc["efficient", "error"]
    assert df.loc["cudnn", "attempts"] == 0 and df.loc["math", "status"] == "ok"
    assert s.devices == 1 and s.statuses == {"ok": 1, "unsupported": 2}
    summary = (out / "summary.md").read_text()  # one table: the never-scheduled rows sit beside math
    assert summary.count("\n### ") == 1 and "· torch ?" not in summary
    assert "no CPU kernel" in summary
