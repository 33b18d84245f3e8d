"""Runs one peer runtime on one ONNX file and times it: ``python peer_worker.py SPEC.json``.

Executed by path inside the peers' own virtual environments (``make peers``), so it imports only the standard
library, numpy and the runtime it runs (onnxruntime, openvino or deepsparse), never tvm_pattern. SPEC.json:
``runtime`` (``onnxruntime``, ``openvino``, ``openvino-default``, ``deepsparse``), ``onnx``, ``input`` (a .npy),
``threads``, ``warmup``, ``output`` (where the result .npy goes) and ``result`` (the JSON written:
``times_ms``, ``median_ms``, ``version``, ``info``).

The worker does not decide how often to time: after setting up and warming up it says ``@@ready`` on stdout and
then serves its parent, ``run N`` (one untimed run, then N timed ones, answered
``@@times [ms, ...]``) until ``done``. The parent (``interleave``) alternates the runtimes round by round, so a
slow moment of the machine falls on all of them instead of on whichever happened to be running.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np


def _onnxruntime(spec: dict, x: np.ndarray):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = spec["threads"]
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(spec["onnx"], opts, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: x}
    info = {"providers": sess.get_providers(), "intra_op_num_threads": spec["threads"], "inter_op_num_threads": 1}
    return (lambda: sess.run(None, feed)[0]), ort.__version__, info


def _openvino(spec: dict, x: np.ndarray, precision: str | None):
    import openvino as ov

    core = ov.Core()
    config = {"INFERENCE_NUM_THREADS": spec["threads"], "PERFORMANCE_HINT": "LATENCY"}
    if precision is not None:
        config["INFERENCE_PRECISION_HINT"] = precision
    compiled = core.compile_model(spec["onnx"], "CPU", config)
    request = compiled.create_infer_request()
    info = {
        "config": {k: str(v) for k, v in config.items()},
        "inference_precision": str(compiled.get_property("INFERENCE_PRECISION_HINT")),
        "default_precision": str(core.get_property("CPU", "INFERENCE_PRECISION_HINT")),
        "cpu": str(core.get_property("CPU", "FULL_DEVICE_NAME")),
    }

    def run() -> np.ndarray:
        request.infer({0: x})
        return request.get_output_tensor(0).data.copy()

    return run, ov.__version__.split("-")[0], info


def _deepsparse(spec: dict, x: np.ndarray):
    import deepsparse
    from deepsparse import compile_model

    engine = compile_model(spec["onnx"], batch_size=1, num_cores=spec["threads"])
    info = {"num_cores": getattr(engine, "num_cores", spec["threads"]), "batch_size": getattr(engine, "batch_size", 1)}
    return (lambda: engine([x])[0]), deepsparse.__version__, info


READY = "@@ready"
TIMES = "@@times "


def serve(run, warmup: int, info: dict | None = None, commands=None, reply=None) -> tuple[object, list[float]]:
    """Warm up, say ``@@ready`` (with ``info`` as JSON), then time ``run`` in the batches the parent asks for
    (``run N``) until ``done`` or the end of stdin: (the last output, every time in ms, in order).
    ``commands`` / ``reply``: stdin's lines / printing to stdout (tests pass their own)."""
    commands = sys.stdin if commands is None else commands
    reply = reply or (lambda line: print(line, flush=True))
    y = None
    for _ in range(warmup):
        y = run()
    reply(f"{READY} {json.dumps(info or {})}")
    times: list[float] = []
    for line in commands:
        words = line.split()
        if words == ["done"]:
            break
        if len(words) != 2 or words[0] != "run" or not words[1].isdigit():
            raise SystemExit(f"bad command {line!r}: expected 'run N' or 'done'")
        y = run()  # untimed: wakes the threads and warms the caches the other runtimes' turns took
        batch = []
        for _ in range(int(words[1])):
            t0 = time.perf_counter()
            y = run()
            batch.append((time.perf_counter() - t0) * 1e3)
        times += batch
        reply(TIMES + json.dumps(batch))
    return y, times


def main(spec_path: str) -> None:
    with open(spec_path) as f:
        spec = json.load(f)
    x = np.load(spec["input"])
    runtime = spec["runtime"]
    t0 = time.perf_counter()
    if runtime == "onnxruntime":
        run, version, info = _onnxruntime(spec, x)
    elif runtime == "openvino":
        run, version, info = _openvino(spec, x, "f32")
    elif runtime == "openvino-default":
        run, version, info = _openvino(spec, x, None)
    elif runtime == "deepsparse":
        run, version, info = _deepsparse(spec, x)
    else:
        sys.exit(f"unknown runtime {runtime!r}")
    setup_s = time.perf_counter() - t0
    y, times = serve(run, spec["warmup"], info)
    np.save(spec["output"], np.asarray(y, dtype=np.float32))
    result = {"times_ms": times, "median_ms": float(np.median(times)), "version": version, "info": info,
              "setup_s": setup_s}  # fmt: skip
    with open(spec["result"], "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python peer_worker.py SPEC.json (run by `tvm-pattern bench --model`)")
    main(sys.argv[1])
