"""The cell's own device: NVML found by UUID (never by index 0), and the environment record.

NVML ignores ``CUDA_VISIBLE_DEVICES``: its index 0 is the machine's first GPU, not the one
this process was given. ``torch.cuda.get_device_properties(0).uuid`` names the GPU this
process sees as cuda:0; NVML finds the same board by that UUID.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import platform
import socket
import statistics
import tempfile
import time
from dataclasses import dataclass

import torch

try:
    import pynvml

    HAS_NVML = True
except ImportError:  # pragma: no cover - nvidia-ml-py is a dependency
    HAS_NVML = False


def nvml_uuid(torch_uuid) -> str:
    """NVML's spelling of a torch device UUID: 'GPU-' and the dashed hex form."""
    s = str(torch_uuid)
    return s if s.startswith(("GPU-", "MIG-")) else f"GPU-{s}"


@functools.cache
def nvml_handle(uuid: str):
    """The NVML handle of the GPU with this UUID (NVML initialised on first use; looked up once)."""
    pynvml.nvmlInit()
    return pynvml.nvmlDeviceGetHandleByUUID(uuid)


def _text(x) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


def gpu_lock_paths() -> tuple[str, str]:
    """The lock file of the GPU this process sees (``gpu_quiet``) and its turnstile, in this
    node's shared memory."""
    key = "".join(c if c.isalnum() or c in "-_" else "_" for c in os.environ.get("CUDA_VISIBLE_DEVICES", "all"))
    folder = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
    lock = os.path.join(folder, f"attention-sweep-gpu-{key or 'none'}.lock")
    return lock, lock + ".next"


@dataclass
class Held:
    waited_s: float | None = None  # how long taking the lock took (other processes' windows or start
    #                                steps); None where the lock files could not be opened


@contextlib.contextmanager
def gpu_quiet(shared: bool = False):
    """Hold this node's lock for the GPU this process sees (``CUDA_VISIBLE_DEVICES``).

    A cell's quiet window (its memory pass and timing) holds it alone; a cell process starting
    holds it ``shared`` for each step of its start (the context, cuBLAS in each dtype, the
    accuracy kernels), its GPU work finished within the step: several start at once, none while
    a cell is in its quiet window. A window that waits goes before any step asked for after it
    (a turnstile), so it waits for one step at most, not for whole starts. A process that starts
    its context while another times its kernels slows them: on an H200, cells started ahead of
    the measuring one moved the medians of 5-20 ms kernels by up to 24% between two runs (p90
    6%), against 4.9% (p90 0.6%) with no process started ahead; single calls of 3.6 ms by up to
    54% while one context started, 178% while four did (``probe_disturb_long.txt``).

    Lock files, so that a process killed while holding one lets go. Yields a ``Held`` that says
    how long the lock took."""
    held = Held()
    fds = []
    try:
        for path in gpu_lock_paths():
            fds.append(os.open(path, os.O_RDONLY | os.O_CREAT, 0o666))
    except OSError:  # another user's lock files we cannot open: measure without them
        for fd in fds:
            os.close(fd)
        yield held
        return
    lock, turnstile = fds
    t0 = time.perf_counter()
    try:
        if shared:
            fcntl.flock(turnstile, fcntl.LOCK_SH)  # wait behind a window that is waiting for the lock
            fcntl.flock(turnstile, fcntl.LOCK_UN)
            fcntl.flock(lock, fcntl.LOCK_SH)
        else:
            fcntl.flock(turnstile, fcntl.LOCK_EX)  # no new start step from now on
            fcntl.flock(lock, fcntl.LOCK_EX)  # the steps under way end
            fcntl.flock(turnstile, fcntl.LOCK_UN)
        held.waited_s = time.perf_counter() - t0
        yield held
    finally:
        for fd in fds:
            os.close(fd)  # the locks go with the descriptors


def wait_gone(pid: int | None, timeout_s: float = 60.0) -> None:
    """Wait until process `pid` has exited: the previous cell on this device, whose GPU
    memory must be released before this cell reads NVML."""
    deadline = time.monotonic() + timeout_s
    while pid and time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return
        if state in ("Z", "X"):
            return
        time.sleep(0.001)


def wait_released(nvml: Nvml | None, pid: int | None, timeout_s: float = 2.0) -> None:
    """After ``wait_gone``: until NVML no longer lists `pid` on this GPU and the device's used
    memory has stopped falling (the driver frees an exited process's memory a moment later)."""
    if nvml is None or not pid:
        return
    deadline, last = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        used = pynvml.nvmlDeviceGetMemoryInfo(nvml.handle).used
        if pid not in nvml._procs() and last is not None and abs(used - last) < (4 << 20):
            return
        last = used
        time.sleep(0.005)


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


class Nvml:
    """NVML readings of this process's GPU.

    ``device_used``: the device's used memory less what NVML attributes to this sweep's other
    cell processes on it (the fork server's other children: waiting cells hold their CUDA
    contexts while this one measures), read until two looks at the device's processes agree
    (one may be starting its context just then).
    ``process_used``: what NVML attributes to this process alone.
    """

    def __init__(self, handle, exclude_siblings: bool = True):
        self.handle, self.exclude = handle, exclude_siblings

    def _procs(self) -> dict[int, int]:
        procs = pynvml.nvmlDeviceGetComputeRunningProcesses(self.handle)
        return {p.pid: p.usedGpuMemory or 0 for p in procs}

    def process_used(self) -> int | None:
        return self._procs().get(os.getpid())

    def device_used(self, tries: int = 50) -> int:
        if not self.exclude:
            return pynvml.nvmlDeviceGetMemoryInfo(self.handle).used
        me, parent = os.getpid(), os.getppid()
        for _ in range(tries):
            a = self._procs()
            used = pynvml.nvmlDeviceGetMemoryInfo(self.handle).used
            b = self._procs()
            if a == b:
                break
            time.sleep(0.002)
        siblings = [pid for pid in b if pid != me and _ppid(pid) == parent]  # this sweep's waiting cells
        return used - sum(b[pid] for pid in siblings)


# what holds the GPU's clock down, by NVML's clock-event reason bits (idle and the application
# clock setting left out: they say nothing about a busy GPU's speed)
CLOCK_LIMITS = {0x4: "sw_power_cap", 0x8: "hw_slowdown", 0x10: "sync_boost", 0x20: "sw_thermal",
                0x40: "hw_thermal", 0x80: "hw_power_brake"}


class ClockSampler:
    """The SM clock (its mean over samples a millisecond apart) and what limits it, while the
    GPU runs the timed calls: clocks drop under a power or thermal cap, and a kernel's time with
    them (locking them is the operator's call, not this tool's)."""

    def __init__(self, handle):
        self.handle, self.mhz, self.reasons = handle, [], 0
        self.reasons_of = getattr(pynvml, "nvmlDeviceGetCurrentClocksEventReasons", None) or \
            pynvml.nvmlDeviceGetCurrentClocksThrottleReasons

    def __call__(self, done) -> None:
        """Sample every millisecond until event `done` (the batch's last) has completed."""
        try:
            while True:
                self.mhz.append(pynvml.nvmlDeviceGetClockInfo(self.handle, pynvml.NVML_CLOCK_SM))
                self.reasons |= self.reasons_of(self.handle)
                if done.query():
                    return
                time.sleep(0.001)
        except pynvml.NVMLError:  # not supported on this device: the columns stay empty
            pass

    def cols(self) -> dict:
        if not self.mhz:
            return {}
        limits = [name for bit, name in CLOCK_LIMITS.items() if self.reasons & bit]
        return {"sm_clock_mhz": float(statistics.fmean(self.mhz)), "clock_limits": ",".join(limits) or None}


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> dict:
    """Where and with what this cell ran, as row columns."""
    env = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "torch_version": str(torch.__version__),  # a plain str: unpickling a TorchVersion imports torch (3 s)
        "cuda_version": torch.version.cuda,
        "cudnn_version": str(torch.backends.cudnn.version()) if torch.backends.cudnn.is_available() else None,
        "device_type": device.type,
    }
    if device.type != "cuda":
        return {**env, "device_name": cpu_name()}
    props = torch.cuda.get_device_properties(device)
    env |= {
        "device_name": props.name,
        "compute_capability": f"{props.major}.{props.minor}",
        "device_total_bytes": props.total_memory,
    }
    if HAS_NVML:
        uuid = nvml_uuid(props.uuid)
        handle = nvml_handle(uuid)
        env |= {
            "gpu_uuid": uuid,
            "nvml_index": pynvml.nvmlDeviceGetIndex(handle),
            "nvml_name": _text(pynvml.nvmlDeviceGetName(handle)),
            "driver_version": _text(pynvml.nvmlSystemGetDriverVersion()),
        }
    return env
