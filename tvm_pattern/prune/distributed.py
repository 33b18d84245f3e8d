"""Devices and data parallelism for the prelude: PyTorch's own engine (DDP under ``torchrun``), nothing home-made.

``Runtime`` says where this process trains: its device, its rank among ``world_size`` processes (1 when not
started by ``torchrun``), DataLoader workers and mixed precision. ``setup`` reads torchrun's environment
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) and starts the process group: gloo on the CPU, NCCL on CUDA.
The helpers below are no-ops in a single process, so the same code runs either way.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from ..errors import TvmPatternError

DEVICES = ("auto", "cpu", "cuda")


@dataclass
class Runtime:
    """Where and how this process trains. The default is one process on the CPU."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    workers: int = 0
    amp: bool = False  # float16 autocast + GradScaler (CUDA only)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_ranks(environ: Mapping[str, str] | None = None) -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from torchrun's variables; ``(0, 1, 0)`` without them."""
    environ = os.environ if environ is None else environ
    return int(environ.get("RANK", 0)), int(environ.get("WORLD_SIZE", 1)), int(environ.get("LOCAL_RANK", 0))


def select_device(choice: str, local_rank: int = 0, cuda_available: bool | None = None,
                  cuda_count: int | None = None) -> torch.device:  # fmt: skip
    """``cpu``, ``cuda`` (the GPU of this local rank; an error without one) or ``auto`` (CUDA if there is one)."""
    if choice not in DEVICES:
        raise TvmPatternError(f"--device {choice!r}: expected one of {', '.join(DEVICES)}")
    available = torch.cuda.is_available() if cuda_available is None else cuda_available
    if choice == "cpu" or (choice == "auto" and not available):
        return torch.device("cpu")
    if not available:
        raise TvmPatternError("--device cuda: PyTorch sees no CUDA GPU here (use --device cpu or auto)")
    count = torch.cuda.device_count() if cuda_count is None else cuda_count
    if local_rank >= count:
        raise TvmPatternError(f"local rank {local_rank} has no GPU of its own: only {count} visible")
    return torch.device("cuda", local_rank)


def backend_for(device: torch.device) -> str:
    """The process-group backend for ``device``: NCCL for CUDA, gloo for the CPU."""
    return "nccl" if device.type == "cuda" else "gloo"


def setup(device: str = "auto", workers: int = 0, amp: bool = False, timeout_s: float = 1800) -> Runtime:
    """The runtime of this process; under torchrun, also joins the process group."""
    rank, world, local = env_ranks()
    chosen = select_device(device, local)
    if amp and chosen.type != "cuda":
        raise TvmPatternError("--amp is mixed precision on CUDA; this run is on the CPU (use --device cuda)")
    if workers < 0:
        raise TvmPatternError(f"--workers {workers}: must be >= 0")
    runtime = Runtime(chosen, rank, world, local, workers, amp)
    if "TORCHELASTIC_RUN_ID" in os.environ:
        die_with_parent()
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    if world > 1 and not dist.is_initialized():
        kwargs = {"device_id": chosen} if chosen.type == "cuda" else {}
        dist.init_process_group(backend_for(chosen), timeout=timedelta(seconds=timeout_s), **kwargs)
    return runtime


def die_with_parent(interval_s: float = 0.2) -> None:
    """End this process as soon as its parent (torchrun's agent) is gone.

    torchrun starts each worker in a session of its own, so killing torchrun's process group (``kill -9``
    of a job, a scheduler's pre-emption) would otherwise leave the workers running, orphaned, still writing
    checkpoints and outputs while the rerun resumes. A daemon thread notices the new parent and kills us.
    """
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(interval_s)
            if os.getppid() != parent:
                os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="tvm-pattern-die-with-parent", daemon=True).start()


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def broadcast_tensors(tensors: Iterable[torch.Tensor], src: int = 0) -> None:
    """Overwrite ``tensors`` in place with rank ``src``'s values (no-op in one process)."""
    if not active():
        return
    for tensor in tensors:
        if tensor is None:
            continue
        if tensor.dtype == torch.bool:  # NCCL and gloo reduce/broadcast bytes; go through uint8 to be safe
            carrier = tensor.to(torch.uint8)
            dist.broadcast(carrier, src)
            tensor.copy_(carrier.bool())
        else:
            dist.broadcast(tensor, src)


def sync_module(model: nn.Module, src: int = 0) -> None:
    """Every parameter and buffer of ``model`` made equal to rank ``src``'s (BN statistics included)."""
    with torch.no_grad():
        broadcast_tensors([*model.parameters(), *model.buffers()], src)


def broadcast_object(obj, src: int = 0):
    """``obj`` as rank ``src`` has it, on every rank."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src)
    return box[0]


def all_gather_object(obj) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank."""
    if not active():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sums over ranks (float64)."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if active():
        dist.all_reduce(tensor)
    return tensor.tolist()


def barrier() -> None:
    if active():
        dist.barrier()


class ShardSampler(DistributedSampler):
    """``DistributedSampler`` that can start part-way into an epoch (``skip`` indices), for resuming."""

    def __init__(self, dataset: Dataset, runtime: Runtime, shuffle: bool, seed: int) -> None:
        super().__init__(dataset, num_replicas=runtime.world_size, rank=runtime.rank, shuffle=shuffle, seed=seed)
        self.skip = 0

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self.skip :])

    def __len__(self) -> int:
        return self.num_samples - self.skip


class EvalShard(Sampler[int]):
    """Rank r evaluates samples r, r + world, ...: every sample once over all ranks (no padding)."""

    def __init__(self, dataset: Dataset, runtime: Runtime) -> None:
        self.indices = range(runtime.rank, len(dataset), runtime.world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def per_rank_batch(batch_size: int, runtime: Runtime) -> int:
    """``batch_size`` is the global batch; each rank takes its share (rounded up)."""
    if batch_size < 1:
        raise TvmPatternError(f"--batch-size {batch_size}: must be >= 1")
    return -(-batch_size // runtime.world_size)


def loader(dataset: Dataset, batch_size: int, runtime: Runtime, sampler: Sampler, seed: int = 0) -> DataLoader:
    """A DataLoader over this rank's ``sampler``. Its own generator (seeded by ``seed`` and the rank) gives the
    workers' base seed, so making an iterator never draws from the global RNG: a loop resumed part-way
    sees the same dropout masks as the uninterrupted one."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + runtime.rank)
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=runtime.workers,
        pin_memory=runtime.device.type == "cuda", persistent_workers=False, generator=generator,
    )  # fmt: skip
