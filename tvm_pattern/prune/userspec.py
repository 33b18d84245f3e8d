"""The user's own model and data from the command line: ``MODULE:CALLABLE`` specs.

``MODULE`` is an importable module name (the current folder is on ``sys.path``) or a path to a ``.py`` file;
``CALLABLE`` names a function (or class) in it: for ``--model`` it returns an ``nn.Module``, for ``--data`` a
``(train, test)`` pair of map-style ``torch.utils.data.Dataset`` of ``(input tensor, int label)`` samples.
Everything that can go wrong raises ``SpecError`` naming the spec and what was wrong, before anything runs.
"""

from __future__ import annotations

import importlib
import importlib.util
import numbers
import os
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from ..errors import SpecError


def is_spec(text: str | None) -> bool:
    """Whether ``text`` looks like ``MODULE:CALLABLE`` (not a built-in name or a folder)."""
    return bool(text) and ":" in text and not Path(text).is_dir()


def resolve(spec: str, option: str) -> Callable:
    """The callable that ``spec`` (``MODULE:CALLABLE``) names; ``option`` (e.g. ``--model``) is for messages."""
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise SpecError(f"{option} {spec!r}: expected MODULE:CALLABLE (a module name or a .py file, then a name)")
    module = _import(module_name, spec, option)
    target = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise SpecError(f"{option} {spec!r}: module {module_name!r} has no attribute {attr!r}")
        target = getattr(target, part)
    if not callable(target):
        raise SpecError(f"{option} {spec!r}: {attr!r} is a {type(target).__name__}, not a callable")
    return target


def _import(name: str, spec: str, option: str):
    if name.endswith(".py") or os.sep in name or "/" in name:
        path = Path(name).expanduser()
        if not path.is_file():
            raise SpecError(f"{option} {spec!r}: no such file {path}")
        module_name = f"_tvm_pattern_user_{path.stem}_{abs(hash(str(path.resolve())))}"
        if module_name in sys.modules:
            return sys.modules[module_name]
        loader_spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[module_name] = module
        try:
            loader_spec.loader.exec_module(module)
        except Exception as err:
            del sys.modules[module_name]
            raise SpecError(f"{option} {spec!r}: importing {path} failed: {type(err).__name__}: {err}") from err
        return module
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name and name.startswith(err.name):
            raise SpecError(f"{option} {spec!r}: no module named {name!r} (looked in {cwd} and sys.path)") from err
        raise SpecError(f"{option} {spec!r}: importing {name!r} failed: {err}") from err
    except Exception as err:
        raise SpecError(f"{option} {spec!r}: importing {name!r} failed: {type(err).__name__}: {err}") from err


def _call(fn: Callable, spec: str, option: str):
    try:
        return fn()
    except Exception as err:
        raise SpecError(f"{option} {spec!r}: calling it failed: {type(err).__name__}: {err}") from err


def load_model(spec: str, weights: str | os.PathLike | None = None) -> nn.Module:
    """A fresh ``nn.Module`` from ``spec``, with the state dict in ``weights`` loaded if given."""
    model = _call(resolve(spec, "--model"), spec, "--model")
    if not isinstance(model, nn.Module):
        raise SpecError(f"--model {spec!r}: returned a {type(model).__name__}, expected a torch.nn.Module")
    if weights is not None:
        load_weights(model, weights)
    return model


def load_weights(model: nn.Module, weights: str | os.PathLike) -> None:
    """Load a state dict (or a checkpoint dict holding one under ``state_dict``/``model``) into ``model``."""
    path = Path(weights)
    if not path.is_file():
        raise SpecError(f"--weights {str(weights)!r}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise SpecError(f"--weights {str(weights)!r}: not a readable torch state dict ({err})") from err
    if isinstance(state, dict):
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict):
        raise SpecError(f"--weights {str(weights)!r}: holds a {type(state).__name__}, expected a state dict")
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise SpecError(f"--weights {str(weights)!r} does not fit the model: {err}") from err


def load_data(spec: str) -> tuple[Dataset, Dataset]:
    """``(train, test)`` datasets from ``spec``, checked: map-style, non-empty, ``(tensor, label)`` samples."""
    result = _call(resolve(spec, "--data"), spec, "--data")
    if not isinstance(result, tuple | list) or len(result) != 2:
        raise SpecError(f"--data {spec!r}: returned a {type(result).__name__}, expected a (train, test) pair")
    for which, dataset in zip(("train", "test"), result, strict=True):
        check_dataset(dataset, f"--data {spec!r}: the {which} set")
    return result[0], result[1]


def check_dataset(dataset, what: str) -> None:
    """Fail clearly unless ``dataset`` is a non-empty map-style Dataset of ``(tensor, integer label)``."""
    if not isinstance(dataset, Dataset) or not hasattr(dataset, "__len__"):
        raise SpecError(f"{what} is a {type(dataset).__name__}, expected a map-style torch.utils.data.Dataset")
    if len(dataset) == 0:
        raise SpecError(f"{what} is empty")
    try:
        sample = dataset[0]
    except Exception as err:
        raise SpecError(f"{what}: reading sample 0 failed: {type(err).__name__}: {err}") from err
    if not isinstance(sample, tuple | list) or len(sample) != 2 or not torch.is_tensor(sample[0]):
        raise SpecError(f"{what}: sample 0 is {type(sample).__name__}, expected (input tensor, integer label)")
    label = sample[1]
    integral_tensor = torch.is_tensor(label) and label.numel() == 1 and not label.is_floating_point()
    if not (isinstance(label, numbers.Integral) or integral_tensor):
        raise SpecError(f"{what}: the label of sample 0 is {label!r}, expected an integer class index")
