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
