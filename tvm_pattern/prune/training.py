"""Plain supervised training and evaluation loops with progress bars (PyTorch)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .data import Split


def batches(split: Split, batch_size: int, shuffle: bool, generator: torch.Generator | None = None):
    """Yield (images, labels) tensors; the whole split lives in memory (Fashion-MNIST is small)."""
    x, y = torch.from_numpy(split.images), torch.from_numpy(split.labels)
    order = torch.randperm(len(y), generator=generator) if shuffle else torch.arange(len(y))
    for start in range(0, len(y), batch_size):
        idx = order[start : start + batch_size]
        yield x[idx], y[idx]


def train(
    model: nn.Module,
    split: Split,
    epochs: float,
    lr: float = 1e-3,
    batch_size: int = 128,
    penalty: Callable[[], torch.Tensor] | None = None,
    every: tuple[int, Callable[[], None]] | None = None,
    setup_optimizer: Callable[[torch.optim.Optimizer], object] | None = None,
    desc: str = "train",
    seed: int = 0,
    progress: bool = True,
) -> None:
    """Adam with cosine decay for ``epochs`` (fractions allowed) over ``split``.

    ``penalty()`` is added to the loss (ADMM); ``every=(n, fn)`` calls ``fn`` every n batches;
    ``setup_optimizer(opt)`` runs once the optimiser exists (e.g. to mask its state).
    """
    steps = max(1, round(epochs * int(np.ceil(len(split.labels) / batch_size))))
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    if setup_optimizer is not None:
        setup_optimizer(optimizer)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    bar = tqdm(total=steps, desc=desc, disable=not progress, leave=False, unit="batch")
    step = 0
    while step < steps:
        for images, labels in batches(split, batch_size, shuffle=True, generator=generator):
            loss = nn.functional.cross_entropy(model(images), labels)
            if penalty is not None:
                loss = loss + penalty()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            if every is not None and step % every[0] == 0:
                every[1]()
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
            if step >= steps:
                break
    bar.close()


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, batch_size: int = 1000) -> float:
    """Top-1 accuracy as a fraction."""
    model.eval()
    correct = 0
    for images, labels in batches(split, batch_size, shuffle=False):
        correct += int((model(images).argmax(dim=1) == labels).sum())
    return correct / len(split.labels)
