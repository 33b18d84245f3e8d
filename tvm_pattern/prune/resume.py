"""Checkpoints of a pruning run (``--checkpoint-dir``), so a crash or a kill costs minutes, not the ADMM state.

One file, ``DIR/checkpoint.pt``, replaced atomically (written to a temporary file in ``DIR``, fsynced, then
``os.replace``), so a kill at any moment leaves either the previous checkpoint or the new one. It holds the
settings the run was started with, the phase (``dense``, ``patterns:admm``, ``patterns:retrain``,
``connectivity:admm``, ``connectivity:retrain``, ``done``), the model, the loop state part-way through a
phase (step, optimiser, LR schedule, AMP scaler), the ADMM state (Z, Y, U, V, rho), the masks, the library,
the accuracies so far and every rank's RNG states. It is written at every phase boundary and, inside a
phase, every ``every_s`` seconds (rank 0 decides, every rank agrees). Only rank 0 writes.

Loading checks the settings: a checkpoint made with other settings is refused, naming each difference.
"""

from __future__ import annotations

import os
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ..errors import CheckpointError
from . import distributed
from .distributed import Runtime

FILE = "checkpoint.pt"
VERSION = 1


def rng_state(device: torch.device) -> dict:
    """This process's RNG states (torch CPU, CUDA device, numpy, Python) as tensors and plain values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
        "python": random.getstate(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


class Checkpointer:
    """Saves and loads ``DIR/checkpoint.pt`` for a run with ``settings`` (a flat dict of what must match)."""

    def __init__(self, directory: str | os.PathLike, settings: dict, runtime: Runtime | None = None,
                 every_s: float = 300.0, log=print) -> None:  # fmt: skip
        self.directory = Path(directory)
        self.path = self.directory / FILE
        self.settings = dict(settings)
        self.runtime = runtime or Runtime()
        self.every_s = every_s
        self.log = log if self.runtime.is_main else (lambda *_: None)
        self._last = time.monotonic()
        self.saved = 0

    def load(self) -> dict | None:
        """The saved state if there is a checkpoint (refused if made with other settings), else None; collective."""
        here = self.path.is_file()
        if distributed.broadcast_object(here) != here:  # rank 0 writes it; every rank must read the same file
            raise CheckpointError(f"rank {self.runtime.rank} {'does not see' if not here else 'sees'} {self.path} "
                                  f"and rank 0 {'does' if not here else 'does not'}: --checkpoint-dir must be "
                                  f"on storage all nodes share")  # fmt: skip
        if not here:
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise CheckpointError(f"checkpoint {self.path} cannot be read ({type(err).__name__}: {err}); "
                                  f"delete it or use another --checkpoint-dir") from err  # fmt: skip
        check_settings(state.get("settings", {}), self.settings, self.path)
        ranks = len(state.get("rng", []))
        if ranks != self.runtime.world_size:
            raise CheckpointError(f"checkpoint {self.path} holds RNG states of {ranks} ranks, "
                                  f"this run has world_size {self.runtime.world_size}")  # fmt: skip
        set_rng_state(state["rng"][self.runtime.rank], self.runtime.device)
        where = state["phase"] if state.get("loop") is None else f"{state['phase']}, step {state['loop']['step']}"
        self.log(f"resuming from {self.path} ({where})")
        self._last = time.monotonic()
        return state

    def due(self) -> bool:
        """Whether a periodic checkpoint is due now; collective: every rank gets rank 0's answer."""
        flag = time.monotonic() - self._last >= self.every_s
        if not distributed.active():
            return flag
        carrier = torch.tensor([int(flag)], dtype=torch.int32, device=self.runtime.device)
        distributed.broadcast_tensors([carrier])  # one int per step, not a pickled object
        return bool(carrier.item())

    def save(self, state: dict) -> None:
        """Write ``state`` (plus settings and every rank's RNG) atomically; collective, rank 0 writes."""
        rngs = distributed.all_gather_object(rng_state(self.runtime.device))
        if self.runtime.is_main:
            full = {**state, "version": VERSION, "settings": self.settings, "rng": rngs,
                    "world_size": self.runtime.world_size, "time": time.time()}  # fmt: skip
            write_atomic(full, self.path)
            self.saved += 1
        distributed.barrier()
        self._last = time.monotonic()


def write_atomic(obj, path: Path) -> None:
    """``torch.save`` to a temporary file next to ``path``, flushed to disk, then renamed over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; a checkpoint should look like any other file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_settings(saved: dict, current: dict, path: Path) -> None:
    """Refuse to resume unless every setting matches; the message names each one that differs."""
    keys = sorted(set(saved) | set(current))
    differ = [key for key in keys if saved.get(key) != current.get(key)]
    if differ:
        lines = "; ".join(f"{key}: checkpoint has {saved.get(key)!r}, this run has {current.get(key)!r}"
                          for key in differ)  # fmt: skip
        raise CheckpointError(f"checkpoint {path} was made with other settings ({lines}); "
                              f"rerun with the same settings, or use another --checkpoint-dir")  # fmt: skip
