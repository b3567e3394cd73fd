"""Compute bound of the image encoder: graph FLOPs and the machine's measured fp32 peak.

FLOPs are counted from the ONNX graph itself (after shape inference at batch 1): every
``Conv``, ``ConvTranspose``, ``Gemm`` and ``MatMul`` contributes ``2 x MACs``; elementwise
ops, pooling and activations are ignored (they are memory-bound and small in FLOPs).

The peak is the best of a few large square fp32 GEMMs: with numpy (its BLAS) and with
onnxruntime (a one-node MatMul graph) on the given number of threads, and onnxruntime on
one thread times the thread count; the highest of the three counts.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

#: Side of the square matrices used to measure peak fp32 GEMM throughput.
PEAK_N = 2048
#: Timed repetitions of the peak GEMM (the best one counts).
PEAK_REPEATS = 5


def _dims(vi) -> list[int] | None:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    return None if any(d is None for d in dims) else dims


def _fixed_batch(model, batch: int):
    """Copy of ``model`` with every graph input's symbolic dimensions set to ``batch``."""
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    for inp in m.graph.input:
        for d in inp.type.tensor_type.shape.dim:
            if not d.HasField("dim_value"):
                d.dim_value = batch
    return onnx.shape_inference.infer_shapes(m, data_prop=True)


_COUNTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def _runtime_shapes(model, names: list[str]) -> dict[str, list[int]]:
    """Shapes static inference could not find (e.g. pads computed by ops), from one run.

    The named tensors are added as graph outputs and the graph is run once on zeros.
    """
    import onnx
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(model)
    for name in names:
        m.graph.output.append(onnx.ValueInfoProto(name=name))
    feed = {}
    for inp in m.graph.input:
        if inp.name in {i.name for i in m.graph.initializer}:
            continue
        dtype = onnx.helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type)
        feed[inp.name] = np.ones(_dims(inp) or [1], dtype=dtype)
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    values = sess.run(names, feed)
    return {n: list(v.shape) for n, v in zip(names, values)}


def _node_macs(node, shapes: dict[str, list[int]]) -> int:
    """Multiply-accumulates of one node (0 for ops that are not counted)."""
    if node.op_type in ("Conv", "ConvTranspose"):
        w, y = shapes.get(node.input[1]), shapes.get(node.output[0])
        if not w or not y:
            raise ValueError(f"ONNX node {node.name or node.op_type}: shapes unknown after inference")
        # weight (Cout, Cin/group, kh, kw): each output element takes prod(w[1:]) MACs
        return int(np.prod(y, dtype=np.int64)) * int(np.prod(w[1:], dtype=np.int64))
    if node.op_type in ("Gemm", "MatMul"):
        a, y = shapes.get(node.input[0]), shapes.get(node.output[0])
        if not a or not y:
            raise ValueError(f"ONNX node {node.name or node.op_type}: shapes unknown after inference")
        k = a[0] if node.op_type == "Gemm" and _attr(node, "transA") else a[-1]
        return int(np.prod(y, dtype=np.int64)) * int(k)
    return 0


def _attr(node, name: str) -> int:
    for a in node.attribute:
        if a.name == name:
            return a.i
    return 0


def graph_flops(onnx_path: str | Path) -> dict:
    """FLOPs per item of an ONNX graph: ``{"flops": float, "by_op": {op: flops}}``.

    Counted at batch 1 (the graph has a dynamic batch axis; FLOPs scale linearly).
    """
    import onnx

    model = _fixed_batch(onnx.load(str(onnx_path)), 1)
    shapes: dict[str, list[int]] = {}
    for vi in (*model.graph.input, *model.graph.value_info, *model.graph.output):
        dims = _dims(vi)
        if dims is not None:
            shapes[vi.name] = dims
    for init in model.graph.initializer:
        shapes[init.name] = list(init.dims)
    needed = {n for node in model.graph.node if node.op_type in _COUNTED
              for n in (node.input[0], node.input[1], node.output[0])}
    if needed - shapes.keys():
        shapes.update(_runtime_shapes(model, sorted(needed - shapes.keys())))
    by_op: dict[str, float] = {}
    for node in model.graph.node:
        macs = _node_macs(node, shapes)
        if macs:
            by_op[node.op_type] = by_op.get(node.op_type, 0.0) + 2.0 * macs
    return {"flops": float(sum(by_op.values())), "by_op": by_op}


_NUMPY_PEAK = """
import sys, time, numpy as np
n, reps = int(sys.argv[1]), int(sys.argv[2])
rng = np.random.default_rng(0)
a = rng.standard_normal((n, n), dtype=np.float32); b = rng.standard_normal((n, n), dtype=np.float32)
a @ b
best = min((lambda t: (a @ b, time.perf_counter() - t)[1])(time.perf_counter()) for _ in range(reps))
print(2.0 * n ** 3 / best / 1e9)
"""


def numpy_peak_gflops(threads: int, n: int = PEAK_N, repeats: int = PEAK_REPEATS) -> float:
    """Best fp32 GFLOP/s of ``(n,n) @ (n,n)`` with numpy, BLAS pinned to ``threads`` threads.

    Runs in a subprocess so the thread-count environment variables take effect.
    """
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    out = subprocess.run([sys.executable, "-c", _NUMPY_PEAK, str(n), str(repeats)], env=env,
                         check=True, capture_output=True, text=True, timeout=600)
    return float(out.stdout.strip().splitlines()[-1])


def ort_peak_gflops(threads: int, n: int = PEAK_N, repeats: int = PEAK_REPEATS) -> float:
    """Best fp32 GFLOP/s of one onnxruntime ``MatMul`` node ``(n,n) @ (n,n)`` on ``threads`` threads."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["y"])], "peak",
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [n, n]) for x in ("a", "b")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, n])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = min(model.ir_version, onnx.IR_VERSION)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feed = {x: rng.standard_normal((n, n), dtype=np.float32) for x in ("a", "b")}
    sess.run(None, feed)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        sess.run(None, feed)
        best = min(best, time.perf_counter() - t)
    return 2.0 * n ** 3 / best / 1e9


def measure(image_onnx: str | Path, images_per_s: float, threads: int, n: int = PEAK_N,
            reps: int = PEAK_REPEATS) -> dict:
    """Image-encoder FLOPs, achieved GFLOP/s at ``images_per_s`` and the fp32 GEMM peaks.

    Args:
        images_per_s: the encoder-only image rate measured in this run.
        threads: threads of the peak GEMMs (the encoder's onnxruntime default on this machine).
        n, reps: GEMM side and timed repetitions (best counts).
    """
    fl = graph_flops(image_onnx)
    peak_np = numpy_peak_gflops(threads, n, reps)
    peak_ort = ort_peak_gflops(threads, n, reps)
    peak_ort1 = ort_peak_gflops(1, n, reps)
    # with other jobs on the cores a 2-thread GEMM often gets less than 2 cores' worth;
    # threads x the 1-thread peak keeps the denominator from being understated
    peak = max(peak_np, peak_ort, threads * peak_ort1)
    achieved = fl["flops"] * images_per_s / 1e9
    return {
        "gflops_per_image": fl["flops"] / 1e9, "flops_by_op": {k: v / 1e9 for k, v in fl["by_op"].items()},
        "images_per_s": images_per_s, "achieved_gflops": achieved, "threads": threads, "gemm_n": n,
        "gemm_repeats": reps, "peak_numpy_gflops": peak_np, "peak_ort_gflops": peak_ort,
        "peak_ort_1thread_gflops": peak_ort1, "peak_gflops": peak,
        "fraction_of_peak": achieved / peak if peak else float("nan"),
    }
