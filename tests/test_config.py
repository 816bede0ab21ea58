"""Real Hydra composition of every sweep, and bad input stopped before any work."""

from pathlib import Path

import pytest
from conftest import ROOT, make_cfg, run_cli, stderr_lines
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from orchestrator.config import ConfigError
from orchestrator.driver import plan

SWEEPS = sorted(p.stem for p in (ROOT / "conf" / "sweep").glob("*.yaml"))


def test_sweeps_exist():
    assert {"smoke", "seed", "full", "faults"} <= set(SWEEPS)


@pytest.mark.parametrize("sweep", SWEEPS)
def test_every_sweep_composes_and_validates(sweep):
    cfg = make_cfg(f"+sweep={sweep}")
    assert cfg.sweep_name == sweep
    assert len(plan(cfg)) > 0


def test_command_line_overrides_reach_the_grid():
    cfg = make_cfg("+sweep=full", "grid.seq_lens=[512,1024]", "grid.dtypes=[bfloat16]", "run.isolation=task")
    assert list(cfg.grid.seq_lens) == [512, 1024] and list(cfg.grid.dtypes) == ["bfloat16"]
    assert len(plan(cfg)) == 5 * 2 * 3 * 2


def test_a_new_setting_at_its_old_behaviour_keeps_stored_rows_current():
    """measure.input_sets=1 measures as before the setting existed: the key rows are stored
    under stays what it was (a hash of the other settings); input_sets=4, or the default 8, is
    another key (rows of one input set are measured again under run.rerun=changed)."""
    import hashlib
    import json

    from omegaconf import OmegaConf

    from orchestrator.driver import measure_key

    cfg = make_cfg("+sweep=smoke", "measure.input_sets=1")
    before = {k: v for k, v in OmegaConf.to_container(cfg.measure).items() if k != "input_sets"}
    old = hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()[:12]
    assert measure_key(cfg)[0] == old and "input_sets" not in measure_key(cfg)[1]
    assert measure_key(make_cfg("+sweep=smoke", "measure.input_sets=4"))[0] != old
    assert make_cfg("+sweep=smoke").measure.input_sets == 8
    assert measure_key(make_cfg("+sweep=smoke"))[0] != old


@pytest.mark.parametrize("module", ["orchestrator", "orchestrator.report"])
def test_two_commands_started_together_get_folders_of_their_own(module):
    """Sweeps may share one store at once; their run folders (sweep.log, the report) may not:
    two commands started together name different folders (the time to the microsecond; with
    seconds, they named the same one)."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", module, "--cfg", "all", "--resolve", "-p", "hydra.run.dir"]
    procs = [subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    dirs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert all(d.startswith("outputs/") for d in dirs) and dirs[0] != dirs[1], dirs


BAD_VALUES = [  # (overrides, words the one-line message must contain)
    (["grid.backends=[flash,turbo]"], "grid.backends[1] = 'turbo'"),
    (["grid.seq_lens=[128,0]"], "grid.seq_lens[1] = 0"),
    (["grid.seq_lens=[-64]"], "grid.seq_lens[0] = -64"),
    (["grid.batch_sizes=[0]"], "grid.batch_sizes[0] = 0"),
    (["grid.head_dims=[0]"], "grid.head_dims[0] = 0"),
    (["grid.num_heads=[0]"], "grid.num_heads[0] = 0"),
    (["grid.dtypes=[float8]"], "grid.dtypes[0] = 'float8'"),
    (["grid.modes=[train]"], "grid.modes[0] = 'train'"),
    (["grid.backends=[]"], "grid.backends is empty"),
    (["grid.seq_lens=[]"], "grid.seq_lens is empty"),
    (["grid.causal=[]"], "grid.causal is empty"),
    (["grid.model_dim=2048"], "exactly one of grid.num_heads and grid.model_dim"),
    (["+sweep=full", "grid.model_dim=1000"], "grid.model_dim = 1000"),
    (["run.isolation=threads"], "run.isolation = 'threads'"),
    (["run.rerun=some"], "run.rerun = 'some'"),
    (["run.cell_timeout_s=0"], "run.cell_timeout_s = 0"),
    (["run.retries=-1"], "run.retries = -1"),
    (["run.cells_per_process=-1"], "run.cells_per_process = -1"),
    (["run.cells_per_process=0", "run.isolation=task"], "run.cells_per_process = 0: only pool isolation"),
    (["run.device=tpu"], "run.device = 'tpu'"),
    (["measure.min_iters=50", "measure.max_iters=10"], "measure.min_iters = 50"),
    (["measure.duty=0"], "measure.duty = 0"),
    (["measure.duty=1.5"], "measure.duty = 1.5"),
    (["measure.input_sets=0"], "measure.input_sets = 0"),
    (["+sweep=full", "run.max_cells=100"], "480 cells, over run.max_cells = 100"),
    (["+grid.unknown_axis=[1]"], "grid.unknown_axis: no such key; grid takes: backends, seq_lens"),
    (["+colour=blue"], "colour: no such key; the top level takes: sweep_name"),
]


@pytest.mark.parametrize("overrides,words", BAD_VALUES)
def test_bad_values_give_one_line_naming_the_value(overrides, words):
    with pytest.raises(ConfigError) as err:
        plan(make_cfg(*overrides))
    msg = str(err.value)
    assert words in msg and "\n" not in msg


BAD_TYPES = [  # rejected by Hydra against the ConfigStore schema while composing
    "grid.seq_lens=[128,abc]",
    "grid.seq_lens=128",
    "grid.causal=[maybe]",
    "grid.unknown_axis=[1]",
    "run.cell_timeout_s=soon",
    "+sweep=nonexistent",
]


@pytest.mark.parametrize("override", BAD_TYPES)
def test_bad_types_and_unknown_keys_fail_composition(override):
    with pytest.raises((HydraException, OmegaConfBaseException)):
        make_cfg(override)


@pytest.mark.parametrize("args,words", [
    (["grid.backends=[flash,turbo]"], "grid.backends[1] = 'turbo'"),
    (["grid.seq_lens=[0]"], "grid.seq_lens[0] = 0"),
    (["grid.dtypes=[float8]"], "grid.dtypes[0] = 'float8'"),
    (["grid.seq_lens=[abc]"], "grid.seq_lens"),
    (["cluster.address=127.0.0.1:1"], "cluster.address = '127.0.0.1:1': cannot connect"),
])
def test_cli_stops_before_any_work(tmp_path: Path, args, words):
    store = tmp_path / "results"
    proc = run_cli(*args, f"store.path={store}", f"hydra.run.dir={tmp_path / 'run'}", timeout=120)
    assert proc.returncode != 0
    assert words in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "Started a local Ray instance" not in proc.stderr + proc.stdout
    assert not store.exists() or not list(store.glob("*.parquet"))


@pytest.mark.parametrize("env,args,says", [
    ({"RAY_ADDRESS": None}, ["cluster.address=127.0.0.1:1"], "cluster.address = '127.0.0.1:1': cannot connect"),
    ({"RAY_ADDRESS": "127.0.0.1:1"}, [], "RAY_ADDRESS = '127.0.0.1:1': cannot connect"),
])
def test_an_address_nobody_answers_is_refused_at_once(tmp_path: Path, env, args, says):
    """Nothing listens there: the one line comes as soon as a connection is refused, not after
    the 30 s in which Ray's client asked again and again whether the cluster checks tokens (the
    line was printed at once, and the command then sat 30 s before it exited)."""
    proc = run_cli(*args, f"store.path={tmp_path / 'r'}", f"hydra.run.dir={tmp_path / 'run'}", timeout=120, env=env)
    errors = stderr_lines(proc)
    assert proc.returncode == 2 and errors == [f"error: {says} ([Errno 111] Connection refused)"], proc.stderr[-2000:]
    assert proc.wall_s < 20, f"{proc.wall_s:.1f} s to refuse an address nobody answers"


@pytest.mark.parametrize("args,words", [
    (["grid.seq_lens=[128,abc]"], "grid.seq_lens[1]"),  # a wrong type
    (["grid.unknown_axis=[1]"], "grid.unknown_axis: no such key; grid takes: backends, seq_lens"),  # an unknown key
    (["+sweep=nonexistent"], "sweep/nonexistent"),  # a missing config group option
    (["grid.seq_lens=[128"], "[128"),  # an override that does not parse
    (["grid.seq_lens=128"], "grid.seq_lens takes a list, even of one value: grid.seq_lens=[128]"),  # a scalar
    (["+sweep=broken"], "broken.yaml"),  # a YAML syntax error, in a config file of the search path
])
def test_hydra_mistakes_are_one_line_naming_the_key_or_file(tmp_path: Path, args, words):
    (tmp_path / "conf" / "sweep").mkdir(parents=True)
    (tmp_path / "conf" / "sweep" / "broken.yaml").write_text("grid:\n  seq_lens: [128, 256\n  batch: : x\n")
    proc = run_cli(*args, f"hydra.searchpath=[file://{tmp_path / 'conf'}]", f"store.path={tmp_path / 'r'}",
                   f"hydra.run.dir={tmp_path / 'run'}", timeout=120)
    errors = stderr_lines(proc)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(errors) == 1 and errors[0].startswith("error: ") and words in errors[0], errors
    assert "Traceback" not in proc.stderr and "HYDRA_FULL_ERROR" not in proc.stderr


def test_help_describes_this_tool():
    proc = run_cli("--help", timeout=60)
    assert proc.returncode == 0
    for words in ("attn-sweep", "+sweep=NAME", "sweep: capacity, faults, full, seed, smoke", "grid.seq_lens",
                  "run.fail_on", "cluster.address", "python -m orchestrator.report"):
        assert words in proc.stdout, words
