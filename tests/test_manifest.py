"""The typed manifest model (jointembed_pg.model.manifest): one set of checks for reader and writer."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from jointembed_pg.errors import BundleError
from jointembed_pg.model.manifest import BUNDLE_FILES, MANIFEST, FileEntry, Manifest
from jointembed_pg.model.preprocess import ImageSpec

SHA = "ab" * 32


def _minimal(**kw) -> Manifest:
    base = dict(model_id="je-000000000000", dim=4, normalized=True, max_tokens=16, image=ImageSpec(),
                files={n: FileEntry(SHA, 10) for n in BUNDLE_FILES})
    return Manifest(**(base | kw))


def test_real_manifest_round_trips(bundle_dir: Path):
    raw = json.loads((bundle_dir / MANIFEST).read_text())
    m = Manifest.from_dict(raw, bundle_dir / MANIFEST)
    assert m.to_dict() == raw
    assert Manifest.from_dict(m.to_dict()) == m
    assert m.files["image.onnx"].bytes == (bundle_dir / "image.onnx").stat().st_size
    assert "parity" in m.extra  # recorded by the exporter, kept verbatim


@pytest.mark.parametrize("change, message", [
    (dict(dim=0), "'dim' must be positive"),
    (dict(dim=True), "'dim' has type bool"),
    (dict(model_id=""), "'model_id' is empty"),
    (dict(precision="fp16"), "'precision' must be one of"),
    (dict(max_tokens=2), "max_tokens' must be >= 3"),
    (dict(files={n: FileEntry(SHA, 1) for n in BUNDLE_FILES[:2]}), "missing field 'files.tokenizer.json.sha256'"),
    (dict(files={n: FileEntry("not-hex", 1) for n in BUNDLE_FILES}), "not a lowercase hex sha256"),
    (dict(files={n: FileEntry(SHA, -1) for n in BUNDLE_FILES}), "bytes' must be >= 0"),
    (dict(inputs={"image": ["pixels"]}), "missing field 'inputs.text'"),
    (dict(extra={"dim": 3}), "shadow manifest fields"),
])
def test_writer_cannot_build_a_manifest_the_reader_refuses(change, message):
    with pytest.raises(BundleError, match=message):
        _minimal(**change)


def test_reader_names_the_file_and_field():
    raw = _minimal().to_dict()
    raw["preprocess"]["text"].pop("max_tokens")
    with pytest.raises(BundleError, match=r"^/b/manifest.json: missing field 'preprocess.text.max_tokens'$"):
        Manifest.from_dict(raw, "/b/manifest.json")
    with pytest.raises(BundleError, match="expected a JSON object, got list"):
        Manifest.from_dict([1], "m")


def test_unknown_keys_are_kept_and_replace_revalidates():
    raw = _minimal().to_dict() | {"int8": {"method": "x"}}
    m = Manifest.from_dict(raw)
    assert m.extra == {"int8": {"method": "x"}} and m.to_dict() == raw
    with pytest.raises(BundleError, match="'dim' must be positive"):
        replace(m, dim=-1)


@pytest.mark.parametrize("key, value, message", [
    ("architecture", "ViT\r\n  fake row: parity OK", "'source.architecture' holds control character U\\+000D"),
    ("framework", "open_clip\x1b[2J", "'source.framework' holds control character U\\+001B"),
    ("licence", "MIT\u202egpl", "'source.licence' holds control character U\\+202E"),
    ("weights", "w" * 5000, "'source.weights' is over 4096 characters"),
])
def test_source_strings_are_one_printable_line(key, value, message):
    """`model info/list/verify` print the source fields: a schema-2 manifest whose source
    holds CR/LF, an escape or a bidi override (a fake output line) is refused on read."""
    src = {"framework": "open_clip", "architecture": "ViT-B-32", "weights": "laion2b", "weights_sha256": SHA,
           "licence": "MIT"}
    raw = _minimal(schema_version=2, source=src).to_dict()
    raw["source"][key] = value
    with pytest.raises(BundleError, match=message):
        Manifest.from_dict(raw, "m")
