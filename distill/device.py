"""Device and numeric precision: ``--device`` / ``--precision`` resolution, autocast and loss scaling."""

from __future__ import annotations

import platform
from contextlib import nullcontext
from pathlib import Path

import torch

from .errors import DistillError


def resolve_device(name: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``.

    Raises:
        DistillError: CUDA was asked for but PyTorch sees no CUDA device.
    """
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DistillError("--device cuda: no CUDA device is visible to PyTorch; use --device cpu.")
    return name


def resolve_precision(device: str, precision: str) -> str:
    """``auto`` -> bf16 on CUDA devices that support it, fp16 on older GPUs, fp32 on CPU."""
    if precision != "auto":
        return precision
    if device.startswith("cuda"):
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def autocast_ctx(device: str, precision: str):
    """bf16/fp16 autocast on CUDA; a no-op context (fp32) otherwise."""
    if device.startswith("cuda") and precision in ("bf16", "fp16"):
        return torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
    return nullcontext()


def grad_scaler(device: str, precision: str) -> torch.amp.GradScaler:
    """A ``torch.amp.GradScaler`` for fp16 autocast on CUDA (loss scaling); disabled otherwise."""
    return torch.amp.GradScaler("cuda", enabled=device.startswith("cuda") and precision == "fp16")


def cpu_model() -> str:
    """CPU model name from ``/proc/cpuinfo`` (``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class PeakMemory:
    """Peak memory of a block of work, in MB (10^6 bytes): on CUDA the peak of
    ``torch.cuda.max_memory_allocated`` (reset on entry); on CPU the peak resident set size of this
    process, sampled every ``interval`` seconds by a daemon thread (psutil) - the process's peak *during*
    the block, not since the process started.

    ``start_mb`` is the same figure at entry: on CPU the allocator keeps what earlier work in the process
    used, so ``mb - start_mb`` is what the block added and ``mb`` is what the process needed at most.

    Usage: ``with PeakMemory(device) as pm: ...``; then ``pm.mb``, ``pm.start_mb``.
    """

    def __init__(self, device: str = "cpu", interval: float = 0.05):
        self.device, self.interval, self.mb, self.start_mb = device, interval, float("nan"), float("nan")

    def __enter__(self):
        import threading

        if self.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_mb = torch.cuda.memory_allocated(self.device) / 1e6
            return self
        import psutil

        proc, self._stop = psutil.Process(), threading.Event()
        self._peak = proc.memory_info().rss
        self.start_mb = self._peak / 1e6

        def sample():
            while not self._stop.wait(self.interval):
                self._peak = max(self._peak, proc.memory_info().rss)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.startswith("cuda"):
            self.mb = torch.cuda.max_memory_allocated(self.device) / 1e6
        else:
            self._stop.set()
            self._thread.join()
            import psutil

            self.mb = max(self._peak, psutil.Process().memory_info().rss) / 1e6
        return False
