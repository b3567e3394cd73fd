"""The runtime's image path equals the training pipeline's and the exporter's parity path,
on real Flickr8K photos re-saved at sizes and aspect ratios other than 224x224."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("torch")

from jointembed_export import ExportError  # noqa: E402
from jointembed_export.build import source_encoders  # noqa: E402
from jointembed_export.parity import PARITY_ATOL, load_pixels, torch_image  # noqa: E402
from jointembed_train.features import load_view  # noqa: E402

pytestmark = pytest.mark.flickr8k

#: (width, height): landscape 4:3, portrait 3:4 smaller than 224, square larger, extreme panorama.
SIZES = [(500, 375), (180, 240), (640, 640), (900, 230)]


@pytest.fixture(scope="module")
def resized(flickr8k_dir, tmp_path_factory) -> list[Path]:
    """Flickr8K test photos resized (bicubic) to SIZES, as JPEG and PNG files."""
    out = tmp_path_factory.mktemp("resized")
    names = (flickr8k_dir / "Flickr_8k.testImages.txt").read_text().split()[:len(SIZES)]
    paths = []
    for (w, h), name in zip(SIZES, names):
        img = Image.open(flickr8k_dir / "images" / name).convert("RGB").resize((w, h), Image.Resampling.BICUBIC)
        for ext in ("jpg", "png"):
            p = out / f"{Path(name).stem}_{w}x{h}.{ext}"
            img.save(p, quality=92) if ext == "jpg" else img.save(p)
            paths.append(p)
    return paths


def test_runtime_pixels_equal_training_and_export_paths(bundle, resized):
    runtime = bundle.load_pixels(resized)
    exporter = load_pixels(resized, bundle.image_spec)
    training = np.stack([load_view(p, bundle.image_spec, "center") for p in resized])
    assert runtime.shape == (len(resized), 3, 224, 224) and runtime.dtype == np.float32
    np.testing.assert_array_equal(runtime, exporter)
    np.testing.assert_array_equal(runtime, training)


def test_runtime_embeddings_match_torch_on_resized_images(bundle, resized):
    try:
        image_enc, _ = source_encoders(bundle, os.environ.get("JOINTEMBED_TEST_CHECKPOINT"))
    except ExportError as e:
        pytest.skip(f"source checkpoint unavailable: {e}")
    ref = torch_image(image_enc, np.stack([load_view(p, bundle.image_spec, "center") for p in resized]))
    assert np.abs(bundle.encode_images(resized) - ref).max() <= PARITY_ATOL
