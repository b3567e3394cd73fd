"""Hostile model bundles (``--bundle DIR``): a manifest whose preprocessing would make every
item fail or exhaust memory, one that disagrees with its ONNX graphs, and a manifest.json
that is a FIFO or /dev/zero. Each is refused up front with one line naming the field or
file (exit 1), never a traceback, a hang or a run where every item fails.
Real bundle files, real Flickr8K images, real PostgreSQL."""
from __future__ import annotations

import copy
import json
import os
import resource
import subprocess
import sys

import pytest

from test_reliability_support import REPO, _CLI, cli_env, flickr_images, one_line_error

MB = 1 << 20


def _bundle(src, dst, edit):
    """``dst``: links to ``src``'s files, the manifest edited in place by ``edit(manifest)``."""
    dst.mkdir(parents=True)
    for name in ("image.onnx", "text.onnx", "tokenizer.json"):
        (dst / name).symlink_to((src / name).resolve())
    m = copy.deepcopy(json.loads((src / "manifest.json").read_text()))
    m["files"].pop("text_static.npy", None)  # not linked: this clone has no SQL text encoder
    m.pop("text_static", None)
    edit(m)
    (dst / "manifest.json").write_text(json.dumps(m, allow_nan=True))
    return dst


def _cli(args, timeout=90):
    """The CLI in a child with 4 GiB of address space (a regression must not take the machine down)."""
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (4096 * MB, 4096 * MB))
    return subprocess.run([sys.executable, "-c", _CLI, *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          env=cli_env(), timeout=timeout, preexec_fn=limit)


def _image(key, value):
    return lambda m: m["preprocess"]["image"].__setitem__(key, value)


@pytest.mark.parametrize("edit, needle", [
    (_image("size", 0), "size must be an integer in 1..4096, got 0"),          # ZeroDivisionError per item
    (_image("size", -3), "got -3"),
    (_image("size", "224"), "got '224'"),                                      # int("224") accepted
    (_image("size", 224.7), "got 224.7"),                                      # silently truncated
    (_image("size", 100000), "got 100000"),                                    # 120 GB per input tensor
    (_image("mean", [float("nan")] * 3), "mean must be three finite numbers"),  # NaN pixels
    (_image("std", [0, 0, 0]), "std must be positive"),                        # division by zero
    (_image("mean", [0.5, 0.5]), "mean must be three finite numbers"),         # broadcast error per item
    (_image("size", 256), "preprocess.image.size' says (N, 3, 256, 256)"),     # graph takes 224: traceback
], ids=["size0", "size-3", "size-str", "size-float", "size-huge", "mean-nan", "std-0", "mean-2", "size-graph"])
def test_image_preprocessing_refused_up_front(edit, needle, pg_dsn, bundle_dir, flickr8k_dir, tmp_path):
    b = _bundle(bundle_dir, tmp_path / "b", edit)
    p = _cli(["index", "image", *flickr_images(flickr8k_dir, 2, start=60), "--bundle", b, "--dsn", pg_dsn,
              "--no-progress"])
    line = one_line_error(p)
    assert needle in line and ("manifest.json" in line or "image.onnx" in line), line


@pytest.mark.parametrize("max_tokens, needle", [
    (10 ** 12, "max_tokens' must be <= 8192"),
    (1000, "cannot encode a caption of 1000 tokens"),   # more positions than the encoder has: traceback
])
def test_text_limit_beyond_the_encoder_refused(max_tokens, needle, pg_dsn, bundle_dir, tmp_path):
    b = _bundle(bundle_dir, tmp_path / "b", lambda m: m["preprocess"]["text"].__setitem__("max_tokens", max_tokens))
    caps = tmp_path / "caps.jsonl"
    caps.write_text(json.dumps({"id": "long", "text": " ".join(["dog"] * 900)}) + "\n"
                    + json.dumps({"id": "short", "text": "a cat"}) + "\n")
    p = _cli(["index", "text", caps, "--bundle", b, "--dsn", pg_dsn, "--no-progress"])
    line = one_line_error(p)
    assert needle in line and "\x1b" not in p.stderr, p.stderr


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "huge"])
def test_manifest_that_is_not_a_small_regular_file(kind, bundle_dir, tmp_path):
    b = _bundle(bundle_dir, tmp_path / "b", lambda m: None)
    (b / "manifest.json").unlink()
    if kind == "fifo":
        os.mkfifo(b / "manifest.json")           # reading would block forever
    elif kind == "dev-zero":
        (b / "manifest.json").symlink_to("/dev/zero")  # endless bytes
    else:
        with open(b / "manifest.json", "wb") as f:
            f.truncate(8 << 30)                  # 8 GiB (sparse)
    p = _cli(["model", "info", b], timeout=60)
    line = one_line_error(p)
    assert "manifest.json" in line and {"fifo": "FIFO", "dev-zero": "character device", "huge": "-byte limit"}[kind] in line


def test_tokenizer_ids_beyond_the_encoder_are_one_line(pg_dsn, bundle_dir, tmp_path):
    """A tokenizer.json (its sha256 and size in the manifest) that maps a word to an id the
    text encoder has no embedding for: onnxruntime's Gather fails at run time. That is a
    one-line BundleError naming text.onnx, not a traceback."""
    import hashlib

    tok = json.loads((bundle_dir / "tokenizer.json").read_text(encoding="utf-8"))
    tok["model"]["vocab"]["dog"] = 10 ** 6
    data = json.dumps(tok).encode("utf-8")

    def edit(m):
        m["files"]["tokenizer.json"] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}

    b = _bundle(bundle_dir, tmp_path / "b", edit)
    (b / "tokenizer.json").unlink()
    (b / "tokenizer.json").write_bytes(data)
    caps = tmp_path / "caps.jsonl"
    caps.write_text('{"id": "c", "text": "a cat sleeps"}\n')  # no 'dog': indexes fine
    common = ["--bundle", b, "--dsn", pg_dsn, "--collection", "t"]
    assert _cli(["index", "text", caps, "--no-progress", *common]).returncode == 0
    p = _cli(["search", "text", "a dog on the beach", "--target", "text", *common])
    line = one_line_error(p)
    assert "text.onnx: onnxruntime cannot run it" in line and "\x1b" not in p.stderr, p.stderr


@pytest.mark.parametrize("extra", [
    {"metrics": {"test": "high"}},                              # .get on a str
    {"metrics": {"test": {"rsum": "400"}}, "parity": {"image_max_abs_diff": "tiny", "text_max_abs_diff": [1]}},
    {"int8": {"rsum_int8": "x"}},                               # format of a str
    {"int8": {"rsum_int8": 390.1}},                             # no rsum_fp32 / rsum_delta / method
    {"int8": 5},                                                # 'in' on an int
], ids=["test-str", "numbers-as-str", "int8-str", "int8-partial", "int8-int"])
def test_informational_manifest_fields_of_any_type_are_shown(extra, bundle_dir, tmp_path):
    """metrics / parity / int8 are written by the exporter and kept unchecked; ``model info``
    and ``model list`` show whatever a hand-edited manifest holds, never a traceback, and
    one odd bundle does not stop the listing of the others."""
    home = tmp_path / "home"
    _bundle(bundle_dir, home / "bundles" / "odd", lambda m: m.update(extra))
    (home / "bundles" / "good").mkdir()
    for f in bundle_dir.iterdir():
        (home / "bundles" / "good" / f.name).symlink_to(f.resolve())
    env = cli_env(home)
    for args in (["model", "info", home / "bundles" / "odd"], ["model", "list"]):
        p = subprocess.run([sys.executable, "-c", _CLI, *map(str, args)], cwd=REPO, capture_output=True, text=True,
                           env=env, timeout=120)
        assert p.returncode == 0 and "Traceback" not in p.stderr, (args, p.stderr[-2000:])
    assert [ln.split()[0] for ln in p.stdout.splitlines()[1:]] == ["good", "odd"], p.stdout
