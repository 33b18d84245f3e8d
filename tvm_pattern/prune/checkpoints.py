"""Trained dense built-in models, cached on disk so the demo trains them once.

(Checkpoints of a whole run, for resuming, are ``resume``'s business.) Under ``torchrun`` every rank
trains (data-parallel), or rank 0 loads the cached file and broadcasts it; only rank 0 writes it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from . import distributed, models
from .distributed import Runtime
from .resume import write_atomic
from .training import train

ENV_VAR = "TVM_PATTERN_CACHE"


def cache_dir() -> Path:
    return Path(os.environ.get(ENV_VAR) or Path.home() / ".cache" / "tvm-pattern")


def cache_path(name: str, train_set: Dataset, epochs: float, seed: int, batch_size: int = 128,
               world_size: int = 1) -> Path:  # fmt: skip
    recipe = [name, epochs, seed, len(train_set)]
    if (batch_size, world_size) != (128, 1):  # keeps the keys of models cached before these settings existed
        recipe += [batch_size, world_size]
    return cache_dir() / f"{name}-dense-{hashlib.sha256(json.dumps(recipe).encode()).hexdigest()[:12]}.pt"


def dense_model(
    name: str,
    train_split: Dataset,
    epochs: float,
    seed: int = 0,
    use_cache: bool = True,
    progress: bool = True,
    log=print,
    *,
    runtime: Runtime | None = None,
    batch_size: int = 128,
    train_fn=None,
) -> nn.Module:
    """A trained ``name`` model: from the cache if the same recipe was trained before, else trained now.

    ``train_fn(model)`` trains it (default: ``training.train`` for ``epochs``), e.g. with checkpoints.
    """
    runtime = runtime or Runtime()
    log = log if runtime.is_main else (lambda *_: None)
    path = cache_path(name, train_split, epochs, seed, batch_size, runtime.world_size)
    torch.manual_seed(seed)
    model = models.build(name).to(runtime.device)
    if use_cache and distributed.broadcast_object(path.is_file()):
        if runtime.is_main:  # rank 0 wrote it; other nodes may not see the file
            model.load_state_dict(torch.load(path, map_location=runtime.device, weights_only=True))
        distributed.sync_module(model)
        log(f"dense model loaded from cache {path}")
        return model.eval()
    if train_fn is None:
        train(model, train_split, epochs, batch_size=batch_size, desc="dense: train", seed=seed, progress=progress,
              runtime=runtime)  # fmt: skip
    else:
        train_fn(model)
    log(f"dense model trained for {epochs} epochs")
    if use_cache and runtime.is_main:
        write_atomic({k: v.cpu() for k, v in model.state_dict().items()}, path)
    distributed.barrier()
    return model.eval()
