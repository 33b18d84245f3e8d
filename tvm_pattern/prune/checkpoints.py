"""Trained dense models, cached on disk so the demo trains them once."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from . import models
from .data import Split
from .training import train

ENV_VAR = "TVM_PATTERN_CACHE"


def cache_dir() -> Path:
    return Path(os.environ.get(ENV_VAR) or Path.home() / ".cache" / "tvm-pattern")


def dense_model(
    name: str,
    train_split: Split,
    epochs: float,
    seed: int = 0,
    use_cache: bool = True,
    progress: bool = True,
    log=print,
) -> nn.Module:
    """A trained ``name`` model: from the cache if the same recipe was trained before, else trained now."""
    key = hashlib.sha256(json.dumps([name, epochs, seed, len(train_split.labels)]).encode()).hexdigest()[:12]
    path = cache_dir() / f"{name}-dense-{key}.pt"
    torch.manual_seed(seed)
    model = models.build(name)
    if use_cache and path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
        log(f"dense model loaded from cache {path}")
        return model.eval()
    train(model, train_split, epochs, desc="dense: train", seed=seed, progress=progress)
    log(f"dense model trained for {epochs} epochs")
    if use_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as tmp:
            torch.save(model.state_dict(), tmp.name)
        os.replace(tmp.name, path)
    return model.eval()
