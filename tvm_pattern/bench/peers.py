"""``tvm-pattern bench --model``: one whole model, every runtime side by side, each in its own process.

The runtimes: ours (``compiler.compile_file`` to x86, then the Relax VM), PyTorch (built-in models only),
ONNX Runtime, OpenVINO (f32; and its default precision as a separate "bf16" row on CPUs whose default is
bf16), DeepSparse 1.8. Each runs in a fresh interpreter (the peers' from their own venvs under ``.peers/``,
set up by ``make peers``) with its thread count set through its own API and the usual environment variables
(``OMP_NUM_THREADS``, ``TVM_NUM_THREADS``, ...), on the same ONNX file and the same input. They are set up one
at a time, then timed in turns (``interleave``: ``ROUNDS`` rounds, a few runs each per round, one runtime
running at a time); times are medians of ``repeats`` runs after ``warmup`` runs. A runtime that is not installed is
reported as missing, never as a failure; one that crashes is reported with its error.

Every output is compared with ONNX Runtime's (PyTorch's when ONNX Runtime is missing):
``max_rel_err = max|y - y_ref| / max|y_ref|``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ..errors import TvmPatternError
from .interleave import Worker, WorkerError, batches, run_rounds
from .peer_worker import READY

__all__ = ["RUNTIMES", "cpu_info", "peers_dir", "round_speedups", "run_model_bench", "table"]

WORKER = Path(__file__).with_name("peer_worker.py")
MISSING = "not installed: run `make peers`"
TOLERANCE = 1e-4  # ours vs the reference, relative to the reference's peak
PAUSE_S = 1.0  # between two runtimes' turns: the last one's threads stop spinning
ROUNDS = 5  # timed rounds (``interleave``): each runtime runs repeats / ROUNDS times per round, in turn
TIMEOUT_S = 3600

# name -> (label, venv under .peers/ or None for the project's own interpreter, module it needs)
RUNTIMES: dict[str, tuple[str, str | None, str]] = {
    "onnxruntime": ("ONNX Runtime", "runtimes", "onnxruntime"),
    "ours": ("tvm-pattern", None, "tvm"),
    "pytorch": ("PyTorch", None, "torch"),
    "openvino": ("OpenVINO f32", "runtimes", "openvino"),
    "openvino-default": ("OpenVINO bf16 (default prec.)", "runtimes", "openvino"),
    "deepsparse": ("DeepSparse", "deepsparse", "deepsparse"),
}


def peers_dir() -> Path:
    """Where ``make peers`` puts the peers' venvs: ``$TVM_PATTERN_PEERS``, else ``.peers/`` of this checkout."""
    env = os.environ.get("TVM_PATTERN_PEERS")
    return Path(env) if env else Path(__file__).resolve().parents[2] / ".peers"


def interpreter(runtime: str) -> str | None:
    """The Python that runs ``runtime``: its peer venv's, else this one if it has the module, else None."""
    _, venv, module = RUNTIMES[runtime]
    if venv is not None:
        python = peers_dir() / venv / "bin" / "python"
        if python.is_file() and (peers_dir() / venv / ".installed").is_file():
            return str(python)
    return sys.executable if importlib.util.find_spec(module) is not None else None


def cpu_info() -> dict:
    """CPU name, the ISA flags that matter here, and the cores this process may use."""
    from ..targets import host_cores

    name, flags = "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and name == "unknown":
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    isa = {f: f in flags for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "avx512_vnni")}
    return {"name": name, "cores": host_cores(), "avx2": isa["avx2"], "avx512": isa["avx512f"], "flags": isa}


def _env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TVM_NUM_THREADS"):
        env[var] = str(threads)
    env["NM_DISABLE_ANALYTICS"] = "1"  # DeepSparse
    env["PYTHONNOUSERSITE"] = "1"
    return env


def _start(name: str, row: dict, base: dict, builtin: bool, results: dict, cpu: dict, work: Path, env: dict,
           timeout: float, echo) -> Worker | None:  # fmt: skip
    """Start ``name``'s process on the spec ``base`` (what every runtime shares) and wait until it is set up and
    warmed up (``@@ready``); None when the runtime does not apply here, is not installed or failed to start
    (``row`` says which)."""
    label = row["label"]
    if name == "pytorch" and not builtin:
        row.update(status="n/a", reason="built-in models only")
        return None
    if name == "openvino-default":
        default = _openvino_default(results.get("openvino"), cpu)
        if default != "bf16":
            row.update(status="n/a", reason=f"OpenVINO's default precision on this CPU is {default}, the f32 row is it")
            return None
    python = interpreter(name)
    if python is None:
        row.update(status="missing", reason=MISSING)
        echo(f"{label}: {MISSING}")
        return None
    spec = {**base, "runtime": name, "output": str(work / f"out-{name}.npy"),
            "result": str(work / f"result-{name}.json")}  # fmt: skip
    spec_path = work / f"spec-{name}.json"
    spec_path.write_text(json.dumps(spec))
    if name in ("ours", "pytorch"):
        command = [python, "-m", "tvm_pattern.bench.worker", str(spec_path)]
    else:
        command = [python, str(WORKER), str(spec_path)]
    echo(f"{label}: setting up ({'compile + ' if name == 'ours' else ''}{base['warmup']} warm-up) ...")
    run_env = env if RUNTIMES[name][1] is None else {k: v for k, v in env.items() if k != "PYTHONPATH"}
    t0 = time.perf_counter()
    worker = Worker(command, run_env, work / f"log-{name}.txt")
    try:
        ready = worker.expect(READY, timeout)
    except WorkerError as err:
        worker.close()
        row.update(status="failed", reason=str(err), wall_s=time.perf_counter() - t0)
        echo(f"{label}: failed: {err}")
        return None
    row.update(python=python, setup_wall_s=time.perf_counter() - t0, info=json.loads(ready or "{}"))
    return worker


def _collect(name: str, worker: Worker, row: dict, rounds: list[list[float]], error: str | None, work: Path,
             outputs: dict, timeout: float, echo) -> None:  # fmt: skip
    """Ask a timed worker for its results (``done``) and fill its row: its runs, their median, each round's
    median, its output for the comparison; or the failure."""
    if error is None:
        try:
            worker.finish(timeout)
        except WorkerError as err:
            error = str(err)
            echo(f"{row['label']}: failed: {err}")
    if error is not None:
        row.update(status="failed", reason=error)
        return
    result = json.loads((work / f"result-{name}.json").read_text())
    row.update(status="measured", **result, round_medians_ms=[float(np.median(r)) for r in rounds])
    outputs[name] = np.load(work / f"out-{name}.npy")


# ---------------------------------------------------------------------------------------------- the bench


def _input_shape(onnx_path: Path) -> list[int]:
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise TvmPatternError(f"{onnx_path}: expected one input, found {[i.name for i in inputs]}")
    dims = inputs[0].type.tensor_type.shape.dim
    shape = [d.dim_value if d.HasField("dim_value") else 1 for d in dims]  # symbolic dims (batch) -> 1
    if inputs[0].type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise TvmPatternError(f"{onnx_path}: the input must be float32")
    return shape


def _prepare(model: str, compression: float | None, work: Path, size: int, scale: float, seed: int,
             save_pruned: Path | None = None, prune_only: list[str] | None = None) -> dict:  # fmt: skip
    """The ONNX file (and for built-in models the PyTorch weights) every runtime gets.

    With ``compression``, an ONNX file is pruned one-shot (``prune.oneshot.prune_onnx``) and a built-in model
    before export; the pruned file goes to ``save_pruned`` (else the work folder) and is the one timed.
    """
    if model.endswith(".onnx") or Path(model).is_file():
        path = Path(model)
        if not path.is_file():
            raise TvmPatternError(f"ONNX model {path} does not exist")
        pruning = None
        if compression is not None:
            from ..prune.oneshot import prune_onnx

            out = save_pruned or work / f"pruned-{path.name}"
            pruning = prune_onnx(path, out, compression, prune_only=prune_only)
            path = out
        elif save_pruned is not None:
            raise TvmPatternError("--save-pruned needs --compression 2.25 or 8")
        return {"onnx": path.resolve(), "builtin": False, "pruning": pruning, "input_shape": _input_shape(path)}
    import torch

    from . import models

    if model not in models.MODELS:
        raise TvmPatternError(f"unknown model {model!r}; choose one of {sorted(models.MODELS)} or an .onnx file")
    kwargs = {"scale": scale} if scale != 1.0 else {}
    if model == "vgg16" and size != 224:
        kwargs["pool"] = max(1, size // 32)  # the adaptive pool stays the identity, as at 224
    net = models.build(model, seed=seed, size=size, **kwargs)
    pruning = models.prune_model(net, compression, prune_only)
    onnx_path = models.export_onnx(net, save_pruned or work / f"{model}.onnx", size=size)
    weights = work / f"{model}.pt"
    torch.save(net.state_dict(), weights)
    return {"onnx": onnx_path, "builtin": True, "pruning": pruning, "weights": weights, "kwargs": kwargs,
            "input_shape": [1, 3, size, size]}  # fmt: skip


def _openvino_default(f32_row: dict | None, cpu: dict) -> str:
    """OpenVINO's default inference precision here: what its CPU plugin said in the f32 run, else the CPU flags
    (it defaults to bf16 where the CPU has native bf16: AVX512_BF16 or AMX)."""
    said = ((f32_row or {}).get("info") or {}).get("default_precision", "")
    if said:
        return "bf16" if "bf16" in said else "f32" if "f32" in said or "float32" in said else said
    return "bf16" if cpu["flags"].get("avx512_bf16") or cpu["flags"].get("amx_bf16") else "f32"


def run_model_bench(
    model: str,
    compression: float | None = None,
    json_path: str | os.PathLike | None = None,
    threads: int | None = None,
    repeats: int = 15,
    warmup: int = 3,
    size: int = 224,
    scale: float = 1.0,
    seed: int = 0,
    runtimes: list[str] | None = None,
    echo=print,
    timeout: float = TIMEOUT_S,
    database: str | os.PathLike | None = None,
    save_pruned: str | os.PathLike | None = None,
    prune_only: list[str] | None = None,
) -> dict:
    """Benchmark ``model`` (a built-in name or an ONNX file) on every runtime; print a table, write JSON.

    ``runtimes`` restricts the set (default: all). ``database``: ours compiles with this tuning work directory
    (``tvm-pattern tune`` on the same model: a built-in model is the same ONNX for the same seed, size, scale and
    compression). ``compression`` prunes the model one-shot first (an ONNX file too); ``save_pruned`` keeps that
    pruned ONNX, the very file every runtime timed; ``prune_only`` limits the pruning to some layer types.
    Returns the JSON dict.
    """
    from .profile import breakdown_chart, breakdown_table

    cpu = cpu_info()
    threads = cpu["cores"] if threads is None else threads
    if repeats < 1 or warmup < 1:
        raise TvmPatternError("--repeats and the warm-ups must be at least 1")
    if threads < 1:
        raise TvmPatternError(f"--threads {threads}: must be at least 1")
    if json_path and not Path(json_path).parent.is_dir():  # found now, not after every runtime has run
        raise TvmPatternError(f"--json {json_path}: no folder {Path(json_path).parent}")
    if save_pruned is not None:
        save_pruned = Path(save_pruned)
        if not save_pruned.parent.is_dir():
            raise TvmPatternError(f"--save-pruned {save_pruned}: no folder {save_pruned.parent}")
        if compression is None:
            raise TvmPatternError("--save-pruned needs --compression 2.25 or 8")
    if database is not None and not Path(database).is_dir():
        raise TvmPatternError(f"--db {database}: no such tuning work directory")
    chosen = list(RUNTIMES) if runtimes is None else runtimes
    unknown = sorted(set(chosen) - set(RUNTIMES))
    if unknown:
        raise TvmPatternError(f"unknown runtime(s) {unknown}; choose from {list(RUNTIMES)}")
    work = Path(tempfile.mkdtemp(prefix="tvm-pattern-bench-model-"))
    try:
        prep = _prepare(model, compression, work, size, scale, seed, save_pruned, prune_only)
        shape = prep["input_shape"]
        x = np.random.default_rng(seed + 1).standard_normal(shape).astype(np.float32)
        np.save(work / "input.npy", x)
        base = {"onnx": str(prep["onnx"]), "input": str(work / "input.npy"), "threads": threads, "warmup": warmup,
                "lib": str(work / "ours.so"), "model": model,
                "kwargs": prep.get("kwargs"), "weights": str(prep.get("weights")),
                "db": None if database is None else str(Path(database).resolve())}  # fmt: skip
        env = _env(threads)
        results: dict[str, dict] = {}
        outputs: dict[str, np.ndarray] = {}
        workers: dict[str, Worker] = {}
        try:
            for name in chosen:
                row = {"runtime": name, "label": RUNTIMES[name][0]}
                results[name] = row
                worker = _start(name, row, base, prep["builtin"], results, cpu, work, env, timeout, echo)
                if worker is not None:
                    workers[name] = worker
                    time.sleep(PAUSE_S)  # let its warm-up threads go quiet
            if workers:
                plan = batches(repeats, ROUNDS)
                echo(f"timing {', '.join(RUNTIMES[n][0] for n in workers)}: {repeats} runs each, in {len(plan)} "
                     "alternating rounds ...")  # fmt: skip
            timed, failed = run_rounds(workers, repeats, ROUNDS, PAUSE_S, timeout, echo)
            for name, worker in workers.items():
                _collect(name, worker, results[name], timed[name], failed.get(name), work, outputs, timeout, echo)
        finally:
            for worker in workers.values():
                worker.close()
        reference = next((r for r in ("onnxruntime", "pytorch", "ours") if r in outputs), None)
        for name, row in results.items():
            if name in outputs and reference is not None:
                ref, y = outputs[reference], outputs[name]
                if y.shape != ref.shape:
                    row["max_rel_err"] = None
                    row["error_note"] = f"output shape {list(y.shape)} vs {list(ref.shape)}"
                else:
                    row["max_rel_err"] = float(np.abs(y - ref).max() / max(float(np.abs(ref).max()), 1e-30))
                row["speedup_vs_reference"] = results[reference]["median_ms"] / row["median_ms"]
                row["round_speedups"] = round_speedups(results[reference], row)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    ours = results.get("ours", {})
    result = {
        "model": model if prep["builtin"] else str(prep["onnx"]),
        "builtin": prep["builtin"],
        "compression": compression,
        "input_shape": shape,
        "batch": shape[0],
        "dtype": "float32",
        "threads": threads,
        "repeats": repeats,
        "warmup": warmup,
        "seed": seed,
        "cpu": cpu,
        "reference": reference,
        "metric": "median ms of `repeats` runs after `warmup`; speedup = reference ms / ms; "
                  "max_rel_err = max|y - y_ref| / max|y_ref|; round_speedups = reference round median / round median, "
                  "per round",
        "runtimes": list(results.values()),
        "ours_within_tolerance": _within(ours, reference),
        "tolerance": TOLERANCE,
        "pruning": prep["pruning"],
    }
    if scale != 1.0:
        result["scale"] = scale
    if database is not None:
        result["database"] = str(database)
    echo(table(result))
    if ours.get("breakdown"):
        echo("\ntvm-pattern: time per op type (VM instrument hook, mean of 3 runs)")
        echo(breakdown_table(ours["breakdown"]))
    if json_path:
        json_path = Path(json_path)
        json_path.write_text(json.dumps(result, indent=1))
        if ours.get("breakdown"):
            png = json_path.with_suffix(".png")
            breakdown_chart(ours["breakdown"], png, f"tvm-pattern on {Path(result['model']).name}: time per op type")
            result["breakdown_png"] = str(png)
            json_path.write_text(json.dumps(result, indent=1))
        echo(f"wrote {json_path}")
    return result


def _within(ours: dict, reference: str | None) -> bool | None:
    """Whether ours is within ``TOLERANCE`` of the reference; None if there is nothing to compare."""
    if ours.get("status") == "failed":
        return False
    if ours.get("status") != "measured" or reference in (None, "ours"):
        return None
    return ours.get("max_rel_err") is not None and ours["max_rel_err"] <= TOLERANCE


def sparse_note(r: dict) -> str:
    """"31/53 layers sparse (3x3 13, 1x1 16, ...)": our sparse kernels among all conv / linear layers."""
    kinds = r.get("sparse_layers")
    if kinds is None:  # a result from before the per-kind counts
        return f"{r['sparse_convs']}/{r['convs']} convs sparse"
    detail = ", ".join(f"{k} {n}" for k, n in kinds.items())
    return f"{sum(kinds.values())}/{r['layers']} layers sparse" + (f" ({detail})" if detail else "")


def round_speedups(reference: dict, row: dict) -> list[float]:
    """The speed-up over the reference in each round (its round median / this runtime's, the same round): how far
    the host's slow and fast phases move the ratio."""
    ref, mine = reference.get("round_medians_ms") or [], row.get("round_medians_ms") or []
    return [a / b for a, b in zip(ref, mine, strict=True)] if len(ref) == len(mine) else []


def _spread(speedups: list[float]) -> str:
    return f"{min(speedups):.2f}-{max(speedups):.2f}x" if speedups else "-"


def table(result: dict) -> str:
    """One row per runtime: median ms, speed-up over the reference (overall, and its range over the rounds),
    max relative error vs the reference."""
    ref = result["reference"]
    ref_label = RUNTIMES[ref][0] if ref else "-"
    comp = "dense" if result["compression"] is None else f"{result['compression']:g}x"
    title = (f"{Path(result['model']).name}, {comp}, input {result['input_shape']} fp32, {result['threads']} threads, "
             f"median of {result['repeats']} ({result['cpu']['name']})")  # fmt: skip
    head = f"{'runtime':<30}{'ms':>10}{'vs ' + ref_label:>18}{'per round':>14}{'max rel err':>14}  notes"
    lines = [title, head, "-" * (len(head) + 10)]
    for r in result["runtimes"]:
        if r["status"] != "measured":
            lines.append(f"{r['label']:<30}{'-':>10}{'-':>18}{'-':>14}{'-':>14}  {r['status']}: {r['reason']}")
            continue
        err = "-" if r.get("max_rel_err") is None else f"{r['max_rel_err']:.1e}"
        note = f"compile {r['compile_s']:.1f} s, {sparse_note(r)}" if r["runtime"] == "ours" else r.get("version", "")
        if r.get("database"):
            note = f"{note}, tuned: {r['tuned']['sparse']} sparse + {r['tuned']['dense']} dense kernels from --db"
        if r["runtime"] == ref:
            note = f"{note} (reference)"
        spread = _spread(r.get("round_speedups") or [])
        lines.append(f"{r['label']:<30}{r['median_ms']:>10.2f}{r['speedup_vs_reference']:>17.2f}x{spread:>14}{err:>14}"
                     f"  {note}")
    return "\n".join(lines)
