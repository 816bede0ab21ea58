"""The fault matrix: concurrent sweeps on one store, compaction killed at each of its steps,
SIGTERM and double SIGINT, a full disk, settings no cluster can satisfy. Each provoked for real
(real processes, real Ray, real parquet) and checked with every reader: rows present, each
row_id once, a clean exit, none of the run's processes left behind."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest
from conftest import ROOT, each_row_once, make_cfg, run_cli, stderr_lines
from test_store import row

from orchestrator.config import ConfigError
from orchestrator.driver import plan, run
from orchestrator.store import Store


def cli(*args, **env) -> subprocess.Popen:
    """`python -m orchestrator ARGS` in a session of its own (signals go to the driver only)."""
    return subprocess.Popen([sys.executable, "-m", "orchestrator", *args, "run.progress=false"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", **env})


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def assert_gone(procs: list[psutil.Process], within_s: float = 20.0) -> None:
    deadline = time.time() + within_s
    alive = procs
    while time.time() < deadline:
        alive = [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if not alive:
            return
        time.sleep(0.2)
    raise AssertionError(f"left behind: {[(p.pid, p.name()) for p in alive]}")


def wait_rows(store, n: int, proc, timeout: float = 180) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if len(list(store.glob("*.parquet"))) >= n:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    raise AssertionError(f"fewer than {n} rows after {timeout} s")


LONG = ["+sweep=smoke", "grid.backends=[math,eager]", "grid.seq_lens=[64,80,96,112,128,144,160,176,192,208,224,240]",
        "measure.budget_ms=150", "measure.precision=0"]


# ------------------------------------------------------------------ sweeps sharing one store


@pytest.mark.slow
@pytest.mark.parametrize("n", [2, 3])
def test_concurrent_sweeps_never_measure_a_cell_twice(tmp_path, n):
    """n sweeps with overlapping grids on one store at once: each cell measured once, every
    sweep ends well, readers see each row once, the shared cells counted by the sweep that waited."""
    store = tmp_path / "results"
    grids = ["grid.seq_lens=[64,80,96,112,128,144]", "grid.seq_lens=[96,112,128,144,160,176]",
             "grid.seq_lens=[128,144,160,176,192,208]"][:n]
    procs = [cli(*LONG, g, f"store.path={store}", f"hydra.run.dir={tmp_path / f'run{i}'}")
             for i, g in enumerate(grids)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
        assert "Traceback" not in err
    cells = len({s for g in grids for s in g.split("[")[1].rstrip("]").split(",")}) * 2
    each_row_once(store, cells=cells)
    assert any("measured by another sweep" in out for out, _ in outs)
    assert not list((store.parent / "results.meta" / "claims").iterdir())  # every claim released


def test_claims_are_taken_over_from_a_dead_sweep(tmp_path):
    s = Store(tmp_path / "results")
    s.prepare()
    assert s.claims.claim("c1", "run-a") is None
    assert s.claims.claim("c1", "run-b")["run_id"] == "run-a"  # held by a live run (this process)
    claim = s.meta / "claims" / "c1"
    claim.write_text(json.dumps({"run_id": "run-a", "host": os.uname().nodename, "pid": 999999999, "since": 0}))
    assert s.claims.claim("c1", "run-b") is None  # its process is gone: taken over
    s.claims.release("c1", "run-b")
    assert not claim.exists()


# ------------------------------------------------------------------ compaction killed at each step


def stored(tmp_path, n=30) -> Store:
    s = Store(tmp_path / "results")
    s.prepare()
    for i in range(n):
        s.append([row(f"c{i}", "ok")])
    return s


COMPACT = "from orchestrator.store import Store; Store({path!r}).compact()"
STEPS = ["compact:journal", "publish:data", "compact:published", "compact:unlinking"]


@pytest.mark.parametrize("step", STEPS)
def test_compaction_killed_at_each_step_loses_and_doubles_nothing(tmp_path, step):
    s = stored(tmp_path)
    ids = set(s.read()["row_id"])
    proc = subprocess.run([sys.executable, "-c", COMPACT.format(path=str(s.path))], cwd=ROOT,
                          env={**os.environ, "ATTN_SWEEP_KILL_AT": step}, capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    if step in ("compact:journal", "publish:data"):  # nothing visible changed yet
        each_row_once(s.path, ids)
    assert set(s.read()["row_id"]) == ids  # the project's own reader: each row once, at any instant
    s.compact()  # the next compaction (or any sweep's start) finishes or undoes the one cut short
    each_row_once(s.path, ids)
    assert len(s.parts()) == 1
    assert not list((s.meta / "tmp").iterdir()) and not (s.meta / "compact.journal").exists()


def test_two_compactions_at_once_keep_each_row_once(tmp_path):
    s = stored(tmp_path, 200)
    ids = set(s.read()["row_id"])
    code = COMPACT.format(path=str(s.path))
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=ROOT) for _ in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    each_row_once(s.path, ids)
    s.compact()
    each_row_once(s.path, ids)


def test_repeated_rows_left_by_an_old_kill_are_merged_away(tmp_path):
    s = stored(tmp_path, 10)
    ids = set(s.read()["row_id"])
    dup = s.path / "data-copy.parquet"
    dup.write_bytes(s.parts()[0].read_bytes())  # a row in two files, as a kill after the rename left it
    (s.meta / "tmp" / "otherhost~1~data-x.parquet.tmp").write_bytes(b"x")  # and a temp file
    os.utime(s.meta / "tmp" / "otherhost~1~data-x.parquet.tmp", (0, 0))
    s.compact()
    each_row_once(s.path, ids)
    assert not list((s.meta / "tmp").iterdir())


# ------------------------------------------------------------------ signals


@pytest.mark.slow
@pytest.mark.parametrize("signals", [(signal.SIGTERM,), (signal.SIGINT, signal.SIGINT)], ids=["sigterm", "sigint-x2"])
def test_a_signalled_sweep_stops_cleanly(tmp_path, signals):
    store = tmp_path / "results"
    proc = cli(*LONG, f"store.path={store}", f"hydra.run.dir={tmp_path / 'run'}")
    wait_rows(store, 3, proc)
    family = descendants(proc.pid)
    for sig in signals:
        os.kill(proc.pid, sig)
        time.sleep(0.5)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signals[0], err[-3000:]
    assert "Traceback" not in err and "SIGTERM received" not in err, err[-3000:]
    assert "interrupted:" in err and "run the same command again to resume" in err
    assert_gone(family)
    saved = Store(store).read()
    assert len(saved) >= 3
    each_row_once(store, set(saved.row_id))


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_a_signal_while_the_cluster_starts_stops_cleanly_and_says_which(tmp_path, sig):
    """While ray.init runs, Ray's own SIGTERM handler is in place (sys.exit(15)): the run still
    ends as on any SIGTERM, 143 with its line, and leaves no Ray process behind."""
    store = tmp_path / "results"
    proc = cli(*LONG, f"store.path={store}", f"hydra.run.dir={tmp_path / 'run'}")
    for line in proc.stdout:
        if line.startswith("cluster: starting a private Ray cluster"):
            break
    time.sleep(0.3)  # inside ray.init: its processes starting
    family = descendants(proc.pid)
    os.kill(proc.pid, sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err[-3000:]
    assert f"interrupted: {signal.Signals(sig).name}" in err and "Traceback" not in err, err[-3000:]
    assert_gone(family + descendants(proc.pid))


@pytest.mark.slow
def test_a_second_ctrl_c_while_the_sweep_exits_changes_nothing(tmp_path):
    """The first Ctrl-C's clean-up is done and the process is on its way out (Hydra, the
    interpreter's exit) when more come, as from a user who keeps pressing it: it still ends
    with 130 and no traceback."""
    store = tmp_path / "results"
    proc = cli(*LONG, f"store.path={store}", f"hydra.run.dir={tmp_path / 'run'}")
    wait_rows(store, 3, proc)
    lines: list[str] = []
    said = threading.Event()

    def read() -> None:
        for line in proc.stderr:
            lines.append(line)
            if "interrupted:" in line:
                said.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    os.kill(proc.pid, signal.SIGINT)
    assert said.wait(120), "".join(lines)[-3000:]
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline:
        try:
            os.kill(proc.pid, signal.SIGINT)
        except ProcessLookupError:  # gone: nothing left to cut short
            break
        time.sleep(0.01)
    proc.wait(timeout=10)
    reader.join(timeout=10)
    err = "".join(lines)
    assert proc.returncode == 128 + signal.SIGINT, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]


@pytest.mark.slow
def test_sigterm_during_the_report_ends_with_143_and_one_line(tmp_path):
    """After the last row (the summary line; the report follows, a second or so): the rows are
    kept and the exit says what happened, as during the cells."""
    store = tmp_path / "results"
    proc = cli("+sweep=smoke", "grid.backends=[math,eager]", f"store.path={store}",
               f"hydra.run.dir={tmp_path / 'run'}")
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if " cells run (" in line:
            os.kill(proc.pid, signal.SIGTERM)
            break
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, "".join(lines) + out + err[-3000:]
    assert "Traceback" not in err and "its report may be missing" in err, err[-3000:]
    hint = err.split("its report may be missing: ")[1].split(" makes it")[0]  # the command it names makes it
    words = shlex.split(hint)
    assert words[:3] == ["python", "-m", "orchestrator.report"], hint
    (tmp_path / "run" / "report.html").unlink(missing_ok=True)
    made = subprocess.run([sys.executable, *words[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert made.returncode == 0 and (tmp_path / "run" / "report.html").is_file(), made.stderr[-2000:]
    assert len(Store(store).read()) == 4


@pytest.mark.slow
@pytest.mark.parametrize("rerun", ["none", "all"])
def test_an_interrupted_run_gives_a_library_caller_its_signal_handlers_back(tmp_path, caplog, rerun):
    """driver.run in a caller's process: Interrupted, the rows kept, and Ctrl-C the caller's again.
    The line says how to resume: the same command; after run.rerun=all, what the same command and
    a run without it would each do (without it, the cells not reached keep any earlier rows)."""
    from orchestrator.errors import Interrupted

    store = tmp_path / "results"
    cfg = make_cfg(*LONG, f"run.rerun={rerun}", store=store)
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    over = threading.Event()  # run returned: no signal for this process any more (other tests run in it)

    def interrupt() -> None:
        while len(list(store.glob("*.parquet"))) < 3:
            if over.wait(0.05):
                return
        os.kill(os.getpid(), signal.SIGINT)

    thread = threading.Thread(target=interrupt, daemon=True)
    thread.start()
    try:
        with pytest.raises(Interrupted) as caught:
            run(cfg, str(tmp_path / "run"))
    finally:
        over.set()
        thread.join()
    assert caught.value.signum == signal.SIGINT
    assert {sig: signal.getsignal(sig) for sig in before} == before
    assert len(Store(store).read()) >= 3
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("interrupted:")]
    resume = ("without run.rerun=all it measures only the cells with no row, and those this run did not reach "
              "keep their earlier rows" if rerun == "all" else "run the same command again to resume")
    assert len(said) == 1 and resume in said[0], said


# ------------------------------------------------------------------ a full disk, an unwritable store


def mount_tmpfs(path, size: str) -> bool:
    path.mkdir(parents=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


@pytest.mark.slow
def test_a_full_disk_stops_with_one_line_and_keeps_every_row(tmp_path):
    disk = tmp_path / "disk"
    if os.geteuid() != 0 or not mount_tmpfs(disk, "300k"):
        pytest.skip("cannot mount a small tmpfs here (needs root and CAP_SYS_ADMIN)")
    try:
        store = disk / "results"
        proc = run_cli(*LONG, f"store.path={store}", f"hydra.run.dir={tmp_path / 'run'}", timeout=300)
        assert proc.returncode == 1, proc.stderr[-2000:]
        errors = stderr_lines(proc)
        assert len(errors) == 1 and "cannot write to the dataset" in errors[0] and str(store) in errors[0], errors
        saved = Store(store).read()
        assert 0 < len(saved) < 24
        each_row_once(store, set(saved.row_id))
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


@pytest.mark.parametrize("where", ["a file", "/proc/results"])
def test_an_unwritable_store_is_one_line_before_ray(tmp_path, where):
    path = tmp_path / "file" if where == "a file" else "/proc/results"
    if where == "a file":
        path.write_text("not a folder")
    proc = run_cli("+sweep=smoke", f"store.path={path}", f"hydra.run.dir={tmp_path / 'run'}", timeout=120)
    errors = stderr_lines(proc)
    assert proc.returncode == 2 and len(errors) == 1 and "store.path" in errors[0], proc.stderr[-2000:]
    assert "cluster:" not in proc.stdout  # refused before Ray


# ------------------------------------------------------------------ settings no cluster can satisfy


@pytest.mark.parametrize("args, words", [
    (["cluster.num_cpus=0"], "cluster.num_cpus = 0"),
    (["run.device=cuda"], "run.device = 'cuda'"),
    (["cluster.num_gpus=1"], "cluster.num_gpus = 1"),
    (["cluster.address=127.0.0.1:1", "cluster.num_cpus=2"], "cluster.num_cpus / cluster.num_gpus"),
    (["cluster.num_cpus=2", "run.cpu_workers=3"], "run.cpu_workers = 3"),
    (["grid.accelerators=[A100]"], "no GPU of type 'A100'"),
])
def test_impossible_settings_are_refused_in_one_line(tmp_path, args, words):
    if "device" in args[0] or "num_gpus" in args[0]:
        from orchestrator.config import host_gpus

        if host_gpus():
            pytest.skip("this host has a GPU")
    t0 = time.time()
    proc = run_cli("+sweep=smoke", *args, f"store.path={tmp_path / 'r'}", f"hydra.run.dir={tmp_path / 'run'}",
                   timeout=180)
    errors = stderr_lines(proc)
    assert proc.returncode == 2 and len(errors) == 1 and words in errors[0], proc.stderr[-2000:]
    assert time.time() - t0 < 120  # nothing waits forever
    assert not (tmp_path / "r").exists() or not list((tmp_path / "r").glob("*.parquet"))  # no rows to count as done


def test_a_huge_grid_is_refused_before_it_is_expanded():
    cfg = make_cfg("grid.seq_lens=[" + ",".join(str(64 * i) for i in range(1, 1001)) + "]",
                   "grid.batch_sizes=[" + ",".join(str(i) for i in range(1, 201)) + "]")
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match="1,000,000 cells, over run.max_cells"):
        plan(cfg)
    assert time.perf_counter() - t0 < 1.0


def test_a_head_size_no_kernel_takes_is_unsupported_at_once(ray_local, tmp_path):
    t0 = time.time()
    s = run(make_cfg("+sweep=smoke", "grid.head_dims=[100000]", store=tmp_path / "r"))
    assert s.statuses == {"unsupported": 6} and time.time() - t0 < 60
    df = Store(tmp_path / "r").read()
    assert (df.attempts == 0).all() and df.error.str.contains("head sizes up to").all()
    assert df.device_name.notna().all() and df.torch_version.notna().all() and df.host.notna().all()


@pytest.mark.slow
def test_other_measure_settings_are_said_and_rerun_changed_measures_them(ray_local, tmp_path, capsys):
    store = tmp_path / "r"
    run(make_cfg("+sweep=smoke", "grid.backends=[math]", store=store))
    capsys.readouterr()
    same = run(make_cfg("+sweep=smoke", "grid.backends=[math]", "measure.budget_ms=30", store=store))
    said = capsys.readouterr()
    assert not same.statuses and same.other_settings == 2
    assert "measured with other measure.* settings" in said.err and "run.rerun=changed" in said.err
    redo = run(make_cfg("+sweep=smoke", "grid.backends=[math]", "measure.budget_ms=30", "run.rerun=changed",
                        store=store))
    assert redo.statuses == {"ok": 2}
    again = run(make_cfg("+sweep=smoke", "grid.backends=[math]", "measure.budget_ms=30", store=store))
    assert not again.statuses and again.other_settings == 0
