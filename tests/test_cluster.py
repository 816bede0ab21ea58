"""Existing Ray clusters: one started with `ray start --head`, and a two-node cluster whose
nodes carry different GPU models (fake GPUs: the cells measure on the CPU)."""

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time

import pandas as pd
import pytest
from conftest import ROOT, make_cfg, run_cli, stderr_lines
from test_scheduling import SPREAD, max_overlap

from orchestrator.driver import run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def home_with_token(path) -> dict:
    """A HOME of the test's own holding a Ray token where Ray keeps it (~/.ray/auth_token), as
    any earlier local ray.init() leaves one: `ray start` then turns authentication on."""
    (path / ".ray").mkdir(parents=True, exist_ok=True)
    token = path / ".ray" / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    return {"HOME": str(path)}


def start_head(port: int, env: dict) -> subprocess.Popen:
    """`ray start --head --block --num-gpus=4` in a session of its own, answering on port."""
    ray_bin = shutil.which("ray") or os.path.join(os.path.dirname(sys.executable), "ray")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    proc = subprocess.Popen(
        [ray_bin, "start", "--head", "--block", f"--port={port}", "--num-cpus=2", "--num-gpus=4",
         "--include-dashboard=false", "--disable-usage-stats"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True, cwd=ROOT,
        env={**clean, **env},
    )
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.5)
    time.sleep(2)
    return proc


def stop_head(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture
def token_head(tmp_path):
    """A head node started with Ray's defaults: authentication on, its token in ~/.ray."""
    home = home_with_token(tmp_path / "home")
    port = free_port()
    proc = start_head(port, home)
    yield f"127.0.0.1:{port}", home
    stop_head(proc)


def driver_env(home: dict, **more) -> dict:
    """The driver's environment: the same HOME (so ~/.ray/auth_token), no RAY_* of this process."""
    return {**{k: None for k in os.environ if k.startswith("RAY_")}, **home, **more}


@pytest.mark.slow
def test_sweep_joins_a_cluster_with_token_authentication_and_uses_its_four_gpus(token_head, tmp_path):
    """Ray's defaults: `ray start` found a token in ~/.ray, so the cluster checks it; the sweep
    joins by host:port with no extra step (Ray alone would not send the token there)."""
    address, home = token_head
    store = tmp_path / "results"
    proc = run_cli(*SPREAD, f"cluster.address={address}", f"store.path={store}", f"hydra.run.dir={tmp_path / 'run'}",
                   env=driver_env(home))
    assert proc.returncode == 0, proc.stderr[-3000:]
    first = proc.stdout.splitlines()[0]
    assert first == f"cluster: joining the Ray cluster at {address}", first
    said = proc.stdout + proc.stderr
    assert "Started a local Ray instance" not in said and "InvalidAuthToken" not in said  # joined, started nothing
    assert "Token authentication" not in said and "gcs_client" not in said  # Ray's chatter stays in the log file
    df = pd.read_parquet(store)
    assert len(df) == 8 and (df.status == "ok").all()
    assert sorted(df.cuda_visible_devices.unique()) == ["0", "1", "2", "3"]
    assert max_overlap(df) == 4
    again = run_cli(*SPREAD, f"store.path={store}", f"hydra.run.dir={tmp_path / 'run2'}", "run.rerun=all",
                    env=driver_env(home, RAY_ADDRESS=address))  # RAY_ADDRESS: the same
    assert again.returncode == 0 and again.stdout.splitlines()[0].endswith(address), again.stderr[-2000:]
    assert "GPUs: 4" in again.stdout


@pytest.mark.slow
def test_a_missing_or_wrong_token_is_one_line_within_seconds(token_head, tmp_path):
    address, _ = token_head
    for name, env in [("missing", driver_env({"HOME": str(tmp_path / "empty")})),
                      ("wrong", driver_env({"HOME": str(tmp_path / "empty")}, RAY_AUTH_TOKEN="0" * 64))]:
        t0 = time.time()
        proc = run_cli("+sweep=smoke", f"cluster.address={address}", f"store.path={tmp_path / name}",
                       f"hydra.run.dir={tmp_path / name / 'run'}", env=env, timeout=120)
        took = time.time() - t0
        errors = stderr_lines(proc)
        assert proc.returncode == 2, (name, proc.stderr[-2000:])
        assert len(errors) == 1 and "auth token" in errors[0] and "auth_token" in errors[0], (name, errors)
        assert took < 30, (name, took)  # one look at the cluster, not twenty retries
        assert not (tmp_path / name).exists() or not list((tmp_path / name).glob("*.parquet"))


@pytest.mark.slow
def test_a_cluster_without_authentication_is_joined_too(tmp_path):
    port = free_port()
    head = start_head(port, {"RAY_AUTH_MODE": "disabled", "HOME": str(tmp_path / "home")})
    try:
        proc = run_cli("+sweep=smoke", "grid.backends=[math]", "run.device=cpu", f"cluster.address=127.0.0.1:{port}",
                       f"store.path={tmp_path / 'r'}", f"hydra.run.dir={tmp_path / 'run'}",
                       env=driver_env(home_with_token(tmp_path / "driver")))  # our token, a cluster that asks none
    finally:
        stop_head(head)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(pd.read_parquet(tmp_path / "r")) == 2


@pytest.mark.slow
def test_sweeps_stay_private_while_a_foreign_cluster_is_up(token_head, tmp_path):
    """Another process's `ray start` cluster (4 GPUs) is up on this host: a sweep with no address
    starts a private cluster of its own (no GPUs here), in a subprocess and in this process."""
    _, home = token_head
    proc = run_cli("+sweep=smoke", "grid.backends=[math]", f"store.path={tmp_path / 'cli'}",
                   f"hydra.run.dir={tmp_path / 'run'}", env=driver_env(home))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines()[0] == "cluster: starting a private Ray cluster on this machine"
    assert set(pd.read_parquet(tmp_path / "cli").target) == {"cpu"}  # the foreign cluster's GPUs were not used
    import ray
    from conftest import ensure_ray

    ensure_ray(0)  # what the suite's in-process sweeps use
    assert ray.cluster_resources().get("GPU", 0) == 0
    s = run(make_cfg("+sweep=smoke", "grid.backends=[math]", store=tmp_path / "inproc"))
    assert s.statuses == {"ok": 2} and set(pd.read_parquet(tmp_path / "inproc").target) == {"cpu"}


@pytest.mark.slow
def test_cells_run_on_each_listed_gpu_model(tmp_path):
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    t4 = cluster.add_node(num_cpus=1, num_gpus=2, resources={"accelerator_type:T4": 1})
    h100 = cluster.add_node(num_cpus=1, num_gpus=2, resources={"accelerator_type:H100": 1})
    try:
        ray.init(address=cluster.address)
        cfg = make_cfg("+sweep=smoke", "grid.backends=[math,flash]", "grid.seq_lens=[64,128]",
                       "grid.dtypes=[float16]", "grid.accelerators=[T4,H100]", "run.device=cpu",
                       store=tmp_path / "r")
        summary = run(cfg)
        df = pd.read_parquet(tmp_path / "r")
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert len(df) == 8 and df.cell_id.is_unique and summary.devices == 4
    on = {"T4": t4.node_id, "H100": h100.node_id}
    ran = df[df.status == "ok"]
    assert (ran.node_id == ran.target.map(on)).all()  # each cell on a node of its model
    assert set(ran.target) == {"T4", "H100"}
    flash_t4 = df[(df.target == "T4") & (df.backend == "flash")]
    assert (flash_t4.status == "unsupported").all() and flash_t4.error.str.contains("sm80").all()
    assert (df[df.target == "H100"].status == "ok").all()


def test_a_model_missing_from_the_cluster_is_a_config_error(ray_fake_gpus, tmp_path):
    from orchestrator.config import ConfigError

    with pytest.raises(ConfigError, match="no GPU of type 'A100'"):
        run(make_cfg("+sweep=smoke", "grid.accelerators=[A100]", store=tmp_path / "r"))


def script(code: str, *args, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -c code args` in a process of its own, with its own Ray cluster (no RAY_ADDRESS of
    this one), the tests folder importable (conftest's make_cfg)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"PYTHONPATH": str(ROOT / "tests")}
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


NICE = """
import os, sys, ray
if sys.argv[1] == "ours":
    from omegaconf import OmegaConf
    from orchestrator.cluster import connect
    connect(OmegaConf.create({"address": None, "init": {}, "verbose": False, "num_cpus": 1, "num_gpus": 0}))
else:  # a cluster started the plain way: Ray's default worker niceness
    ray.init(address="local", num_cpus=1, include_dashboard=False)

@ray.remote(num_cpus=0)
def nice(fix):
    if fix:
        from orchestrator.workers import normal_priority
        normal_priority()
    return os.getpriority(os.PRIO_PROCESS, 0)

print(ray.get(nice.remote(False)), ray.get(nice.remote(True)))
"""


@pytest.mark.slow
def test_cell_processes_run_at_normal_priority():
    """Ray starts its workers at nice 15 (a busy host then starves a cell: a task-mode cell's
    start took 65 s instead of 4 s beside two busy loops on 2 cores). A private cluster starts
    them at the driver's priority; in a cluster started elsewhere the tool's workers undo it."""
    me = os.getpriority(os.PRIO_PROCESS, 0)

    def nice(kind: str) -> list[int]:
        out = script(NICE, kind)
        return [int(x) for x in out.stdout.split()[-2:]] if out.returncode == 0 else pytest.fail(out.stderr[-2000:])

    assert nice("ours") == [me, me]
    plain, fixed = nice("plain")
    assert plain > me  # Ray lowered it
    assert fixed == (me if os.geteuid() == 0 else plain)  # raised again where permitted, else Ray's kept


@pytest.mark.slow
def test_a_device_worker_on_another_host_stops_its_own_fork_server():
    """A device actor on a host without the driver's fork server starts one of its own (here:
    the driver's socket does not exist on this host). Closing the pool stops that server with
    its waiting cell process and removes its socket: nothing is left on the node."""
    import psutil
    import ray
    from conftest import ensure_ray
    from test_isolation import spec

    from orchestrator.executor import PoolLauncher, Slot
    from orchestrator.workers import DeviceWorker

    ensure_ray(0)
    worker = DeviceWorker.options(num_cpus=0).remote("/nonexistent/attn-fork/s", "cpu", ["float32"], 1, 120.0)
    assert ray.get(worker.run.remote(spec("math"), 60.0))["status"] == "ok"  # the next cell's process waits
    actor = psutil.Process(ray.get(worker.__ray_call__.remote(lambda self: os.getpid())))
    server = next(p for p in actor.children() if "orchestrator.forkserver" in p.cmdline())
    address = server.cmdline()[server.cmdline().index("orchestrator.forkserver") + 1]
    waiting = server.children()
    assert os.path.exists(address) and waiting
    PoolLauncher(None, None).close([Slot("cpu", {}, 0, handle=worker)])
    _, alive = psutil.wait_procs([server, *waiting], timeout=10)
    assert not alive and not os.path.exists(os.path.dirname(address))


BUSY = """
import logging, os, signal, sys, threading, time
import ray
from conftest import make_cfg
from orchestrator import executor
from orchestrator.driver import run
from orchestrator.errors import Interrupted

how, store, out = sys.argv[1:4]
executor.WAIT_LINE_S = 2.0
ray.init(address="local", num_cpus=1, include_dashboard=False)


@ray.remote(num_cpus=1)
class Hold:  # another job of the cluster's, holding its one CPU
    def ping(self):
        return True


hold = Hold.remote()
ray.get(hold.ping.remote())
said = threading.Event()


class Watch(logging.Handler):
    def emit(self, record):
        if record.getMessage().startswith("waiting for the cluster"):
            print("LINE", record.getMessage(), flush=True)
            said.set()


logging.basicConfig(level=logging.INFO, format="%(message)s")
logging.getLogger().addHandler(Watch())
sent = []


def act():
    said.wait(120)
    if how == "release":
        ray.kill(hold)
    else:
        sent.append(time.monotonic())
        os.kill(os.getpid(), signal.SIGINT)


threading.Thread(target=act, daemon=True).start()
try:
    summary = run(make_cfg("+sweep=smoke", "grid.backends=[math]", "run.device=cpu", "run.isolation=" + sys.argv[4],
                           store=store), output_dir=out)
    print("DONE", sum(summary.statuses.values()), flush=True)
except Interrupted:
    print(f"STOPPED {time.monotonic() - sent[0]:.1f}", flush=True)
"""


@pytest.mark.slow
@pytest.mark.parametrize("isolation", ["pool", "task"])
@pytest.mark.parametrize("how", ["release", "interrupt"])
def test_a_sweep_waiting_for_a_busy_clusters_resources_says_so(tmp_path, how, isolation):
    """Another job holds the cluster's only CPU: the sweep says what it waits for (it was silent
    until the cluster's start limit, minutes later), starts once the CPU is free, and stops at
    once on Ctrl-C (it sat 10 s asking a device worker that was never placed to close)."""
    proc = script(BUSY, how, tmp_path / "r", tmp_path / "out", isolation, timeout=240)
    lines = proc.stdout.splitlines()
    said = [ln for ln in lines if ln.startswith("LINE ")]
    assert said, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "1 of 1 device(s)" in said[0] and "each asks for 1 CPU" in said[0] and "free now: 0 of 1 CPU" in said[0]
    if how == "release":
        assert "DONE 2" in lines, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert len(pd.read_parquet(tmp_path / "r")) == 2
    else:
        stopped = [float(ln.split()[1]) for ln in lines if ln.startswith("STOPPED ")]
        assert stopped and stopped[0] < 5, proc.stdout[-3000:] + proc.stderr[-3000:]


NO_CPU = """
import ray
from conftest import make_cfg
from orchestrator.config import ConfigError
from orchestrator.driver import run

ray.init(address="local", num_cpus=0, include_dashboard=False)
try:
    run(make_cfg("+sweep=smoke", "grid.backends=[math]", "run.device=cpu", store=__import__("sys").argv[1]))
except ConfigError as exc:
    print("REFUSED", exc)
"""


@pytest.mark.slow
def test_a_cluster_with_nothing_to_run_cells_on_is_refused_saying_so(tmp_path):
    """A cluster of no CPU and no GPU: the line says so (it advised run.cpu_workers=1, the
    setting that had just failed)."""
    proc = script(NO_CPU, tmp_path / "r")
    said = [ln for ln in proc.stdout.splitlines() if ln.startswith("REFUSED ")]
    assert said and "no GPU and no whole CPU to run a cell on" in said[0], proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "run.cpu_workers=1" not in said[0]
