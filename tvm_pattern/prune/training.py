"""Supervised training and evaluation loops over torch Datasets (PyTorch), on any device, optionally under DDP.

``train`` and ``evaluate`` take any map-style Dataset of ``(input, label)`` samples (the built-in
``data.Split`` is one) and a ``Runtime`` (device, rank / world size, workers, mixed precision; default: the
model's device, one process). Under ``torchrun`` the model is wrapped in ``DistributedDataParallel`` for
the loop, each rank reads its shard (``DistributedSampler``), and accuracy is summed over ranks.
A loop can be checkpointed part-way (``checkpoint.due()`` / ``checkpoint.save(loop_state)``) and resumed
from that state (``resume=``): same optimiser, schedule, scaler and position in the epoch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from . import distributed
from .distributed import Runtime


class LoopCheckpoint(Protocol):
    def due(self) -> bool: ...  # the same answer on every rank (collective)
    def save(self, loop: dict) -> None: ...  # collective; rank 0 writes


def model_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


def default_runtime(model: nn.Module, runtime: Runtime | None) -> Runtime:
    return Runtime(device=model_device(model)) if runtime is None else runtime


def steps_per_epoch(dataset: Dataset, batch_size: int, runtime: Runtime) -> int:
    """Optimiser steps per epoch: the same on every rank (each rank holds ceil(N / world) samples)."""
    shard = math.ceil(len(dataset) / runtime.world_size)
    return max(1, math.ceil(shard / distributed.per_rank_batch(batch_size, runtime)))


def train(
    model: nn.Module,
    dataset: Dataset,
    epochs: float,
    lr: float = 1e-3,
    batch_size: int = 128,
    penalty: Callable[[], torch.Tensor] | None = None,
    every: tuple[int, Callable[[], None]] | None = None,
    setup_optimizer: Callable[[torch.optim.Optimizer], object] | None = None,
    desc: str = "train",
    seed: int = 0,
    progress: bool = True,
    *,
    runtime: Runtime | None = None,
    resume: dict | None = None,
    checkpoint: LoopCheckpoint | None = None,
) -> None:
    """Adam with cosine decay for ``epochs`` (fractions allowed) over ``dataset``.

    ``batch_size`` is the global batch (split across ranks). ``penalty()`` is added to the loss (ADMM);
    ``every=(n, fn)`` calls ``fn`` every n steps; ``setup_optimizer(opt)`` runs once the optimiser exists
    (e.g. to mask its state). The epoch order depends only on ``seed`` and the epoch, so a resumed loop
    sees the batches the interrupted one would have seen.
    """
    runtime = default_runtime(model, runtime)
    device = runtime.device
    model.to(device)
    sampler = distributed.ShardSampler(dataset, runtime, shuffle=True, seed=seed)
    per_rank = distributed.per_rank_batch(batch_size, runtime)
    per_epoch = steps_per_epoch(dataset, batch_size, runtime)
    steps = max(1, round(epochs * per_epoch)) if epochs > 0 else 0  # a fraction trains at least one step
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    if setup_optimizer is not None:
        setup_optimizer(optimizer)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    scaler = torch.amp.GradScaler(device.type, enabled=runtime.amp)
    step = 0
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        schedule.load_state_dict(resume["scheduler"])
        if runtime.amp and resume.get("scaler"):
            scaler.load_state_dict(resume["scaler"])
        step = int(resume["step"])
    net: nn.Module = model
    if runtime.distributed:
        net = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    model.train()
    bar = tqdm(total=steps, initial=step, desc=desc, disable=not (progress and runtime.is_main), leave=False,
               unit="batch")  # fmt: skip
    while step < steps:
        sampler.set_epoch(step // per_epoch)
        sampler.skip = (step % per_epoch) * per_rank
        epoch_seed = seed * 1009 + step // per_epoch
        for images, labels in distributed.loader(dataset, per_rank, runtime, sampler, epoch_seed):
            images = images.to(device, non_blocking=True)
            labels = torch.as_tensor(labels).to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.float16, enabled=runtime.amp):
                logits = net(images)
            loss = nn.functional.cross_entropy(logits.float(), labels)
            if penalty is not None:
                loss = loss + penalty()
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            schedule.step()
            step += 1
            if every is not None and step % every[0] == 0:
                every[1]()
            bar.update()
            if not bar.disable:  # .item() waits for the GPU: only when someone sees the bar
                bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
            if step >= steps:
                break
            if checkpoint is not None and checkpoint.due():
                checkpoint.save({
                    "step": step, "optimizer": optimizer.state_dict(), "scheduler": schedule.state_dict(),
                    "scaler": scaler.state_dict() if runtime.amp else None,
                })  # fmt: skip
    bar.close()
    distributed.sync_module(model)  # BN statistics differ per rank after the last forward; rank 0's win


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Dataset, batch_size: int = 1000, *, runtime: Runtime | None = None) -> float:
    """Top-1 accuracy as a fraction (every sample counted once, summed over ranks)."""
    runtime = default_runtime(model, runtime)
    model.to(runtime.device).eval()
    correct = seen = 0
    sampler = distributed.EvalShard(dataset, runtime)
    for images, labels in distributed.loader(dataset, batch_size, runtime, sampler):
        labels = torch.as_tensor(labels).to(runtime.device)
        with torch.autocast(runtime.device.type, dtype=torch.float16, enabled=runtime.amp):
            logits = model(images.to(runtime.device))
        correct += int((logits.argmax(dim=1) == labels).sum())
        seen += len(labels)
    correct, seen = distributed.all_reduce_sum([correct, seen], runtime.device)
    return correct / max(seen, 1)
