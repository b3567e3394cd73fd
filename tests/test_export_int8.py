"""The int8 variant: a valid separate bundle whose embeddings stay close to fp32."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from jointembed_export import ExportError  # noqa: E402
from jointembed_export.int8 import build_int8_bundle  # noqa: E402
from jointembed_pg.model.bundle import Bundle  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.flickr8k]


@pytest.fixture(scope="module")
def int8_bundle(bundle_dir: Path, flickr8k_dir: Path, tmp_path_factory) -> Bundle:
    out = tmp_path_factory.mktemp("int8") / "b-int8"
    build_int8_bundle(bundle_dir, out, data_dir=flickr8k_dir, evaluate=False)  # rsum: see docs
    return Bundle.load(out)


def test_int8_manifest(int8_bundle: Bundle, bundle: Bundle):
    m = int8_bundle.manifest
    assert m["precision"] == "int8" and int8_bundle.model_id != bundle.model_id
    assert m["source_checkpoint_sha256"] == bundle.manifest["source_checkpoint_sha256"]
    assert m["dim"] == bundle.dim and "parity" not in m
    assert m["int8"]["method"].startswith("image:static-qdq")
    sizes = {n: m["files"][n]["bytes"] / bundle.manifest["files"][n]["bytes"] for n in ("image.onnx", "text.onnx")}
    # backbone weights shrink ~4x; the fp32 heads (up to ~6 MB with the MLP head) do not
    assert sizes["text.onnx"] < 0.4 and sizes["image.onnx"] < 0.7, sizes
    dev = m["int8_deviation"]
    assert dev["image_min_cosine_vs_fp32"] > 0.9 and dev["text_min_cosine_vs_fp32"] > 0.9, dev


def test_int8_encodes_like_fp32(int8_bundle: Bundle, bundle: Bundle, flickr8k_dir: Path):
    names = (flickr8k_dir / "Flickr_8k.testImages.txt").read_text().split()[:4]
    paths = [flickr8k_dir / "images" / n for n in names]
    a, b = bundle.encode_images(paths), int8_bundle.encode_images(paths)
    assert b.shape == a.shape and b.dtype == np.float32
    assert (a * b).sum(1).min() / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)).max() > 0.9
    caps = ["a dog runs on the grass", "two children play in the sea"]
    t8 = int8_bundle.encode_texts(caps)
    assert t8.shape == (2, bundle.dim) and np.isfinite(t8).all()


def test_int8_needs_calibration_data(bundle_dir: Path, tmp_path: Path):
    with pytest.raises(ExportError, match="needs a Flickr8K-layout"):
        build_int8_bundle(bundle_dir, tmp_path / "x", data_dir=None)
    assert not (tmp_path / "x").exists()
    assert json.loads((bundle_dir / "manifest.json").read_text())["precision"] == "fp32"
