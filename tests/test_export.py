"""Export: manifest contents, checksums, ONNX-vs-PyTorch parity on real Flickr8K, atomic
writes, model ids, and the ``jointembed model`` commands."""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402

from jointembed_export import ExportError  # noqa: E402
from jointembed_export.build import (  # noqa: E402
    build_bundle, bundle_is_current, default_checkpoint, source_encoders, staged_dir,
)
from jointembed_export.data import load_split  # noqa: E402
from jointembed_export.manifest import ExportOptions, make_model_id  # noqa: E402
from jointembed_export.parity import PARITY_ATOL, load_pixels, torch_image, torch_text  # noqa: E402
from jointembed_pg.model.bundle import BUNDLE_FILES, sha256_file  # noqa: E402
from jointembed_pg.cli.model import model as model_cli  # noqa: E402
from jointembed_pg.model.preprocess import ImageSpec  # noqa: E402


def _checkpoint() -> Path | None:
    env = os.environ.get("JOINTEMBED_TEST_CHECKPOINT")
    return Path(env) if env else None


@pytest.fixture(scope="module")
def encoders(bundle):
    """PyTorch encoders of the checkpoint the test bundle came from."""
    try:
        return source_encoders(bundle, _checkpoint())
    except ExportError as e:
        pytest.skip(f"source checkpoint unavailable: {e}")


def test_manifest_fields(bundle_dir: Path):
    m = json.loads((bundle_dir / "manifest.json").read_text())
    assert m["schema_version"] == 1
    assert m["model_id"].startswith("je-") and len(m["model_id"]) == 15
    assert m["distance"] == "l2" and m["precision"] == "fp32"
    assert m["dim"] == m["training"]["embed_dim"]
    assert m["normalized"] == m["training"]["normalize"]
    assert m["preprocess"]["image"] == ImageSpec().to_dict()
    assert m["preprocess"]["text"] == {"max_tokens": 128, "truncation": "longest_first"}
    assert m["inputs"] == {"image": ["pixels"], "text": ["input_ids", "attention_mask"]}
    assert m["outputs"] == {"image": ["embedding"], "text": ["embedding"]}
    q = m["quantizer"]
    if m["training"].get("binary_codes"):
        assert q["kind"] == "binary-sign" and q["bits"] == m["dim"]
    elif m["training"]["quantizer"]:
        assert q == {"K": m["training"]["codebook_size"], "M": m["training"].get("quant_subspaces", 1),
                     "tau_end": m["training"]["tau_end"], "beta": m["training"]["quant_beta"]}
    else:
        assert q is None
    assert set(m["metrics"]) >= {"dev", "test"}
    assert len(m["source_checkpoint_sha256"]) == 64
    assert m["parity"]["image_max_abs_diff"] <= PARITY_ATOL
    assert m["parity"]["text_max_abs_diff"] <= PARITY_ATOL


def test_checksums_match_files(bundle_dir: Path):
    m = json.loads((bundle_dir / "manifest.json").read_text())
    assert set(m["files"]) == set(BUNDLE_FILES) | {"text_static.npy"}  # the default ships its SQL text encoder
    for name, entry in m["files"].items():
        assert sha256_file(bundle_dir / name) == entry["sha256"], name
        assert (bundle_dir / name).stat().st_size == entry["bytes"], name


@pytest.mark.flickr8k
def test_onnx_matches_torch_on_flickr8k(bundle, encoders, flickr8k_dir):
    """Real test images (not the ones parity used at export) and their captions."""
    image_enc, text_enc = encoders
    split = load_split(flickr8k_dir, "test", limit=24)
    paths = split.images[8:24]
    captions = [c for c, i in zip(split.captions, split.caption_image_ids) if i >= 8][:40]
    onnx_img = bundle.encode_images(paths, batch_size=7)  # several batches, one ragged
    ref_img = torch_image(image_enc, load_pixels(paths, bundle.image_spec))
    assert np.abs(onnx_img - ref_img).max() <= PARITY_ATOL
    ids, mask = bundle.tokenizer.encode(captions)
    onnx_txt = bundle.encode_texts(captions, batch_size=len(captions))
    assert np.abs(onnx_txt - torch_text(text_enc, ids, mask)).max() <= PARITY_ATOL
    assert onnx_img.dtype == onnx_txt.dtype == np.float32
    assert onnx_img.shape == (16, bundle.dim) and onnx_txt.shape == (40, bundle.dim)


def test_staged_dir_is_atomic(tmp_path: Path):
    out = tmp_path / "b"
    with pytest.raises(RuntimeError):
        with staged_dir(out) as tmp:
            (tmp / "image.onnx").write_bytes(b"half")
            raise RuntimeError("export crashed")
    assert list(tmp_path.iterdir()) == []  # no bundle, no staging leftovers
    with staged_dir(out) as tmp:
        (tmp / "x").write_text("1")
    with pytest.raises(ExportError, match="already exists"):
        with staged_dir(out):
            pass
    with staged_dir(out, force=True) as tmp:
        (tmp / "y").write_text("2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]
    assert [p.name for p in out.iterdir()] == ["y"]


def test_failed_export_leaves_no_bundle(tmp_path: Path, bundle, monkeypatch):
    """A crash after image.onnx was written must not leave a directory behind."""
    from jointembed_export import graphs

    def boom(*a, **k):
        raise RuntimeError("simulated text export failure")

    monkeypatch.setattr(graphs, "export_text", boom)
    ckpt = _checkpoint() or default_checkpoint()
    if not ckpt.is_file():
        pytest.skip(f"{ckpt} missing")
    with pytest.raises(RuntimeError, match="simulated"):
        build_bundle(ckpt, tmp_path / "b")
    assert list(tmp_path.iterdir()) == []


def test_model_id_changes_with_checkpoint_and_options():
    a = make_model_id("0" * 64, ExportOptions())
    assert a == make_model_id("0" * 64, ExportOptions())
    assert a != make_model_id("1" * 64, ExportOptions())
    assert a != make_model_id("0" * 64, ExportOptions(precision="int8", int8_method="dynamic"))
    assert a != make_model_id("0" * 64, ExportOptions(opset=18))


def test_bundle_is_current(bundle_dir: Path, tmp_path: Path):
    assert not bundle_is_current(tmp_path / "missing")
    clone = tmp_path / "clone"
    clone.mkdir()
    for name in BUNDLE_FILES:
        (clone / name).symlink_to(bundle_dir / name)
    m = json.loads((bundle_dir / "manifest.json").read_text())
    m["source_checkpoint_sha256"] = "f" * 64
    (clone / "manifest.json").write_text(json.dumps(m))
    assert not bundle_is_current(clone, _checkpoint())
    if not os.environ.get("JOINTEMBED_TEST_BUNDLE"):
        assert bundle_is_current(bundle_dir, _checkpoint())


def test_cli_info_json_and_verify(bundle_dir: Path, encoders):
    runner = CliRunner()
    r = runner.invoke(model_cli, ["info", str(bundle_dir), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["model_id"] == json.loads((bundle_dir / "manifest.json").read_text())["model_id"]
    r = runner.invoke(model_cli, ["info", str(bundle_dir)])
    assert r.exit_code == 0 and "model_id" in r.output
    args = ["verify", str(bundle_dir)] + (["--checkpoint", str(_checkpoint())] if _checkpoint() else [])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = runner.invoke(model_cli, args)
    assert r.exit_code == 0, r.output
    assert "sha256" in r.output and "parity OK" in r.output


def test_cli_build_refuses_existing_dir(tmp_path: Path):
    r = CliRunner().invoke(model_cli, ["build", "--out", str(tmp_path)])
    assert r.exit_code != 0 and "already exists" in r.output
    r = CliRunner().invoke(model_cli, ["build", "--out", str(tmp_path), "--name", "x"])
    assert r.exit_code != 0 and "not both" in r.output


def test_cli_info_missing_bundle(tmp_path: Path):
    r = CliRunner().invoke(model_cli, ["info", str(tmp_path / "nope")])
    assert r.exit_code == 1 and "no model bundle" in r.output


def test_parity_inputs_cover_truncation(flickr8k_dir):
    from jointembed_export.parity import LONG_CAPTION, parity_inputs

    inp = parity_inputs(flickr8k_dir)
    assert inp.pixels.shape == (8, 3, 224, 224) and inp.pixels.dtype == np.float32
    assert LONG_CAPTION in inp.texts and "flickr8k" in inp.source


@pytest.mark.parametrize("diffs, match", [
    ((1e-6, 3e-3), "text.onnx differs from PyTorch by 0.003"),
    ((float("nan"), 0.0), "image.onnx differs from PyTorch by nan"),
])
def test_parity_failure_is_loud(monkeypatch, diffs, match):
    from jointembed_export import parity

    report = {"image_max_abs_diff": diffs[0], "text_max_abs_diff": diffs[1], "inputs": "test"}
    monkeypatch.setattr(parity, "compare", lambda *a: dict(report))
    with pytest.raises(ExportError, match=match):
        parity.check(None, None, None, None)


def test_the_shipped_default_is_its_config_and_names_its_binary_quantizer(bundle_dir):
    """Issue 26: the committed ``default.pt`` was trained by ``training/configs/default.json``
    exactly (so RESULTS.md's reproduce line is true), with the binary-code quantizer chosen on
    dev (tanh 1 -> 0.1, lambda_bin 0.1), and its bundle's manifest names that formulation."""
    from jointembed_train.checkpoint import load
    from jointembed_train.config import TrainConfig

    ckpt = load(default_checkpoint())
    shipped = TrainConfig.from_file(default_checkpoint().parent.parent / "configs" / "default.json")
    a, b = ckpt.config.to_dict(), shipped.to_dict()
    assert {k: a[k] for k in a if k != "extra"} == {k: b[k] for k in b if k != "extra"}
    assert a["binary_codes"] and not a["bin_straight_through"] and a["lambda_bin"] == 0.1
    m = json.loads((bundle_dir / "manifest.json").read_text())
    if m["source_checkpoint_sha256"] != sha256_file(default_checkpoint()):
        pytest.skip("the test bundle was not built from the committed default.pt")
    assert m["quantizer"]["kind"] == "binary-sign" and m["quantizer"]["relaxation"] == "tanh"
    assert m["quantizer"]["bits"] == m["dim"] == 256
