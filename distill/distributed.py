"""Multi-process training: ``distill run`` under ``torchrun`` or ``accelerate launch`` (one process per
GPU or per CPU socket, on one or several nodes).

The launchers start N copies of ``distill run`` and give each ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT``; :func:`init` joins them into one ``torch.distributed`` process
group (env:// rendezvous; ``nccl`` on CUDA, ``gloo`` on CPU). Without those variables every function
here is the single-process identity, so the rest of the code calls them unconditionally.

What is distributed, and how (see :func:`distill.trainer.fit` and :mod:`distill.cache`):

* **Training** (co-finetuning and every strategy that uses the shared step): the module being trained
  and the strategy's own parameters are wrapped together in ``DistributedDataParallel``; every rank
  draws the same row order and takes its slice of each *global* batch (``--student-batch-size`` and
  ``--teacher-batch-size`` are per rank; the global batch is ``per-rank x world size``). Each rank's
  loss is weighted by its share of the global batch, so the averaged gradient is the gradient of the
  global batch's mean loss, as in one process with the global batch.
* **Inference** (the teacher-output cache, dev/test evaluation): the length-sorted batches are dealt
  out round-robin (batch ``k`` to rank ``k mod N``) and gathered, so every rank holds the outputs of
  all rows, each computed in exactly the batch one process would have used.
* **Files**: only rank 0 writes the run folder, the teacher store and the report. The other ranks read
  the run folder and the store (``--resume``, a reused teacher store), so on several nodes they must
  be on a file system every node mounts, as for any multi-node checkpoint.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from .errors import DistillError


@dataclass(frozen=True)
class World:
    """This process's place in the job: ``rank`` (0..size-1), ``size`` (processes in all),
    ``local_rank`` (index on this node; picks the GPU) and the process-group ``backend``
    (``None`` for a single process)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def main(self) -> bool:
        """True on rank 0, the only rank that writes files."""
        return self.rank == 0

    def describe(self) -> dict:
        """For the report: world size, backend and the number of nodes (from ``LOCAL_WORLD_SIZE``)."""
        local = int(os.environ.get("LOCAL_WORLD_SIZE", self.size) or self.size)
        return {"world_size": self.size, "backend": self.backend or "none", "nodes": max(1, self.size // max(1, local))}


_WORLD = World()


def launched() -> bool:
    """True when a launcher (torchrun, accelerate launch) started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def init(device: str, timeout_s: float = 1800.0) -> World:
    """Join the launcher's process group (idempotent); a single process gets ``World()``.

    Args:
        device: the resolved ``--device`` (``cpu``, ``cuda``, ``cuda:N``): CUDA uses ``nccl`` and the
            GPU ``LOCAL_RANK``; CPU uses ``gloo``.
        timeout_s: how long a collective waits for a slow rank (s).

    Raises:
        DistillError: the launcher's environment is incomplete, or the rendezvous fails.
    """
    global _WORLD
    if not launched():
        return _WORLD
    if dist.is_initialized():
        return _WORLD
    missing = [k for k in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise DistillError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {', '.join(missing)} not set: start "
                           "`distill run` with torchrun or accelerate launch (see README, 'Scaling out').")
    backend = "nccl" if device.startswith("cuda") else "gloo"
    local_rank = int(os.environ["LOCAL_RANK"])
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    try:
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    except (RuntimeError, ValueError) as e:
        raise DistillError(f"joining the process group failed ({backend}, MASTER_ADDR="
                           f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}): {e}") from e
    _WORLD = World(dist.get_rank(), dist.get_world_size(), local_rank, backend)
    return _WORLD


def world() -> World:
    """The current :class:`World` (``World()`` before :func:`init` or without a launcher)."""
    return _WORLD


def local_device(device: str) -> str:
    """``cuda`` -> ``cuda:<LOCAL_RANK>`` under a launcher (one GPU per process); other devices unchanged."""
    if device == "cuda" and _WORLD.size > 1:
        return f"cuda:{_WORLD.local_rank}"
    return device


def shutdown() -> None:
    """Leave the process group (end of the job)."""
    global _WORLD
    if dist.is_initialized():
        dist.destroy_process_group()
    _WORLD = World()


def barrier() -> None:
    """Wait for every rank (no-op for one process)."""
    if _WORLD.size > 1:
        dist.barrier()


def broadcast(obj):
    """Rank 0's ``obj`` on every rank (picklable objects; no-op for one process)."""
    if _WORLD.size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather(obj) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (picklable objects)."""
    if _WORLD.size == 1:
        return [obj]
    out = [None] * _WORLD.size
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Element-wise sum of ``t`` over the ranks (a new tensor; ``t`` itself for one process)."""
    if _WORLD.size == 1:
        return t
    dev = f"cuda:{_WORLD.local_rank}" if _WORLD.backend == "nccl" else "cpu"
    out = t.detach().to(dev, torch.float64).clone()
    dist.all_reduce(out)
    return out.to(t.device, t.dtype)


def my_batches(batches: list) -> list[tuple[int, object]]:
    """This rank's share ``[(k, batches[k]) for k = rank, rank + N, ...]`` of a batch list (round-robin)."""
    return [(k, b) for k, b in enumerate(batches) if k % _WORLD.size == _WORLD.rank]


def gather_batches(results: dict[int, object], n: int) -> list:
    """Every rank's per-batch results (``{k: result}`` from :func:`my_batches`) as one list in batch order."""
    if _WORLD.size == 1:
        return [results[k] for k in range(n)]
    merged: dict[int, object] = {}
    for part in all_gather(results):
        merged.update(part)
    return [merged[k] for k in range(n)]


def rank_slice(global_rows: list[int], pad_from: list[int]) -> list[int]:
    """This rank's rows of one global batch: the batch split into N near-equal contiguous parts (numpy's
    ``array_split``; so the ranks' rows together are the global batch in order). When the last batch has
    fewer rows than ranks, rows from ``pad_from`` (the epoch's order) are added so every rank steps."""
    import numpy as np

    rows = list(global_rows)
    k = 0
    while len(rows) < _WORLD.size:
        rows.append(pad_from[k % len(pad_from)])
        k += 1
    return [int(r) for r in np.array_split(np.asarray(rows), _WORLD.size)[_WORLD.rank]]


def wrap_ddp(module: torch.nn.Module, device: str) -> torch.nn.Module:
    """``DistributedDataParallel(module)`` (parameters broadcast from rank 0; gradients averaged during
    backward). ``find_unused_parameters`` is on: a strategy may leave parts unused in a step (e.g. a
    layer-loss projection with weight 0, a teacher left out by the weak-teacher rule)."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [torch.device(device).index] if device.startswith("cuda") else None
    return DDP(module, device_ids=ids, find_unused_parameters=True)
