"""Runtime bundle: loading and validation, refusal of corrupt bundles, encoders' input
handling, padding invariance, truncation warnings, thread safety, and no torch import."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from jointembed_pg import BundleError, InputError
from jointembed_pg.model.bundle import BUNDLE_FILES, Bundle
from jointembed_pg.model.preprocess import ImageSpec
from jointembed_pg.model.text import TruncationWarning

REPO = Path(__file__).resolve().parent.parent


def _clone(src: Path, dst: Path, copy: tuple[str, ...] = ()) -> Path:
    """A bundle at ``dst``: manifest and files in ``copy`` copied, the rest symlinked."""
    dst.mkdir()
    shutil.copyfile(src / "manifest.json", dst / "manifest.json")
    for name in BUNDLE_FILES:
        if name in copy:
            shutil.copyfile(src / name, dst / name)
        else:
            (dst / name).symlink_to((src / name).resolve())
    return dst


def _edit_manifest(d: Path, edit) -> None:
    m = json.loads((d / "manifest.json").read_text())
    edit(m)
    (d / "manifest.json").write_text(json.dumps(m))


@pytest.fixture(scope="module")
def images(flickr8k_dir) -> list[Path]:
    names = (flickr8k_dir / "Flickr_8k.testImages.txt").read_text().split()[:3]
    return [flickr8k_dir / "images" / n for n in names]


def test_load_by_path_name_and_default(bundle_dir: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("JOINTEMBED_BUNDLES", str(tmp_path))
    (tmp_path / "default").symlink_to(bundle_dir.resolve())
    (tmp_path / "mine").symlink_to(bundle_dir.resolve())
    by_path = Bundle.load(bundle_dir)
    assert Bundle.load("mine").model_id == Bundle.load().model_id == by_path.model_id
    with pytest.raises(BundleError, match=r"^no bundle 'nope'; available: default, mine$"):
        Bundle.load("nope")
    with pytest.raises(BundleError, match=r"^no bundle 'defualt'; available: default, mine \(did you mean 'default'\?\)$"):
        Bundle.load("defualt")
    with pytest.raises(BundleError, match="no model bundle at .*nope"):
        Bundle.load(tmp_path / "nope")


def test_properties(bundle: Bundle):
    assert bundle.model_id == bundle.manifest["model_id"]
    assert bundle.dim == bundle.manifest["dim"] > 0
    assert bundle.image_spec == ImageSpec()
    assert bundle.max_tokens == 128
    assert bundle.model_id in repr(bundle)


@pytest.mark.parametrize("name", BUNDLE_FILES)
def test_corrupt_file_refused(bundle_dir: Path, tmp_path: Path, name: str):
    d = _clone(bundle_dir, tmp_path / "b", copy=(name,))
    data = bytearray((d / name).read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different bytes
    (d / name).write_bytes(bytes(data))
    with pytest.raises(BundleError, match=f"{name}: sha256 differs"):
        Bundle.load(d)
    Bundle.load(d, verify=False)  # sizes still agree: only the checksum catches it


def test_truncated_and_missing_files_refused(bundle_dir: Path, tmp_path: Path):
    d = _clone(bundle_dir, tmp_path / "b", copy=("tokenizer.json",))
    (d / "tokenizer.json").write_bytes((d / "tokenizer.json").read_bytes()[:100])
    with pytest.raises(BundleError, match="tokenizer.json: 100 bytes, manifest says"):
        Bundle.load(d, verify=False)
    (d / "text.onnx").unlink()
    with pytest.raises(BundleError, match="text.onnx: missing"):
        Bundle.load(d)


@pytest.mark.parametrize("edit, field", [
    (lambda m: m.update(schema_version=3), "schema_version 3 not supported"),
    (lambda m: m["preprocess"]["text"].update(pad_to=m["preprocess"]["text"]["max_tokens"]), "needs schema_version 2"),
    (lambda m: m["preprocess"]["image"].update(resize="squash"), "needs schema_version 2"),
    (lambda m: m.pop("dim"), "missing field 'dim'"),
    (lambda m: m.update(dim="256"), "'dim' has type str"),
    (lambda m: m.update(dim=True), "'dim' has type bool"),
    (lambda m: m.update(distance="cosine"), "'distance' must be 'l2'"),
    (lambda m: m.update(precision="fp16"), "'precision' must be one of"),
    (lambda m: m["inputs"].update(text=["ids"]), "'inputs.text' is \\['ids'\\]"),
    (lambda m: m["outputs"].pop("image"), "missing field 'outputs.image'"),
    (lambda m: m["preprocess"]["image"].update(resize="stretch"), "'preprocess.image' is invalid"),
    (lambda m: m["preprocess"]["text"].update(truncation="only_first"), "preprocess.text.truncation"),
    (lambda m: m["files"].pop("tokenizer.json"), "missing field 'files.tokenizer.json.sha256'"),
    (lambda m: m.update(model_id=""), "'model_id' is empty"),
])
def test_bad_manifest_refused(bundle_dir: Path, tmp_path: Path, edit, field):
    d = _clone(bundle_dir, tmp_path / "b")
    _edit_manifest(d, edit)
    with pytest.raises(BundleError, match=field):
        Bundle.load(d, verify=False)


def test_unparsable_or_missing_manifest(bundle_dir: Path, tmp_path: Path):
    d = _clone(bundle_dir, tmp_path / "b")
    (d / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="manifest.json: not valid JSON"):
        Bundle.load(d)
    (d / "manifest.json").unlink()
    with pytest.raises(BundleError, match="manifest.json: missing"):
        Bundle.load(d)


@pytest.mark.flickr8k
def test_runtime_never_imports_torch(bundle_dir: Path, images):
    code = (
        "import jointembed_pg, sys; from jointembed_pg.model.bundle import Bundle; "
        f"b = Bundle.load({str(bundle_dir)!r}); "
        f"e = b.encode_images([{str(images[0])!r}]); t = b.encode_texts(['a dog']); "
        "assert e.shape == t.shape == (1, b.dim); "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


@pytest.mark.flickr8k
def test_encode_images_paths_bytes_and_pixels_agree(bundle: Bundle, images):
    by_path = bundle.encode_images(images)
    by_bytes = bundle.encode_images([p.read_bytes() for p in images])
    by_pixels = bundle.encode_pixels(bundle.load_pixels(images))
    assert by_path.shape == (3, bundle.dim) and by_path.dtype == np.float32
    np.testing.assert_array_equal(by_path, by_bytes)
    np.testing.assert_array_equal(by_path, by_pixels)
    if bundle.normalized:
        np.testing.assert_allclose(np.linalg.norm(by_path, axis=1), 1.0, atol=1e-5)


@pytest.mark.flickr8k
def test_dynamic_batch_axis(bundle: Bundle, images):
    x = bundle.load_pixels(images * 2)  # 6 images
    whole = bundle.encode_pixels(x, batch_size=6)
    singles = np.concatenate([bundle.encode_pixels(x[i:i + 1]) for i in range(6)])
    np.testing.assert_allclose(whole, singles, atol=1e-5)
    assert bundle.encode_pixels(x[:0]).shape == (0, bundle.dim)
    assert bundle.encode_images([]).shape == bundle.encode_texts([]).shape == (0, bundle.dim)


def test_bad_image_items_named(bundle: Bundle, images, tmp_path: Path):
    bad = tmp_path / "not-an-image.jpg"
    bad.write_bytes(b"this is text")
    with pytest.raises(InputError, match=r"images\[1\]: .*not-an-image.jpg"):
        bundle.encode_images([images[0], bad])
    with pytest.raises(InputError, match=r"images\[0\]: .*no such file"):
        bundle.encode_images([tmp_path / "missing.jpg"])
    with pytest.raises(InputError, match=r"images\[2\]: expected a path or bytes, got int"):
        bundle.encode_images([images[0], images[1], 42])
    with pytest.raises(InputError, match=r"^[^\[]*missing.jpg: no such file"):  # one path: named, no index
        bundle.encode_images(tmp_path / "missing.jpg")
    with pytest.raises(InputError, match=r"expected shape \(N, 3, 224, 224\)"):
        bundle.encode_pixels(np.zeros((2, 3, 100, 100), np.float32))


@pytest.mark.parametrize("texts, match", [
    (["a dog", ""], r"texts\[1\]: empty"),
    (["   \n\t"], r"texts\[0\]: empty or whitespace-only"),
    (["a dog", None], r"texts\[1\]: expected str, got NoneType"),
    ([b"bytes"], r"texts\[0\]: expected str, got bytes"),
    (b"a dog", "expected a list of str, got bytes"),
    (["a dog", "🐶 🚀"], r"texts\[1\]: cannot embed '🐶 🚀': 2 of 2 word pieces are unknown"),
    ("\u200b", r"^text: cannot embed .*no word pieces"),
])
def test_bad_texts_refused(bundle: Bundle, texts, match):
    with pytest.raises(InputError, match=match):
        bundle.encode_texts(texts)


def test_text_errors_name_global_index(bundle: Bundle):
    texts = ["a dog"] * 40 + [" "]
    with pytest.raises(InputError, match=r"texts\[40\]"):
        bundle.encode_texts(texts, batch_size=32)


def test_padding_does_not_change_embeddings(bundle: Bundle):
    short = "a dog"
    longer = ["a black and white dog is running through the tall green grass of a big field",
              "two people sit on a bench beside a lake while ducks swim past them in the sun"]
    alone = bundle.encode_texts([short])
    batched = bundle.encode_texts([short] + longer)
    np.testing.assert_allclose(batched[0], alone[0], atol=1e-5)
    ids, mask = bundle.tokenizer.encode([short] + longer)
    assert mask[0].sum() < ids.shape[1]  # the short caption really was padded


def test_truncation_warns_with_dropped_count(bundle: Bundle):
    long = "a dog runs on the beach " * 40  # 6 tokens per repeat + 2 specials
    with pytest.warns(TruncationWarning, match=r"texts\[1\]: 242 tokens, over max_tokens=128; the last 114"):
        e = bundle.encode_texts(["a cat", long])
    assert e.shape == (2, bundle.dim) and np.isfinite(e).all()
    with pytest.warns(TruncationWarning):
        ids, mask = bundle.tokenizer.encode([long])
    assert ids.shape == (1, 128) and ids[0, -1] == 102  # [SEP] kept at the end


def test_sessions_created_once_across_threads(bundle_dir: Path, monkeypatch):
    b = Bundle.load(bundle_dir, verify=False, intra_op_threads=1)
    calls = []
    real = Bundle._new_session

    def counting(self, path, encoder):
        calls.append(encoder)
        return real(self, path, encoder)

    monkeypatch.setattr(Bundle, "_new_session", counting)
    out, errors = [], []

    def work():
        try:
            out.append(b.encode_texts(["a dog on the grass"]))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and calls == ["text"]
    for o in out[1:]:
        np.testing.assert_array_equal(o, out[0])


def _saturating_image_graph(path: Path, size: int, dim: int, k: int = 64) -> int:
    """A one-GEMM int8 ``image.onnx``: the first ``k`` pixels, quantised to uint8, times int8
    weights of 127 (``MatMulInteger``), cast to float. Returns the exact product for pixels
    of 1.0 (uint8 255): ``k * 255 * 127``; a U8S8 kernel that sums uint8 x int8 pairs in
    saturating int16 (x86-64 AVX2 / AVX-512 without VNNI) gives ``k / 2 * 32767`` instead."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.array([-1, 3 * size * size], np.int64), "shape"),
             numpy_helper.from_array(np.array([0], np.int64), "start"),
             numpy_helper.from_array(np.array([k], np.int64), "end"),
             numpy_helper.from_array(np.array([1], np.int64), "axis"),
             numpy_helper.from_array(np.array(1 / 255, np.float32), "scale"),
             numpy_helper.from_array(np.array(0, np.uint8), "zero"),
             numpy_helper.from_array(np.full((k, dim), 127, np.int8), "w")]
    nodes = [helper.make_node("Reshape", ["pixels", "shape"], ["flat"]),
             helper.make_node("Slice", ["flat", "start", "end", "axis"], ["head"]),
             helper.make_node("QuantizeLinear", ["head", "scale", "zero"], ["q"]),
             helper.make_node("MatMulInteger", ["q", "w"], ["acc"]),
             helper.make_node("Cast", ["acc"], ["embedding"], to=TensorProto.FLOAT)]
    graph = helper.make_graph(
        nodes, "saturation", [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", dim])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return k * 255 * 127


def test_int8_products_exact_on_every_cpu(bundle_dir: Path, tmp_path: Path):
    """Sessions use onnxruntime's exact int8 GEMM (``session.x64quantprecision``): an int8
    bundle must not depend on whether the CPU has VNNI (without it, the int8 image encoder's
    min cosine vs fp32 fell from 0.99 to 0.81)."""
    d = _clone(bundle_dir, tmp_path / "b", copy=("image.onnx",))
    b = Bundle.load(d, verify=False)
    exact = _saturating_image_graph(d / "image.onnx", b.image_spec.size, b.dim)
    size = (d / "image.onnx").stat().st_size  # the manifest lists it (a graph changed after load never runs)
    _edit_manifest(d, lambda m: m["files"]["image.onnx"].update(bytes=size))
    b = Bundle.load(d, verify=False)
    out = b.encode_pixels(np.ones((2, 3, b.image_spec.size, b.image_spec.size), np.float32))
    assert out.shape == (2, b.dim)
    np.testing.assert_array_equal(out, np.full((2, b.dim), exact, np.float32))


def test_a_graph_replaced_after_load_never_runs(bundle_dir, tmp_path):
    """Sessions are made on first use: a graph swapped after Bundle.load (here image.onnx
    with one weight changed and a doc string added: same inputs and outputs, other weights,
    so onnxruntime runs it without a word) is refused by its size / sha256; the untouched
    text graph still runs."""
    import onnx
    from onnx import numpy_helper

    from jointembed_pg.model.bundle import Bundle

    g = onnx.load(str(bundle_dir / "image.onnx"))
    w = max(g.graph.initializer, key=lambda x: int(np.prod(x.dims)))  # the largest weight
    w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w) + np.float32(0.01), w.name))
    g.doc_string = "replaced after load"  # a different size too (verify=False checks only sizes)
    other = tmp_path / "other.onnx"
    onnx.save(g, str(other))
    d = tmp_path / "b"
    shutil.copytree(bundle_dir, d)
    pixels = None
    for verify in (True, False):
        shutil.copyfile(bundle_dir / "image.onnx", d / "image.onnx")
        b = Bundle.load(d, verify=verify)
        pixels = np.zeros((1, 3, b.image_spec.size, b.image_spec.size), np.float32)
        shutil.copyfile(other, d / "image.onnx")
        with pytest.raises(BundleError, match="changed since the bundle was loaded"):
            b.encode_pixels(pixels)
        assert b.encode_texts(["a dog"]).shape == (1, b.dim)
    # the tokenizer too (made on first use): a vocabulary edited after load is refused
    shutil.copyfile(bundle_dir / "image.onnx", d / "image.onnx")
    b = Bundle.load(d)
    tok = (d / "tokenizer.json").read_text(encoding="utf-8")
    (d / "tokenizer.json").write_text(tok.replace('"dog"', '"cat"', 1), encoding="utf-8")  # same size
    with pytest.raises(BundleError, match="changed since the bundle was loaded"):
        b.encode_texts(["a dog"])
    shutil.copyfile(bundle_dir / "tokenizer.json", d / "tokenizer.json")
    # an intact bundle loaded from its bytes embeds as before
    shutil.copyfile(bundle_dir / "image.onnx", d / "image.onnx")
    assert np.allclose(Bundle.load(d).encode_pixels(pixels), Bundle.load(bundle_dir).encode_pixels(pixels))
