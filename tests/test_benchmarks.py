"""The benchmark command: ``python -m benchmarks --quick`` end to end, and its pure helpers.

The end-to-end test asserts that every section ran and wrote its report, never anything
about speed (the quick sizes are far too small to mean anything).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
CHECKPOINT = REPO / "training" / "weights" / "default.pt"
#: Generous wall-clock limit for the quick run on a busy 2-core machine (it targets < 2 min).
QUICK_TIMEOUT_S = 900


@pytest.fixture(scope="module")
def bench_bundle(request) -> Path:
    """The tests' model bundle; skips when it cannot exist here."""
    if not os.environ.get("JOINTEMBED_TEST_BUNDLE") and not CHECKPOINT.is_file():
        pytest.skip(f"no committed weights at {CHECKPOINT}: the benchmark has no bundle to run")
    try:
        import jointembed_export.build  # noqa: F401
    except ImportError as e:
        pytest.skip(f"the exporter cannot be imported ({e}); install the [export] extra")
    return request.getfixturevalue("bundle_dir")


@pytest.mark.slow
@pytest.mark.flickr8k
def test_quick_run_writes_every_section(bench_bundle, flickr8k_dir, tmp_path):
    out, raw = tmp_path / "BENCHMARKS.md", tmp_path / "results.json"
    cmd = [sys.executable, "-m", "benchmarks", "--quick", "--out", str(out), "--json", str(raw),
           "--bundle", str(bench_bundle), "--data-dir", str(flickr8k_dir)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=QUICK_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-3000:]

    r = json.loads(raw.read_text())
    for key in ("images", "captions"):
        ing = r[f"ingest_{key}"]
        assert ing["written"] == ing["n"] and ing["failed"] == 0
        assert all(ing[f"{s}_per_s"] > 0 for s in ("e2e", "encode", "decode", "write"))
    assert set(r["naive"]) >= {"images", "captions"}
    (scale,) = r["scales"]
    for direction, rows in scale["sweeps"].items():
        exact = [x for x in rows if x["setting"] == "exact"]
        assert exact and exact[0]["recall"] == pytest.approx(1.0), direction  # SQL exact == numpy exact
        assert all(x["sql"]["n"] == r["config"]["n_queries"] for x in rows)
    assert r["limit"]["gflops_per_image"] > 0 and r["limit"]["peak_gflops"] > 0

    doc = out.read_text()
    for heading in ("## How to reproduce", "## Machine", "## Headlines", "## 1. Ingest", "## 2. Query",
                    "## 3. Index", "## 4. Limit", "--quick"):
        assert heading in doc
    for png in ("bench_latency_recall.png", "bench_ingest_stages.png"):
        assert (tmp_path / "img" / png).stat().st_size > 1000
    assert "text->image" in proc.stdout  # the console table


def test_graph_flops_counts_conv_and_gemm(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    from benchmarks import limit

    w = numpy_helper.from_array(np.zeros((8, 3, 3, 3), np.float32), "w")
    g = numpy_helper.from_array(np.zeros((8 * 16 * 16, 5), np.float32), "g")
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [-1, 8 * 16 * 16])
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Reshape", ["c", "shape"], ["r"]),
             helper.make_node("Gemm", ["r", "g"], ["y"])]
    graph = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 5])], [w, g, shape])
    path = tmp_path / "t.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    fl = limit.graph_flops(path)
    conv = 2 * (8 * 16 * 16) * (3 * 3 * 3)
    gemm = 2 * 5 * (8 * 16 * 16)
    assert fl["by_op"] == {"Conv": conv, "Gemm": gemm}
    assert fl["flops"] == conv + gemm


def test_synthetic_vectors_follow_the_real_ones():
    from benchmarks import synth

    rng = np.random.default_rng(0)
    base = rng.standard_normal((50, 16)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    noise = synth.noise_model(base, 0.1, "cov")
    z = rng.standard_normal((20000, 16)).astype(np.float32) @ noise.factor.T
    assert np.sqrt((z ** 2).sum(1).mean()) == pytest.approx(0.1, rel=0.03)  # expected norm as asked
    x = synth.generate(base, 1000, noise, True, rng)
    assert x.shape == (1000, 16) and x.dtype == np.float32
    np.testing.assert_array_equal(x[:50], base)  # the real rows come first, unchanged
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, rtol=1e-5)
    nearest_base = (x[50:] @ base.T).max(1)
    assert nearest_base.min() > 0.95  # every synthetic row stays next to a real one
    assert synth.index_of(synth.key("image", 42)) == 42


def test_exact_topk_matches_full_argsort():
    from benchmarks import synth

    rng = np.random.default_rng(1)
    stored, queries = rng.standard_normal((500, 8)), rng.standard_normal((70, 8))
    ref = np.argsort(((queries[:, None, :] - stored[None]) ** 2).sum(-1), axis=1)[:, :10]
    np.testing.assert_array_equal(synth.exact_topk(queries, stored, 10, chunk=16), ref)


def test_percentiles_in_milliseconds():
    from benchmarks.timing import percentiles_ms

    p = percentiles_ms([0.001] * 99 + [0.1])
    assert p["p50"] == pytest.approx(1.0) and p["n"] == 100 and p["p99"] > 1.0
