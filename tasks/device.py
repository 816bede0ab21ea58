"""The cell's own device: NVML found by UUID (never by index 0), and the environment record.

NVML ignores ``CUDA_VISIBLE_DEVICES``: its index 0 is the machine's first GPU, not the one
this process was given. ``torch.cuda.get_device_properties(0).uuid`` names the GPU this
process sees as cuda:0; NVML finds the same board by that UUID.
"""

from __future__ import annotations

import functools
import os
import platform
import socket
import threading
import time

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


def wait_gone(pid: int | None, timeout_s: float = 60.0) -> None:
    """Wait until process `pid` has exited: the previous cell on this device, whose GPU
    memory must be released before this cell reads NVML (a zombie has released it)."""
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
        "torch_version": torch.__version__,
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


class NvmlMonitor:
    """Polls NVML 'used' memory of one GPU in a thread: the reading before, and the peak."""

    def __init__(self, handle, interval_s: float = 0.002):
        self.handle, self.interval_s = handle, interval_s
        self.before = self.peak = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def used(self) -> int:
        return pynvml.nvmlDeviceGetMemoryInfo(self.handle).used

    def _poll(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.used())
            time.sleep(self.interval_s)

    def __enter__(self):
        self.before = self.peak = self.used()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.used())

    def record(self) -> dict:
        return {"nvml_used_before_bytes": self.before, "nvml_used_peak_bytes": self.peak}
