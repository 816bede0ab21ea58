"""Grid expansion: pure, no Ray, no GPU."""

import subprocess
import sys

from conftest import ROOT, make_cfg

from orchestrator.grid import Cell, expand


def test_full_sweep_is_the_480_cells_the_issue_names():
    cells = expand(make_cfg("+sweep=full"))
    assert len(cells) == 480
    assert {c.backend for c in cells} == {"eager", "math", "flash", "efficient", "cudnn"}
    assert sorted({c.seq_len for c in cells}) == [2**k for k in range(7, 15)]
    assert {c.batch_size for c in cells} == {1, 8, 32}
    assert {c.dtype for c in cells} == {"float16", "bfloat16"}
    assert all(c.num_heads * c.head_dim == 2048 for c in cells)
    assert all(c.causal for c in cells)
    assert len({c.cell_id for c in cells}) == 480


def test_seed_sweep_is_the_notebook_grid():
    cells = expand(make_cfg("+sweep=seed"))
    assert len(cells) == 20
    shapes = {(c.num_heads, c.head_dim, c.batch_size, c.dtype, c.causal) for c in cells}
    assert shapes == {(32, 16, 32, "float16", True)}
    assert sorted({c.seq_len for c in cells}) == [128, 256, 512, 1024]


def test_overrides_change_the_axes_and_duplicates_collapse():
    cfg = make_cfg("grid.backends=[math,flash,math]", "grid.seq_lens=[512,128,512]", "grid.batch_sizes=[1,2]",
                   "grid.modes=[fwd,fwd_bwd]", "grid.causal=[true,false]")
    cells = expand(cfg)
    assert len(cells) == 2 * 2 * 2 * 2 * 2
    assert [c.seq_len for c in cells[:2]] == [128, 128]  # short cells first within a group


def test_cell_id_is_stable_across_processes_and_depends_on_every_parameter():
    cell = Cell("attention", "flash", "fwd", "float16", True, 64, 32, 8, 1024, "H100")
    code = ("from orchestrator.grid import Cell; "
            "print(Cell('attention','flash','fwd','float16',True,64,32,8,1024,'H100').cell_id)")
    other = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert other.stdout.strip() == cell.cell_id
    variants = [
        Cell("attention", "flash", "fwd", "float16", True, 64, 32, 8, 2048, "H100"),
        Cell("attention", "math", "fwd", "float16", True, 64, 32, 8, 1024, "H100"),
        Cell("attention", "flash", "fwd", "float16", True, 64, 32, 8, 1024, "T4"),
        Cell("encoder", "flash", "fwd", "float16", True, 64, 32, 8, 1024, "H100"),
        Cell("attention", "flash", "fwd_bwd", "float16", True, 64, 32, 8, 1024, "H100"),
    ]
    assert len({cell.cell_id, *(v.cell_id for v in variants)}) == 6


def test_accelerators_make_one_cell_per_gpu_model():
    cfg = make_cfg("+sweep=seed", "grid.accelerators=[T4,H100]")
    cells = expand(cfg)
    assert len(cells) == 40
    assert {c.target for c in cells} == {"T4", "H100"}
    plain = expand(make_cfg("+sweep=seed"), default_target="A100")
    assert {c.target for c in plain} == {"A100"}
